"""The training and validation datasets of a run, from its `DataConfig`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import DataConfig
from .cityscapes import Cityscapes
from .common import IGNORE_INDEX, DatasetError, SegmentationDataset
from .synthetic import SyntheticShapes
from .transforms import TrainAugment
from .voc import VOCSegmentation

DATASETS: dict[str, type[SegmentationDataset]] = {
    "voc": VOCSegmentation,
    "cityscapes": Cityscapes,
    "synthetic": SyntheticShapes,
}


def _dataset_class(name: str) -> type[SegmentationDataset]:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; known: {sorted(DATASETS)}")
    return DATASETS[name]


def dataset_info(name: str) -> tuple[int, tuple[str, ...], np.ndarray]:
    """(num_classes, class_names, palette [256, 3] uint8) of dataset `name` (voc | cityscapes |
    synthetic), without reading any files."""
    dataset = _dataset_class(name)
    return dataset.num_classes, dataset.class_names, dataset.palette


def build_datasets(
    config: DataConfig, pad_rgb: tuple[int, int, int]
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train, val): train with DeepLabV2's `TrainAugment` (padding the image with `pad_rgb`, the
    model's mean colour), val without a transform (samples at their original size).

    voc / cityscapes read `config.root` with `config.train_split` and `config.val_split`;
    synthetic generates `config.synthetic_train_samples` / `synthetic_val_samples` images of
    `synthetic_image_size` from `synthetic_seed`, the two sets from different random streams.
    """
    dataset = _dataset_class(config.dataset)
    if config.ignore_index != IGNORE_INDEX:
        raise DatasetError(
            f"data.ignore_index is {config.ignore_index}, but the datasets mark ignored pixels "
            f"with {IGNORE_INDEX}"
        )
    augment = TrainAugment(
        config.crop_size, config.scale_range, config.flip, pad_rgb, config.ignore_index
    )
    if dataset is SyntheticShapes:
        size, seed = config.synthetic_image_size, config.synthetic_seed
        return (
            SyntheticShapes(config.synthetic_train_samples, size, seed, augment, split="train"),
            SyntheticShapes(config.synthetic_val_samples, size, seed, split="val"),
        )
    if config.root is None:
        raise DatasetError(
            f"data.root is not set; dataset '{config.dataset}' reads its files from there "
            f"(set data.root=PATH)"
        )
    root = Path(config.root).expanduser()
    return dataset(root, config.train_split, augment), dataset(root, config.val_split)
