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


def _check(config: DataConfig) -> type[SegmentationDataset]:
    dataset = _dataset_class(config.dataset)
    if config.ignore_index != IGNORE_INDEX:
        raise DatasetError(
            f"data.ignore_index is {config.ignore_index}, but the datasets mark ignored pixels "
            f"with {IGNORE_INDEX}"
        )
    if dataset is not SyntheticShapes and config.root is None:
        raise DatasetError(
            f"data.root is not set; dataset '{config.dataset}' reads its files from there "
            f"(set data.root=PATH)"
        )
    return dataset


def build_train_dataset(config: DataConfig, pad_rgb: tuple[int, int, int]) -> SegmentationDataset:
    """The training set (`config.train_split`) with DeepLabV2's `TrainAugment`, padding the image
    with `pad_rgb` (the model's mean colour). Synthetic: `config.synthetic_train_samples`
    images of `synthetic_image_size` from `synthetic_seed`."""
    dataset = _check(config)
    augment = TrainAugment(
        config.crop_size, config.scale_range, config.flip, pad_rgb, config.ignore_index
    )
    if dataset is SyntheticShapes:
        return SyntheticShapes(config.synthetic_train_samples, config.synthetic_image_size,
                               config.synthetic_seed, augment, split="train")
    return dataset(Path(config.root).expanduser(), config.train_split, augment)


def build_val_dataset(config: DataConfig) -> SegmentationDataset:
    """The validation set (`config.val_split`) without a transform (samples at their original
    size); it does not need the training split to exist. Synthetic: `synthetic_val_samples`
    images from a random stream other than the training set's."""
    dataset = _check(config)
    if dataset is SyntheticShapes:
        return SyntheticShapes(config.synthetic_val_samples, config.synthetic_image_size,
                               config.synthetic_seed, split="val")
    return dataset(Path(config.root).expanduser(), config.val_split)


def build_datasets(
    config: DataConfig, pad_rgb: tuple[int, int, int]
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train, val): `build_train_dataset(config, pad_rgb)` and `build_val_dataset(config)`."""
    return build_train_dataset(config, pad_rgb), build_val_dataset(config)
