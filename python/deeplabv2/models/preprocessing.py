"""Input normalisation matching the backbone's pretraining.

* ``caffe`` (DeepLabV2's Caffe models and their conversions): RGB -> BGR, 0..255, minus the
  per-channel mean B, G, R = 104.008, 116.669, 122.675.
* ``torchvision`` (torchvision ImageNet weights): RGB / 255, minus mean (0.485, 0.456, 0.406),
  divided by std (0.229, 0.224, 0.225).
"""
from __future__ import annotations

import torch
from torch import Tensor

STYLES = ("caffe", "torchvision")
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown preprocessing style {style!r}; known: {list(STYLES)}")


def preprocess(images: Tensor, style: str) -> Tensor:
    """Normalises RGB images for the network.

    Args:
        images: [N, 3, H, W] or [3, H, W] RGB, uint8 or floating point in 0..255, any device.
        style: one of ``STYLES``.

    Returns:
        float32 tensor of the same shape, on the same device (BGR channel order for "caffe").
    """
    _check_style(style)
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"preprocess: expected RGB images [N, 3, H, W] or [3, H, W], "
                         f"got shape {tuple(images.shape)}")
    images = images.to(torch.float32)
    shape = (3, 1, 1)
    if style == "caffe":
        mean = torch.tensor(CAFFE_MEAN_BGR, device=images.device).view(shape)
        return images.flip(-3) - mean
    mean = torch.tensor(TORCHVISION_MEAN_RGB, device=images.device).view(shape)
    std = torch.tensor(TORCHVISION_STD_RGB, device=images.device).view(shape)
    return (images / 255.0 - mean) / std


def padding_rgb(style: str) -> tuple[int, int, int]:
    """The RGB 0..255 colour that ``preprocess`` maps to (about) zero: the rounded mean.

    Augmentation pads images with it, so padding looks like "no signal" to the network.
    """
    _check_style(style)
    if style == "caffe":
        blue, green, red = CAFFE_MEAN_BGR
        return round(red), round(green), round(blue)
    red, green, blue = (round(255 * mean) for mean in TORCHVISION_MEAN_RGB)
    return red, green, blue
