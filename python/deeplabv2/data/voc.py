"""PASCAL VOC 2012 segmentation, with the SBD-augmented `trainaug` split (10,582 images)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import (
    DatasetError,
    SegmentationDataset,
    Transform,
    read_pair,
    require_dir,
    require_file,
)
from .palette import VOC_CLASSES, voc_palette

TRAINAUG_SPLITS = ("trainaug", "train_aug")


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC 2012 semantic segmentation: 21 classes, 255 on object borders (ignored).

    `root` is the `VOC2012` folder. Split `trainaug` (or `train_aug`) reads the list
    `ImageSets/SegmentationAug/train_aug.txt` and the single-channel labels
    `SegmentationClassAug/<name>.png`; any other split reads `ImageSets/Segmentation/<split>.txt`
    and the palette PNGs `SegmentationClass/<name>.png`. A list line is either a name or an
    image and a label path relative to `root` (`/JPEGImages/x.jpg /SegmentationClassAug/x.png`).
    Images are `JPEGImages/<name>.jpg` unless the list names them. Every listed file must exist
    (checked here, so a broken dataset fails before training starts).
    """

    num_classes = len(VOC_CLASSES)
    class_names = VOC_CLASSES
    palette = voc_palette()

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None) -> None:
        super().__init__(transform)
        self.root = require_dir(Path(root), "VOC2012 folder")
        self.split = split
        if split in TRAINAUG_SPLITS:
            list_file = self.root / "ImageSets" / "SegmentationAug" / "train_aug.txt"
            label_dir, self._label_modes = "SegmentationClassAug", ("L", "P")
        else:
            list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            label_dir, self._label_modes = "SegmentationClass", ("P",)
        require_file(list_file, f"VOC list file of split '{split}'")
        self.samples = self._read_list(list_file, label_dir)
        for image_path, label_path in self.samples:
            require_file(image_path, f"image listed in {list_file}")
            require_file(label_path, f"label listed in {list_file}")

    def _read_list(self, list_file: Path, label_dir: str) -> list[tuple[Path, Path]]:
        samples = []
        for number, line in enumerate(list_file.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) == 1:
                name = fields[0]
                image_path = self.root / "JPEGImages" / f"{name}.jpg"
                samples.append((image_path, self.root / label_dir / f"{name}.png"))
            elif len(fields) == 2:
                samples.append(tuple(self.root / field.lstrip("/") for field in fields))
            else:
                raise DatasetError(
                    f"{list_file}, line {number}: expected 'name' or 'image_path label_path', "
                    f"got {line!r}"
                )
        if not samples:
            raise DatasetError(f"VOC list file {list_file} lists no images")
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Image, label and name (the file stem, e.g. `2007_000032`) of sample `index`."""
        image_path, label_path = self.samples[index]
        image, label = read_pair(image_path, label_path, self._label_modes, self.num_classes)
        return image, label, image_path.stem
