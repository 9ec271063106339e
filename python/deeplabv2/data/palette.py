"""Class names and colour maps of the datasets, and `colorize` to write label maps as palette PNGs.

Every palette is a read-only uint8 array [256, 3]: row i is the colour of class id i, row 255 the
colour of the ignore label.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "disc", "rectangle", "triangle", "ring")

# Cityscapes' official colours of the 19 train ids (cityscapesscripts/helpers/labels.py).
_CITYSCAPES_COLOURS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

_SYNTHETIC_COLOURS = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25))


def _frozen(palette: np.ndarray) -> np.ndarray:
    palette.flags.writeable = False
    return palette


def voc_palette() -> np.ndarray:
    """PASCAL VOC's colour map [256, 3] uint8: the bits of the class id spread over R, G, B.

    Bit 3k, 3k+1 and 3k+2 of the id become bit 7-k of red, green and blue; so background is
    black, aeroplane (128, 0, 0), ... and the ignore label 255 is (224, 224, 192).
    """
    ids = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            bits = (ids >> (3 * bit + channel)) & 1
            palette[:, channel] |= (bits << (7 - bit)).astype(np.uint8)
    return _frozen(palette)


def cityscapes_palette() -> np.ndarray:
    """Cityscapes' colours of the 19 train ids [256, 3] uint8; every other id (255 too) black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(_CITYSCAPES_COLOURS)] = _CITYSCAPES_COLOURS
    return _frozen(palette)


def synthetic_palette() -> np.ndarray:
    """Colours of the synthetic shape classes [256, 3] uint8 (black background, then red, green,
    blue, yellow); the remaining ids, 255 included, keep VOC's colours."""
    palette = voc_palette().copy()
    palette[: len(_SYNTHETIC_COLOURS)] = _SYNTHETIC_COLOURS
    return _frozen(palette)


def colorize(label: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
    """A label map [H, W] of ids in [0, 255] as a PIL 'P' image with `palette` (default: VOC's).

    Saved as PNG it shows the classes in colour and reads back as the same ids.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"colorize expects a label map [H, W], got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label ids must lie in [0, 255], got [{label.min()}, {label.max()}]")
    palette = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    if palette.shape != (256, 3):
        raise ValueError(f"palette must be [256, 3], got {palette.shape}")
    image = Image.fromarray(label.astype(np.uint8))  # mode "L"; putpalette makes it "P"
    image.putpalette(palette.tobytes())
    return image
