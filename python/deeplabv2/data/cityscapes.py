"""Cityscapes fine annotations, mapped from the 34 label ids to the 19 evaluated train ids."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import (
    IGNORE_INDEX,
    DatasetError,
    SegmentationDataset,
    Transform,
    read_pair,
    require_dir,
    require_file,
)
from .palette import CITYSCAPES_CLASSES, cityscapes_palette

NUM_LABEL_IDS = 34  # label ids 0 (unlabeled) ... 33 (bicycle) in *_gtFine_labelIds.png

# label id -> train id (cityscapesscripts/helpers/labels.py); every other id is ignored.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

_TRAIN_ID_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_TRAIN_ID_LUT[list(LABEL_ID_TO_TRAIN_ID)] = list(LABEL_ID_TO_TRAIN_ID.values())

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids [H, W] (uint8) as train ids: road 0 ... bicycle 18, the rest 255."""
    return _TRAIN_ID_LUT[label_ids]


class Cityscapes(SegmentationDataset):
    """Cityscapes semantic segmentation with the fine annotations: 19 classes, 255 ignored.

    `root` holds `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png` and
    `gtFine/<split>/<city>/<stem>_gtFine_labelIds.png` (8-bit grey label ids, mapped to train ids
    on reading). Samples are sorted by city and stem; a sample's name is its stem
    (`aachen_000000_000019`). Every image's label must exist (checked here).
    """

    num_classes = len(CITYSCAPES_CLASSES)
    class_names = CITYSCAPES_CLASSES
    palette = cityscapes_palette()

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None) -> None:
        super().__init__(transform)
        self.root = require_dir(Path(root), "Cityscapes folder")
        self.split = split
        image_dir = require_dir(
            self.root / "leftImg8bit" / split, f"Cityscapes images of split '{split}'"
        )
        label_dir = require_dir(
            self.root / "gtFine" / split, f"Cityscapes labels of split '{split}'"
        )
        self.samples = []
        for image_path in sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}")):
            stem = image_path.name[: -len(_IMAGE_SUFFIX)]
            label_path = label_dir / image_path.parent.name / f"{stem}{_LABEL_SUFFIX}"
            require_file(label_path, f"label of image {image_path}")
            self.samples.append((image_path, label_path))
        if not self.samples:
            raise DatasetError(f"no */*{_IMAGE_SUFFIX} images in {image_dir}")

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Image, train-id label and name of sample `index`."""
        image_path, label_path = self.samples[index]
        image, label_ids = read_pair(image_path, label_path, ("L",), NUM_LABEL_IDS)
        return image, label_ids_to_train_ids(label_ids), image_path.name[: -len(_IMAGE_SUFFIX)]
