"""The input of the CRF measurement scripts: skimage's astronaut and a smooth random unary."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def astronaut_inputs(size: int, labels: int,
                     generator: torch.Generator) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(photo [size, size, 3] uint8, image [1, 3, size, size] uint8, unary [1, labels, size,
    size] log-probabilities: random scores smoothed over 15x15 pixels, drawn from
    ``generator``)."""
    from skimage import data, transform

    photo = np.ascontiguousarray(
        (transform.resize(data.astronaut(), (size, size)) * 255).round().astype(np.uint8))
    image = torch.from_numpy(photo).permute(2, 0, 1)[None].contiguous()
    scores = F.avg_pool2d(torch.randn(1, labels, size, size, generator=generator), 15, 1, 7) * 8
    return photo, image, torch.log_softmax(scores, 1).contiguous()
