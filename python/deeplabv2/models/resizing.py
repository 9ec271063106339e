"""How DeepLabV2's multi-scale inputs and logits are resized: the conventions of its references.

A convention fixes, for an input scaled by ``s``: its size, how it is sampled, and how logits are
brought back to a common size. MSC (every scale's input and logits), evaluation (its test-time
scales and the final upsampling to the image) and training use the same one.

* ``caffe`` (DeepLabV2's Caffe prototxts, the Interp layer): the size an Interp layer with
  ``shrink_factor`` q and ``zoom_factor`` p (``s = p / q`` in lowest terms) computes, shrink
  first: ``(n - 1) // q * p + 1`` (321 -> 241 and 161, 320 -> 238 and 160); bilinear with
  aligned corners (Interp maps the first and last pixels onto each other), for inputs and
  logits alike.
* ``kazuto1011`` (kazuto1011/deeplab-pytorch ``MSC``): ``F.interpolate(x,
  scale_factor=s)``, so the size is ``floor(n * s)`` (161 -> 120) and the sampling uses ``s``
  itself, not the size ratio; bilinear without aligned corners, inputs and logits.
* ``isht7`` (isht7/pytorch-deeplab-resnet ``MS_Deeplab``): ``int(n * s) + 1`` (320 -> 241 and
  161); bilinear with aligned corners (``nn.UpsamplingBilinear2d``), inputs and logits.

In training, MSC returns each scale's logits at the size of the scale-1 logits, except where the
reference leaves them at their own size (``keeps_own_size_in_training``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch.nn.functional as F
from torch import Tensor

RESIZINGS = ("caffe", "kazuto1011", "isht7")
DEFAULT_RESIZING = "caffe"
# The convention of a checkpoint layout (deeplabv2.models.weights.FORMATS) that has one.
LAYOUT_RESIZING = {"kazuto1011": "kazuto1011", "isht7": "isht7"}
_ALIGN_CORNERS = {"caffe": True, "kazuto1011": False, "isht7": True}
_MAX_CAFFE_FACTOR = 16  # Interp factors are small integers: 0.75 is shrink 4, zoom 3


def check_resizing(resizing: str) -> str:
    """``resizing`` if it names a convention; otherwise a ValueError listing them."""
    if resizing not in RESIZINGS:
        raise ValueError(f"unknown multi-scale resizing {resizing!r}; known: {list(RESIZINGS)}")
    return resizing


def caffe_factors(scale: float) -> tuple[int, int]:
    """(zoom_factor, shrink_factor) of the Caffe Interp layer that scales by ``scale``.

    Raises:
        ValueError: ``scale`` is not a ratio of integers up to 16 (Interp has no other).
    """
    ratio = Fraction(scale).limit_denominator(_MAX_CAFFE_FACTOR)
    if (ratio <= 0 or ratio.numerator > _MAX_CAFFE_FACTOR
            or not math.isclose(ratio, scale, rel_tol=0, abs_tol=1e-9)):
        raise ValueError(f"the caffe resizing scales by Interp's integer zoom/shrink factors "
                         f"(up to {_MAX_CAFFE_FACTOR}); {scale} is not such a ratio")
    return ratio.numerator, ratio.denominator


def scaled_size(size: Sequence[int], scale: float, resizing: str) -> tuple[int, ...]:
    """The size (H, W) that an input of ``size`` has at ``scale`` under ``resizing``."""
    check_resizing(resizing)
    if scale == 1.0:
        return tuple(size)
    if resizing == "caffe":
        zoom, shrink = caffe_factors(scale)
        return tuple((n - 1) // shrink * zoom + 1 for n in size)
    if resizing == "kazuto1011":
        return tuple(math.floor(n * scale) for n in size)
    return tuple(int(n * scale) + 1 for n in size)


def resize_input(x: Tensor, scale: float, resizing: str) -> Tensor:
    """``x`` [N, C, H, W] resized bilinearly to ``scale`` as ``resizing`` does (scale 1: ``x``)."""
    if scale == 1.0:
        return x
    if check_resizing(resizing) == "kazuto1011":
        return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=scaled_size(x.shape[-2:], scale, resizing), mode="bilinear",
                         align_corners=_ALIGN_CORNERS[resizing])


def resize_logits(logits: Tensor, size: Sequence[int], resizing: str) -> Tensor:
    """Bilinear resize of logits [N, K, h, w] to ``size`` (H, W), with aligned corners as
    ``resizing`` has them: MSC's per-scale logits, evaluation's upsampling to the image."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear",
                         align_corners=_ALIGN_CORNERS[check_resizing(resizing)])


def keeps_own_size_in_training(scale: float, resizing: str) -> bool:
    """Whether MSC in training returns the logits of ``scale`` at their own size.

    kazuto1011's MSC does for every scale but 1; isht7's ``MS_Deeplab`` for 0.5 only (it
    upsamples 0.75); the Caffe convention upsamples them all.
    """
    if scale == 1.0:
        return False
    return {"caffe": False, "kazuto1011": True, "isht7": scale == 0.5}[check_resizing(resizing)]
