"""DeepLabV2: dilated ResNet + ASPP at output stride 8, and MSC (multi-scale inputs, max fusion)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeplabv2.config import ModelConfig
from deeplabv2.models.preprocessing import STYLES
from deeplabv2.models.resnet import BACKBONES, ResNet
from deeplabv2.models.weights import load_weights
from deeplabv2_ext import ASPP


class ConvASPP(nn.Module):
    """The reference ASPP head: R ``nn.Conv2d`` (3x3, dilation = padding = rate, bias), summed.

    Same function, initialisation (weights N(0, 0.01^2), biases 0) and rates as the fused
    ``deeplabv2_ext.ASPP``; branch r is ``convs[r]`` (the fused op's ``weight[r]``, ``bias[r]``).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=True)
            for rate in self.rates
        )
        for conv in self.convs:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return sum(conv(x) for conv in self.convs)


class DeepLabV2(nn.Module):
    """DeepLabV2 (single scale): ``backbone`` (dilated ResNet) then ``aspp`` (the classifier).

    ``forward(x)``: x [N, 3, H, W] preprocessed (``deeplabv2.models.preprocess``) ->
    logits [N, num_classes, h, w] at output stride 8, not upsampled (321 -> 41, 513 -> 65; see
    ``ResNet``). Every head parameter lives under ``aspp`` (the trainer's 10x/20x LR groups).

    Args:
        num_classes: output channels.
        backbone: one of ``BACKBONES``.
        rates: ASPP dilation rates; (6, 12, 18, 24) is ASPP-L, (2, 4, 8, 12) ASPP-S.
        frozen_bn: BatchNorm statistics and affine parameters fixed (DeepLabV2's default).
        fused_aspp: the fused ``deeplabv2_ext.ASPP`` head, else ``ConvASPP`` (R convolutions).
    """

    output_stride = 8

    def __init__(self, num_classes: int, backbone: str = "resnet101",
                 rates: Sequence[int] = (6, 12, 18, 24), frozen_bn: bool = True,
                 fused_aspp: bool = True) -> None:
        super().__init__()
        _check_head(num_classes, rates)
        self.num_classes = num_classes
        self.backbone = ResNet(backbone, frozen_bn=frozen_bn)
        head = ASPP if fused_aspp else ConvASPP
        self.aspp = head(self.backbone.out_channels, num_classes, tuple(rates))

    def forward(self, x: Tensor) -> Tensor:
        return self.aspp(self.backbone(x))


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, ...]:
    """The size MSC resizes an input of ``size`` (H, W) to: ``floor((n - 1) * scale) + 1`` each.

    This is the Caffe Interp arithmetic of DeepLabV2's MSC prototxts (shrink_factor 4,
    zoom_factor 3 for 0.75; shrink_factor 2 for 0.5) whenever ``n - 1`` is divisible by the
    shrink factor, e.g. 321 -> 241 and 161, 513 -> 385 and 257. Scale 1 keeps the size.
    """
    return tuple(int(math.floor((n - 1) * scale + 1e-6)) + 1 for n in size)


def upsample_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (align_corners=False) of logits [N, K, h, w] to ``size`` (H, W)."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


class MSC(nn.Module):
    """Multi-scale inputs with max fusion (DeepLabV2's MSC), around a single-scale network.

    For each scale s the input is resized bilinearly (align_corners=False) to
    ``scaled_size((H, W), s)`` (scale 1.0 uses the input as is), run through ``base``, and its
    logits resized bilinearly (align_corners=False) to the size of the scale-1.0 logits. The
    fused output is their element-wise max.

    ``forward(x)`` returns, in training mode, ``[logits of scales[0], ..., logits of scales[-1],
    max]`` (all at the scale-1.0 logits size, in the order of ``scales``), in eval mode the max.

    Raises:
        ValueError: empty scales, a non-positive or repeated scale, or no 1.0 among them.
    """

    def __init__(self, base: nn.Module, scales: Sequence[float] = (1.0, 0.75, 0.5)) -> None:
        super().__init__()
        self.scales = _check_scales(scales)
        self.base = base

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        logits = {1.0: self.base(x)}
        reference_size = logits[1.0].shape[-2:]
        for scale in self.scales:
            if scale != 1.0:
                scaled = F.interpolate(x, size=scaled_size(x.shape[-2:], scale),
                                       mode="bilinear", align_corners=False)
                logits[scale] = upsample_logits(self.base(scaled), reference_size)
        outputs = [logits[scale] for scale in self.scales]
        fused = torch.stack(outputs).amax(dim=0)
        return outputs + [fused] if self.training else fused

    def extra_repr(self) -> str:
        return f"scales={self.scales}"


def build_model(config: ModelConfig) -> nn.Module:
    """The network described by ``config``: DeepLabV2, in MSC when there are several scales.

    Loads ``config.weights`` (a checkpoint path; any format ``load_weights`` knows) with
    ``strict=config.strict_weights`` when it is set.

    Raises:
        ValueError: an unknown backbone or preprocessing style, num_classes < 1, empty or
            non-positive rates, bad msc_scales (see ``MSC``).
        WeightsError: the weights do not fit (see ``load_weights``).
    """
    if config.backbone not in BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone {config.backbone!r}; "
                         f"known: {list(BACKBONES)}")
    if config.preprocessing not in STYLES:
        raise ValueError(f"model.preprocessing: unknown style {config.preprocessing!r}; "
                         f"known: {list(STYLES)}")
    scales = tuple(config.msc_scales)
    if scales:
        _check_scales(scales)
    model: nn.Module = DeepLabV2(config.num_classes, backbone=config.backbone,
                                 rates=config.rates, frozen_bn=config.frozen_bn,
                                 fused_aspp=config.fused_aspp)
    if len(scales) > 1:
        model = MSC(model, scales)
    if config.weights is not None:
        load_weights(model, config.weights, strict=config.strict_weights)
    return model


def _check_head(num_classes: int, rates: Sequence[int]) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if (not rates or isinstance(rates, (str, bytes))
            or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates)):
        raise ValueError(f"rates must be a non-empty sequence of positive ints, got {rates!r}")


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(scale) for scale in scales)
    if not scales or any(not scale > 0 for scale in scales):
        raise ValueError(f"MSC scales must be positive numbers, got {scales}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"MSC scales must not repeat, got {scales}")
    if 1.0 not in scales:
        raise ValueError(f"MSC scales must include 1.0 (the reference logits size), got {scales}")
    return scales
