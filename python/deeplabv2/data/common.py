"""What the datasets share: the sample format, (index, seed) indexing, and checked file readers.

A sample is `{"image": uint8 [3, H, W] RGB, "label": int64 [H, W] class ids (255 = ignore),
"name": str}`. Every problem with the files on disk raises `DatasetError` (or its subclass
`DatasetNotFoundError`, also a `FileNotFoundError`) with a message that names the path.
"""
from __future__ import annotations

import abc
import operator
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IGNORE_INDEX = 255

# (image, label, generator) -> (image, label); generator None means torch's global RNG.
Transform = Callable[
    [torch.Tensor, torch.Tensor, Optional[torch.Generator]], tuple[torch.Tensor, torch.Tensor]
]
# An int, or (index, seed): augment with torch.Generator().manual_seed(seed).
Index = Union[int, tuple[int, int]]

# Image modes that convert to RGB without losing meaning.
_RGB_CONVERTIBLE = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "P", "CMYK", "YCbCr"})


class DatasetError(ValueError):
    """A dataset on disk is missing, incomplete or malformed; the message names the path."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset folder, list file, image or label file does not exist."""


def require_dir(path: Path, what: str) -> Path:
    """`path` if it is a directory, else `DatasetNotFoundError` naming it as `what`."""
    if not path.is_dir():
        raise DatasetNotFoundError(f"{what} not found: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file, else `DatasetNotFoundError` naming it as `what`."""
    if not path.is_file():
        raise DatasetNotFoundError(f"{what} not found: {path}")
    return path


def _open(path: Path, what: str) -> Image.Image:
    require_file(path, what)
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read {what} {path}: {error}") from error
    return image


def read_image(path: Path) -> np.ndarray:
    """The RGB image at `path` as uint8 [H, W, 3]."""
    image = _open(path, "image")
    if image.mode not in _RGB_CONVERTIBLE:
        raise DatasetError(
            f"image {path} has mode {image.mode!r}; expected an 8-bit colour or grey image"
        )
    return np.asarray(image.convert("RGB"))


def read_label(path: Path, modes: Collection[str], num_classes: int) -> np.ndarray:
    """The label PNG at `path` as uint8 [H, W] ids, checked to lie in [0, num_classes) or be 255.

    `modes`: the PIL modes the file may have ("P": palette indices are the ids; "L": grey values
    are the ids).
    """
    image = _open(path, "label")
    if image.mode not in modes:
        raise DatasetError(f"label {path} has mode {image.mode!r}; expected one of {sorted(modes)}")
    label = np.asarray(image)
    bad = (label >= num_classes) & (label != IGNORE_INDEX)
    if bad.any():
        values = np.unique(label[bad])
        raise DatasetError(
            f"label {path} has values {values[:10].tolist()} outside [0, {num_classes}) "
            f"and {IGNORE_INDEX}"
        )
    return label


def check_same_size(
    image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path
) -> None:
    """Raises `DatasetError` naming both files if the image and the label differ in size."""
    if image.shape[:2] != label.shape[:2]:
        raise DatasetError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} but label {label_path} is "
            f"{label.shape[1]}x{label.shape[0]} (width x height)"
        )


def read_pair(
    image_path: Path, label_path: Path, label_modes: Collection[str], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """An image [H, W, 3] and its checked label [H, W] (see `read_image`, `read_label`)."""
    image = read_image(image_path)
    label = read_label(label_path, label_modes, num_classes)
    check_same_size(image, label, image_path, label_path)
    return image, label


class SegmentationDataset(Dataset, abc.ABC):
    """Base of the datasets: indexing by int or (index, seed), tensors, the optional transform.

    Subclasses set `num_classes`, `class_names`, `palette` and implement `__len__` and `load`.
    """

    num_classes: int
    class_names: tuple[str, ...]
    palette: np.ndarray
    ignore_index: int = IGNORE_INDEX

    def __init__(self, transform: Transform | None = None) -> None:
        self.transform = transform

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of samples."""

    @abc.abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Sample `index` (in range) as image uint8 [H, W, 3], label [H, W] integer ids, name."""

    def __getitem__(self, item: Index) -> dict[str, torch.Tensor | str]:
        """Sample `item`: an int (augmentation draws from torch's global RNG) or `(index, seed)`
        (augmentation draws from `torch.Generator().manual_seed(seed)`, so it is reproducible)."""
        generator = None
        if isinstance(item, tuple):
            if len(item) != 2:
                raise TypeError(f"expected an index or (index, seed), got {item!r}")
            index, seed = operator.index(item[0]), operator.index(item[1])
            generator = torch.Generator().manual_seed(seed)
        else:
            index = operator.index(item)
        size = len(self)
        if not -size <= index < size:
            raise IndexError(
                f"index {index} out of range for {type(self).__name__} of {size} samples"
            )
        image, label, name = self.load(index % size)
        image_tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        label_tensor = torch.from_numpy(label.astype(np.int64))
        if self.transform is not None:
            image_tensor, label_tensor = self.transform(image_tensor, label_tensor, generator)
        return {"image": image_tensor, "label": label_tensor, "name": name}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes, "
            f"transform={self.transform!r})"
        )
