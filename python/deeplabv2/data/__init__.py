"""Datasets and augmentation: PASCAL VOC 2012 (+ SBD trainaug), Cityscapes, synthetic shapes.

A sample is `{"image": uint8 [3, H, W] RGB, "label": int64 [H, W] (255 = ignore), "name": str}`;
index a dataset with an int, or with `(index, seed)` for reproducible augmentation.
`build_datasets(config.data, pad_rgb)` makes a run's (train, val) pair.
"""
from .build import (
    build_datasets,
    build_train_dataset,
    build_val_dataset,
    dataset_info,
)
from .cityscapes import LABEL_ID_TO_TRAIN_ID, Cityscapes, label_ids_to_train_ids
from .common import DatasetError, DatasetNotFoundError, SegmentationDataset
from .palette import (
    CITYSCAPES_CLASSES,
    SYNTHETIC_CLASSES,
    VOC_CLASSES,
    cityscapes_palette,
    colorize,
    synthetic_palette,
    voc_palette,
)
from .synthetic import SyntheticShapes
from .transforms import TrainAugment
from .voc import VOCSegmentation

__all__ = [
    "CITYSCAPES_CLASSES",
    "LABEL_ID_TO_TRAIN_ID",
    "SYNTHETIC_CLASSES",
    "VOC_CLASSES",
    "Cityscapes",
    "DatasetError",
    "DatasetNotFoundError",
    "SegmentationDataset",
    "SyntheticShapes",
    "TrainAugment",
    "VOCSegmentation",
    "build_datasets",
    "build_train_dataset",
    "build_val_dataset",
    "cityscapes_palette",
    "colorize",
    "dataset_info",
    "label_ids_to_train_ids",
    "synthetic_palette",
    "voc_palette",
]
