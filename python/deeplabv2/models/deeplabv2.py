"""DeepLabV2: dilated ResNet + ASPP at output stride 8, and MSC (multi-scale inputs, max fusion)."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from deeplabv2.config import ModelConfig
from deeplabv2.models.preprocessing import STYLES
from deeplabv2.models.resizing import (
    DEFAULT_RESIZING,
    LAYOUT_RESIZING,
    caffe_factors,
    check_resizing,
    keeps_own_size_in_training,
    resize_input,
    resize_logits,
)
from deeplabv2.models.resnet import BACKBONES, ResNet
from deeplabv2.models.weights import load_weights
from deeplabv2_ext import ASPP
from deeplabv2_ext.aspp import aspp_reference, checked_rates

logger = logging.getLogger(__name__)


class ConvASPP(nn.Module):
    """The reference ASPP head: R ``nn.Conv2d`` (3x3, dilation = padding = rate, bias), summed
    by ``deeplabv2_ext.aspp.aspp_reference`` (the op's one reference, which the tests and the
    benchmarks use too).

    Same function, initialisation (weights N(0, 0.01^2), biases 0) and rates as the fused
    ``deeplabv2_ext.ASPP``; branch r is ``convs[r]`` (the fused op's ``weight[r]``, ``bias[r]``).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.rates = checked_rates(rates)
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
        return aspp_reference(x, [conv.weight for conv in self.convs],
                              [conv.bias for conv in self.convs], self.rates)


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
        resizing: the convention (``RESIZINGS``) by which inputs and logits of this network are
            resized: MSC's default, and evaluation's upsampling of the logits to the image.
    """

    output_stride = 8

    def __init__(self, num_classes: int, backbone: str = "resnet101",
                 rates: Sequence[int] = (6, 12, 18, 24), frozen_bn: bool = True,
                 fused_aspp: bool = True, resizing: str = DEFAULT_RESIZING) -> None:
        super().__init__()
        _check_head(num_classes, rates)
        self.num_classes = num_classes
        self.resizing = check_resizing(resizing)
        self.backbone = ResNet(backbone, frozen_bn=frozen_bn)
        head = ASPP if fused_aspp else ConvASPP
        self.aspp = head(self.backbone.out_channels, num_classes, tuple(rates))

    def forward(self, x: Tensor) -> Tensor:
        return self.aspp(self.backbone(x))


class MSC(nn.Module):
    """Multi-scale inputs with max fusion (DeepLabV2's MSC), around a single-scale network.

    For each scale s the input is resized to s (``resize_input``; scale 1.0 uses the input as
    is) and run through ``base``; its logits are resized to the size of the scale-1.0 logits
    (``resize_logits``), and the fused output is their element-wise max. ``resizing`` names
    the convention of every resize (``RESIZINGS``: caffe, kazuto1011, isht7; see
    ``deeplabv2.models.resizing``); by default the base network's, which it also sets.

    ``forward(x)`` returns, in training mode, ``[logits of scales[0], ..., logits of scales[-1],
    max]`` in the order of ``scales``, each at the scale-1.0 logits size except where the
    convention keeps a scale's own size (``keeps_own_size_in_training``); in eval mode the max.

    Raises:
        ValueError: empty scales, a non-positive or repeated scale, no 1.0 among them, an
            unknown resizing, or (caffe) a scale that is no ratio of small integers.
    """

    def __init__(self, base: nn.Module, scales: Sequence[float] = (1.0, 0.75, 0.5),
                 resizing: str | None = None) -> None:
        super().__init__()
        self.scales = _check_scales(scales)
        self.base = base
        set_resizing(self, getattr(base, "resizing", DEFAULT_RESIZING)
                     if resizing is None else resizing)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        logits = {1.0: self.base(x)}
        reference_size = logits[1.0].shape[-2:]
        resized = {1.0: logits[1.0]}
        for scale in self.scales:
            if scale != 1.0:
                logits[scale] = self.base(resize_input(x, scale, self.resizing))
                resized[scale] = resize_logits(logits[scale], reference_size, self.resizing)
        fused = torch.stack([resized[scale] for scale in self.scales]).amax(dim=0)
        if not self.training:
            return fused
        return [logits[scale] if keeps_own_size_in_training(scale, self.resizing)
                else resized[scale] for scale in self.scales] + [fused]

    def extra_repr(self) -> str:
        return f"scales={self.scales}, resizing={self.resizing!r}"


def set_resizing(model: nn.Module, resizing: str) -> None:
    """Sets the resizing convention of ``model`` (and of its base in MSC: one convention).

    Raises:
        ValueError: an unknown convention, or caffe with scales no Interp layer makes.
    """
    _check_resizing_of_scales(resizing, getattr(model, "scales", ()))
    for module in (model, getattr(model, "base", None)):
        if module is not None:
            module.resizing = resizing


def build_model(config: ModelConfig) -> nn.Module:
    """The network described by ``config``: DeepLabV2, in MSC when there are several scales.

    Loads ``config.weights`` (a checkpoint path; any format ``load_weights`` knows) with
    ``strict=config.strict_weights`` when it is set, and logs the load report. The resizing
    convention is ``config.msc_resizing``; when that is None, the convention of the checkpoint's
    layout (kazuto1011, isht7) if it has one, else caffe; the report says which and why. The
    returned model (and its base) carries it as ``resizing``.

    Raises:
        ValueError: an unknown backbone, preprocessing style or msc_resizing, num_classes < 1,
            empty or non-positive rates, bad msc_scales (see ``MSC``).
        WeightsError: the weights do not fit (see ``load_weights``).
    """
    if config.backbone not in BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone {config.backbone!r}; "
                         f"known: {list(BACKBONES)}")
    if config.preprocessing not in STYLES:
        raise ValueError(f"model.preprocessing: unknown style {config.preprocessing!r}; "
                         f"known: {list(STYLES)}")
    if config.msc_resizing is not None:
        try:
            check_resizing(config.msc_resizing)
        except ValueError as error:
            raise ValueError(f"model.msc_resizing: {error}") from None
    scales = tuple(config.msc_scales)
    if scales:
        _check_scales(scales)
    model: nn.Module = DeepLabV2(config.num_classes, backbone=config.backbone,
                                 rates=config.rates, frozen_bn=config.frozen_bn,
                                 fused_aspp=config.fused_aspp,
                                 resizing=config.msc_resizing or DEFAULT_RESIZING)
    if len(scales) > 1:
        model = MSC(model, scales)
    if config.weights is None:
        return model
    report = load_weights(model, config.weights, strict=config.strict_weights)
    if config.msc_resizing is not None:
        report.resizing = (config.msc_resizing, "model.msc_resizing")
    elif report.format in LAYOUT_RESIZING:
        report.resizing = (LAYOUT_RESIZING[report.format],
                           f"the {report.format} checkpoint layout; model.msc_resizing not set")
    else:
        report.resizing = (DEFAULT_RESIZING, "the default; model.msc_resizing not set")
    set_resizing(model, report.resizing[0])
    logger.info("%s: %s", config.weights, report.summary())
    return model


def _check_head(num_classes: int, rates: Sequence[int]) -> None:
    """Before the backbone is built: a positive num_classes, and rates as the heads take them."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    try:
        checked_rates(rates)
    except TypeError as error:  # a config error, reported as the other bad values are
        raise ValueError(str(error)) from None


def _check_resizing_of_scales(resizing: str, scales: Sequence[float]) -> None:
    check_resizing(resizing)
    if resizing == "caffe":
        for scale in scales:
            caffe_factors(scale)


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(scale) for scale in scales)
    if not scales or any(not scale > 0 for scale in scales):
        raise ValueError(f"MSC scales must be positive numbers, got {scales}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"MSC scales must not repeat, got {scales}")
    if 1.0 not in scales:
        raise ValueError(f"MSC scales must include 1.0 (the reference logits size), got {scales}")
    return scales
