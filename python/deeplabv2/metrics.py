"""Segmentation metrics from a confusion matrix: mIoU, pixel accuracy, mean accuracy, per-class IoU."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of one evaluation. Classes absent from both the ground truth and the predictions
    have IoU NaN and are left out of the means (as in the PASCAL VOC and Cityscapes tools)."""

    pixel_accuracy: float
    mean_accuracy: float
    mean_iou: float
    class_iou: tuple[float, ...]
    pixels: int

    def table(self, class_names: Sequence[str]) -> str:
        """A per-class IoU table followed by the summary numbers, as plain text."""
        width = max([len(name) for name in class_names] + [len("mean IoU")])
        lines = [f"{'class':<{width}}  IoU (%)"]
        for name, iou in zip(class_names, self.class_iou):
            value = "    n/a" if math.isnan(iou) else f"{100 * iou:7.2f}"
            lines.append(f"{name:<{width}}  {value}")
        lines.append(f"{'mean IoU':<{width}}  {100 * self.mean_iou:7.2f}")
        lines.append(f"{'pixel acc':<{width}}  {100 * self.pixel_accuracy:7.2f}")
        lines.append(f"{'mean acc':<{width}}  {100 * self.mean_accuracy:7.2f}")
        return "\n".join(lines)


class ConfusionMatrix:
    """Accumulates counts[target, prediction] over pixels whose target is not `ignore_index`."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Adds predicted class ids and ground-truth ids of the same shape (any device)."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
            )
        prediction = prediction.reshape(-1).to("cpu", torch.int64)
        target = target.reshape(-1).to("cpu", torch.int64)
        valid = target != self.ignore_index
        prediction, target = prediction[valid], target[valid]
        out_of_range = (target < 0) | (target >= self.num_classes)
        if bool(out_of_range.any()):
            bad = sorted(set(target[out_of_range].tolist()))[:10]
            raise ValueError(
                f"target has class ids {bad} outside [0, {self.num_classes}) and != "
                f"ignore_index {self.ignore_index}"
            )
        if bool(((prediction < 0) | (prediction >= self.num_classes)).any()):
            raise ValueError(f"prediction has class ids outside [0, {self.num_classes})")
        flat = target * self.num_classes + prediction
        self.counts += torch.bincount(flat, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )

    def merge(self, other: "ConfusionMatrix") -> None:
        """Adds the counts of another matrix (e.g. from another process)."""
        self.counts += other.counts

    def scores(self) -> SegmentationScores:
        """The scores of everything added so far."""
        counts = self.counts.double()
        true_positive = counts.diag()
        per_target = counts.sum(1)
        per_prediction = counts.sum(0)
        total = counts.sum()
        union = per_target + per_prediction - true_positive
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)
        accuracy = torch.where(per_target > 0, true_positive / per_target.clamp(min=1), torch.nan)
        return SegmentationScores(
            pixel_accuracy=float(true_positive.sum() / total) if total > 0 else math.nan,
            mean_accuracy=float(accuracy.nanmean()),
            mean_iou=float(iou.nanmean()),
            class_iou=tuple(float(value) for value in iou),
            pixels=int(total),
        )
