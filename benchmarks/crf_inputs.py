"""The inputs of the CRF measurement scripts: a skimage photograph and a smooth random unary."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# DeepLab-v2's CRF parameters for PASCAL VOC (10 mean-field iterations in every script).
VOC_CRF_PARAMS = dict(bilateral_weight=4.0, bilateral_sxy=121.0, bilateral_srgb=5.0,
                      gaussian_weight=3.0, gaussian_sxy=3.0)


def photo_inputs(name: str, height: int, width: int, labels: int,
                 generator: torch.Generator) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(photo [height, width, 3] uint8: ``skimage.data.<name>()`` resized, image [1, 3, height,
    width] uint8, unary [1, labels, height, width] log-probabilities: random scores smoothed
    over 15x15 pixels, drawn from ``generator``)."""
    from skimage import data, transform

    photo = np.ascontiguousarray(
        (transform.resize(getattr(data, name)(), (height, width)) * 255).round().astype(np.uint8))
    image = torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous()
    scores = F.avg_pool2d(torch.randn(1, labels, height, width, generator=generator), 15, 1, 7) * 8
    return photo, image, torch.log_softmax(scores, 1).contiguous()


def astronaut_inputs(size: int, labels: int,
                     generator: torch.Generator) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """:func:`photo_inputs` of skimage's astronaut at ``size`` x ``size``."""
    return photo_inputs("astronaut", size, size, labels, generator)
