"""`deeplabv2 demo`: train a small DeepLabV2 on synthetic shapes, evaluate with and without the
DenseCRF, print a report and write a picture panel. Needs no data and no weights."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deeplabv2.config import Config
from deeplabv2.data import SegmentationDataset, build_val_dataset
from deeplabv2.evaluate import EvaluationResult, evaluate, predict_log_probs, refine_with_crf
from deeplabv2.models import build_model, load_weights
from deeplabv2.train import resolve_device, train
from deeplabv2.visualize import colour_mask, save_panel

PANEL_ROWS = 6


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured and wrote."""

    evaluation: EvaluationResult
    train_seconds: float
    total_seconds: float
    final_loss: float
    panel: Path

    @property
    def crf_gain(self) -> float:
        """mIoU with the CRF minus without it (fraction, not percent)."""
        assert self.evaluation.crf_scores is not None
        return self.evaluation.crf_scores.mean_iou - self.evaluation.scores.mean_iou


def write_panel(
    model: nn.Module, dataset: SegmentationDataset, config: Config, device: torch.device,
    path: Path,
) -> None:
    """image | ground truth | prediction | CRF-refined, for the first validation images."""
    rows = []
    palette = dataset.palette
    for index in range(min(PANEL_ROWS, len(dataset))):
        sample = dataset[index]
        images = sample["image"].unsqueeze(0).to(device)
        log_probs = predict_log_probs(
            model, images, config.model.preprocessing, config.eval.scales, config.eval.flip
        )
        refined = refine_with_crf(log_probs, images, config.crf)
        rows.append(
            [
                sample["image"].permute(1, 2, 0).numpy(),
                colour_mask(sample["label"].numpy(), palette),
                colour_mask(log_probs.argmax(1)[0].cpu().numpy(), palette),
                colour_mask(refined.argmax(1)[0].cpu().numpy(), palette),
            ]
        )
    save_panel(rows, ("image", "ground truth", "prediction", "CRF-refined"), path, scale=2)


def run_demo(config: Config) -> DemoResult:
    """Trains on config.data (synthetic), evaluates without/with the CRF, writes the panel."""
    start = time.perf_counter()
    output_dir = Path(config.train.output_dir)
    training = train(config)
    train_seconds = time.perf_counter() - start
    device = resolve_device(config.train.device)
    model = build_model(config.model)
    load_weights(model, training.model_path)
    val_set = build_val_dataset(config.data)
    evaluation = evaluate(
        model,
        val_set,
        config.eval,
        config.crf,
        config.model.preprocessing,
        device,
    )
    panel = output_dir / "demo_panel.png"
    write_panel(model, val_set, config, device, panel)
    losses = [loss for _, loss in training.losses]
    return DemoResult(
        evaluation=evaluation,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - start,
        final_loss=float(np.mean(losses[-5:])) if losses else float("nan"),
        panel=panel,
    )
