"""Images for people: palette PNG masks, overlays and the image | truth | prediction | CRF panel."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from deeplabv2.data.palette import colorize

IGNORE_COLOUR = (255, 255, 255)


def _as_uint8_label(label: np.ndarray) -> np.ndarray:
    if label.ndim != 2:
        raise ValueError(f"a label map is 2-D [H, W], got shape {label.shape}")
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError("label values must lie in 0..255")
    return label.astype(np.uint8)


def save_mask(label: np.ndarray, palette: np.ndarray, path: Path) -> None:
    """Writes class ids [H, W] as a palette ('P' mode) PNG, the format of VOC's ground truth."""
    colorize(label, palette).save(path)


def colour_mask(label: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Class ids [H, W] → RGB [H, W, 3] uint8 (ignored pixels white)."""
    colours = np.asarray(palette, dtype=np.uint8)
    rgb = colours[_as_uint8_label(label)]
    rgb[label == ignore_index] = IGNORE_COLOUR
    return rgb


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The RGB image [H, W, 3] blended with the coloured mask."""
    colours = colour_mask(label, palette).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return blended.round().clip(0, 255).astype(np.uint8)


def save_panel(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    path: Path,
    scale: int = 1,
) -> None:
    """Writes a grid of RGB images [H, W, 3] (one list per row, all the same size) with a title
    above each column, e.g. image | ground truth | prediction | CRF-refined."""
    if not rows or any(len(row) != len(titles) for row in rows):
        raise ValueError("every panel row needs one image per title")
    height, width = rows[0][0].shape[:2]
    cell_h, cell_w, gap, header = height * scale, width * scale, 4, 14
    canvas = Image.new(
        "RGB",
        (len(titles) * (cell_w + gap) + gap, header + len(rows) * (cell_h + gap) + gap),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(titles):
        draw.text((gap + column * (cell_w + gap), 1), title, fill=(0, 0, 0))
    for row_index, row in enumerate(rows):
        for column, picture in enumerate(row):
            if picture.shape[:2] != (height, width):
                raise ValueError("all panel images must have the same size")
            tile = Image.fromarray(picture).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (gap + column * (cell_w + gap), header + row_index * (cell_h + gap)))
    canvas.save(path)
