"""Inference (single- or multi-scale, optional flip), DenseCRF refinement and mIoU evaluation."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import deeplabv2_ext
from deeplabv2.config import CRFConfig, EvalConfig
from deeplabv2.metrics import ConfusionMatrix, SegmentationScores
from deeplabv2.models import DEFAULT_RESIZING, preprocess, resize_input, resize_logits


@torch.no_grad()
def predict_log_probs(
    model: nn.Module,
    images: Tensor,
    preprocessing: str,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Tensor:
    """Per-pixel log-probabilities [N, K, H, W] (float32) at the input size.

    `images` are RGB [N, 3, H, W] in 0..255 on the model's device. The model runs in eval mode on
    the input resized to each scale and, with `flip`, on its mirror image too; the logits are
    upsampled bilinearly to the input size and their softmax probabilities averaged (a single
    scale without flip is just the log-softmax of the upsampled logits). Both resizes follow the
    model's multi-scale convention (`model.resizing`, caffe when it has none), as its MSC does:
    an input scaled by s has one size and sampling whether MSC or this loop scales it.
    """
    if not scales or any(scale <= 0 for scale in scales):
        raise ValueError(f"scales must be positive numbers, got {tuple(scales)}")
    resizing = getattr(model, "resizing", DEFAULT_RESIZING)
    model.eval()
    height, width = images.shape[-2:]
    inputs = preprocess(images, preprocessing)
    probabilities = None
    passes = 0
    for scale in scales:
        scaled = resize_input(inputs, scale, resizing)
        for mirrored in (False, True) if flip else (False,):
            batch = scaled.flip(-1) if mirrored else scaled
            logits = resize_logits(model(batch).float(), (height, width), resizing)
            if mirrored:
                logits = logits.flip(-1)
            softmax = logits.softmax(1)
            probabilities = softmax if probabilities is None else probabilities + softmax
            passes += 1
    return (probabilities / passes).clamp(min=1e-8).log()


def refine_with_crf(log_probs: Tensor, images: Tensor, crf: CRFConfig) -> Tensor:
    """DenseCRF marginals [N, K, H, W] from log-probabilities and the RGB images (batched, on the
    tensors' device: the CUDA kernels on a GPU)."""
    return deeplabv2_ext.dense_crf(
        log_probs,
        images,
        iterations=crf.iterations,
        bilateral_weight=crf.bilateral_weight,
        bilateral_sxy=crf.bilateral_sxy,
        bilateral_srgb=crf.bilateral_srgb,
        gaussian_weight=crf.gaussian_weight,
        gaussian_sxy=crf.gaussian_sxy,
    )


@dataclass(frozen=True)
class EvaluationResult:
    """Scores without the CRF, with it (None when it was off), and timings."""

    scores: SegmentationScores
    crf_scores: SegmentationScores | None
    images: int
    network_seconds: float
    crf_seconds: float

    def report(self, class_names: Sequence[str]) -> str:
        """A short text report: the per-class table(s) and the headline mIoU."""
        parts = [f"without CRF ({self.images} images, network {self.network_seconds:.1f} s):"]
        parts.append(self.scores.table(class_names))
        if self.crf_scores is not None:
            parts.append(f"with DenseCRF (CRF {self.crf_seconds:.1f} s):")
            parts.append(self.crf_scores.table(class_names))
            gain = 100 * (self.crf_scores.mean_iou - self.scores.mean_iou)
            parts.append(
                f"mIoU {100 * self.scores.mean_iou:.2f}% -> {100 * self.crf_scores.mean_iou:.2f}% "
                f"with the CRF ({gain:+.2f} points)"
            )
        else:
            parts.append(f"mIoU {100 * self.scores.mean_iou:.2f}%")
        return "\n".join(parts)


def _collate_same_size(samples: list[dict]) -> dict:
    sizes = {tuple(sample["image"].shape) for sample in samples}
    if len(sizes) > 1:
        raise ValueError(
            f"evaluation batch has images of different sizes {sorted(sizes)}; "
            "use eval.batch_size=1 for datasets with varying image sizes"
        )
    return {
        "image": torch.stack([sample["image"] for sample in samples]),
        "label": torch.stack([sample["label"] for sample in samples]),
        "name": [sample["name"] for sample in samples],
    }


def evaluation_batches(dataset: Dataset, batch_size: int, num_workers: int = 0) -> Iterable[dict]:
    """Batches of {"image", "label", "name"} in dataset order, for evaluation."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_same_size,
    )


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA); a no-op on the CPU. For timings."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    evaluation: EvalConfig,
    crf: CRFConfig,
    preprocessing: str,
    device: torch.device,
    num_workers: int = 0,
    progress: bool = False,
) -> EvaluationResult:
    """mIoU (and pixel/mean accuracy, per-class IoU) of `model` on `dataset`, without and, if
    `evaluation.crf`, with DenseCRF post-processing of the same predictions."""
    num_classes = dataset.num_classes
    ignore_index = getattr(dataset, "ignore_index", 255)
    plain = ConfusionMatrix(num_classes, ignore_index)
    refined = ConfusionMatrix(num_classes, ignore_index) if evaluation.crf else None
    model.to(device).eval()
    network_seconds = crf_seconds = 0.0
    images_seen = 0
    batches = evaluation_batches(dataset, evaluation.batch_size, num_workers)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="evaluate", unit="batch")
    for batch in batches:
        images = batch["image"].to(device)
        labels = batch["label"]
        start = time.perf_counter()
        log_probs = predict_log_probs(
            model, images, preprocessing, evaluation.scales, evaluation.flip
        )
        synchronize(device)
        network_seconds += time.perf_counter() - start
        plain.update(log_probs.argmax(1), labels)
        if refined is not None:
            start = time.perf_counter()
            marginals = refine_with_crf(log_probs, images, crf)
            synchronize(device)
            crf_seconds += time.perf_counter() - start
            refined.update(marginals.argmax(1), labels)
        images_seen += images.shape[0]
    return EvaluationResult(
        scores=plain.scores(),
        crf_scores=refined.scores() if refined is not None else None,
        images=images_seen,
        network_seconds=network_seconds,
        crf_seconds=crf_seconds,
    )
