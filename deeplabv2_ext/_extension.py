"""Loads the native extension, which registers the torch.ops.deeplabv2_ext operators."""
from __future__ import annotations

import torch

from deeplabv2_ext import _C  # noqa: F401  (importing registers the ops)


def cuda_kernels_available() -> bool:
    """Whether this build of deeplabv2_ext contains its CUDA kernels."""
    return bool(torch.ops.deeplabv2_ext.cuda_kernels_available())
