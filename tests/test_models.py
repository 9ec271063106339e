"""Tests of deeplabv2.models: the Caffe-style DeepLabV2, MSC, weight conversion, preprocessing.

The weight-loading tests re-implement, in this file, the two published PyTorch DeepLabV2 ports
(kazuto1011/deeplab-pytorch and isht7/pytorch-deeplab-resnet) with their module names, fill every
parameter and BatchNorm statistic with random values and check that our model, loaded from their
state dict, computes the same logits. The MSC tests re-implement the multi-scale forward of each
reference (the two ports' MSC modules and DeepLabV2's Caffe test net with its Interp layer) and
check our MSC against them under each resizing convention.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deeplabv2.config import ModelConfig
from deeplabv2.models import (
    BACKBONES,
    MSC,
    RESIZINGS,
    STYLES,
    ConvASPP,
    DeepLabV2,
    FrozenBatchNorm2d,
    WeightsError,
    build_model,
    load_weights,
    padding_rgb,
    preprocess,
    resize_input,
    resize_logits,
    scaled_size,
    set_resizing,
)
from deeplabv2_ext import ASPP

RESNET101 = (3, 4, 23, 3)
SMALL = (1, 1, 1, 1)  # with base width 16: the "small" backbone


# --- kazuto1011/deeplab-pytorch (libs/models/resnet.py, deeplabv2.py, msc.py) --------------------

class _ConvBnReLU(nn.Sequential):
    def __init__(self, in_ch, out_ch, kernel_size, stride, padding, dilation, relu=True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation,
                                          bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch, eps=1e-5, momentum=1 - 0.999))
        if relu:
            self.add_module("relu", nn.ReLU())


class _Bottleneck(nn.Module):
    def __init__(self, in_ch, out_ch, stride, dilation, downsample):
        super().__init__()
        mid_ch = out_ch // 4
        self.reduce = _ConvBnReLU(in_ch, mid_ch, 1, stride, 0, 1, True)
        self.conv3x3 = _ConvBnReLU(mid_ch, mid_ch, 3, 1, dilation, dilation, True)
        self.increase = _ConvBnReLU(mid_ch, out_ch, 1, 1, 0, 1, False)
        self.shortcut = (_ConvBnReLU(in_ch, out_ch, 1, stride, 0, 1, False)
                         if downsample else nn.Identity())

    def forward(self, x):
        h = self.increase(self.conv3x3(self.reduce(x)))
        return F.relu(h + self.shortcut(x))


class _ResLayer(nn.Sequential):
    def __init__(self, n_layers, in_ch, out_ch, stride, dilation):
        super().__init__()
        for i in range(n_layers):
            self.add_module(f"block{i + 1}", _Bottleneck(
                in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, dilation, i == 0))


class _Stem(nn.Sequential):
    def __init__(self, out_ch):
        super().__init__()
        self.add_module("conv1", _ConvBnReLU(3, out_ch, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class _ASPP(nn.Module):
    def __init__(self, in_ch, out_ch, rates):
        super().__init__()
        for i, rate in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(in_ch, out_ch, 3, 1, padding=rate, dilation=rate,
                                               bias=True))

    def forward(self, x):
        return sum(stage(x) for stage in self.children())


class KazutoDeepLabV2(nn.Sequential):
    def __init__(self, n_classes, n_blocks, atrous_rates, base=64):
        super().__init__()
        ch = [base * 2 ** p for p in range(6)]
        self.add_module("layer1", _Stem(ch[0]))
        self.add_module("layer2", _ResLayer(n_blocks[0], ch[0], ch[2], 1, 1))
        self.add_module("layer3", _ResLayer(n_blocks[1], ch[2], ch[3], 2, 1))
        self.add_module("layer4", _ResLayer(n_blocks[2], ch[3], ch[4], 1, 2))
        self.add_module("layer5", _ResLayer(n_blocks[3], ch[4], ch[5], 1, 4))
        self.add_module("aspp", _ASPP(ch[5], n_classes, atrous_rates))


class KazutoMSC(nn.Module):
    """kazuto1011/deeplab-pytorch ``libs/models/msc.py`` (as of 79cb390, its last change): the input
    resized by ``F.interpolate(scale_factor=p)``, bilinear, align_corners=False (size floor(n p),
    sampled at the step 1/p); every pyramid's logits resized to the scale-1 logits size
    (bilinear, align_corners=False) for the max; training returns [scale 1, each pyramid's
    logits at its own size, max], eval the max."""

    def __init__(self, base, scales=(0.5, 0.75)):
        super().__init__()
        self.base = base
        self.scales = scales

    def forward(self, x):
        logits = self.base(x)
        height, width = logits.shape[2:]
        pyramid = [self.base(F.interpolate(x, scale_factor=p, mode="bilinear",
                                           align_corners=False)) for p in self.scales]
        resized = [F.interpolate(level, size=(height, width), mode="bilinear",
                                 align_corners=False) for level in pyramid]
        fused = torch.max(torch.stack([logits] + resized), dim=0)[0]
        return [logits] + pyramid + [fused] if self.training else fused


# --- isht7/pytorch-deeplab-resnet (deeplab_resnet.py) --------------------------------------------

class IshtBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation_=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, affine=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=dilation_,
                               bias=False, dilation=dilation_)
        self.bn2 = nn.BatchNorm2d(planes, affine=True)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4, affine=True)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        return self.relu(out + residual)


class Classifier_Module(nn.Module):
    def __init__(self, dilation_series, padding_series, NoLabels, in_channels=2048):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, NoLabels, kernel_size=3, stride=1, padding=padding,
                      dilation=dilation, bias=True)
            for dilation, padding in zip(dilation_series, padding_series, strict=True))

    def forward(self, x):
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class IshtResNet(nn.Module):
    def __init__(self, block, layers, NoLabels, rates=(6, 12, 18, 24), base=64):
        super().__init__()
        self.inplanes = base
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base, affine=True)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(block, base, layers[0])
        self.layer2 = self._make_layer(block, base * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, base * 4, layers[2], stride=1, dilation__=2)
        self.layer4 = self._make_layer(block, base * 8, layers[3], stride=1, dilation__=4)
        self.layer5 = Classifier_Module(rates, rates, NoLabels, in_channels=base * 32)

    def _make_layer(self, block, planes, blocks, stride=1, dilation__=1):
        downsample = None
        if (stride != 1 or self.inplanes != planes * block.expansion or dilation__ == 2
                or dilation__ == 4):
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride,
                          bias=False),
                nn.BatchNorm2d(planes * block.expansion, affine=True))
        layers = [block(self.inplanes, planes, stride, dilation_=dilation__,
                        downsample=downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation_=dilation__) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.layer5(x)


class MS_Deeplab(nn.Module):
    """isht7/pytorch-deeplab-resnet ``deeplab_resnet.py`` (commit 5d66f64) ``MS_Deeplab.forward``:
    for a square input of side n (it reads the height only), inputs of side int(0.75 n) + 1 and
    int(0.5 n) + 1 and logits resized to ``outS(n)`` (the scale-1 logits side), all by
    ``nn.UpsamplingBilinear2d`` (bilinear, align_corners=True; written here as the
    ``F.interpolate`` it stands for). It returns, in training and eval alike, [scale 1, 0.75
    upsampled, 0.5 at its own size, max]; its ``evalpyt.py`` takes the max (``output[3]``)."""

    def __init__(self, block, NoLabels, layers=(3, 4, 23, 3), rates=(6, 12, 18, 24), base=64):
        super().__init__()
        self.Scale = IshtResNet(block, list(layers), NoLabels, rates, base)

    def forward(self, x):
        def interp(tensor, side):
            return F.interpolate(tensor, size=(side, side), mode="bilinear", align_corners=True)

        input_size = x.size()[2]
        x2 = interp(x, int(input_size * 0.75) + 1)
        x3 = interp(x, int(input_size * 0.5) + 1)
        out = [self.Scale(x), interp(self.Scale(x2), _caffe_logits_size(input_size)),
               self.Scale(x3)]
        x3_out_interp = interp(out[2], _caffe_logits_size(input_size))
        out.append(torch.max(torch.max(out[0], out[1]), x3_out_interp))
        return out


# --- DeepLabV2's Caffe test net (the Interp layer; the MSC part of its prototxt) -----------------

def _caffe_interp_size(n: int, zoom: int | None = None, shrink: int | None = None) -> int:
    """Caffe Interp's output side from its factors (``interp_layer.cpp`` Reshape, e.g. in
    maweifei/deeplab-ver2 ``src/caffe/layers/interp_layer.cpp``): shrink first, then zoom."""
    if shrink is not None:
        n = (n - 1) // shrink + 1
    if zoom is not None:
        n = n + (n - 1) * (zoom - 1)
    return n


def _caffe_interp(x: torch.Tensor, zoom: int | None = None, shrink: int | None = None,
                  size: tuple[int, int] | None = None, coordinates=np.float32) -> torch.Tensor:
    """Caffe's Interp layer, to the size of its factors or to an explicit ``size`` (its
    ``height``/``width`` parameters): ``caffe_cpu_interp2`` (George Papandreou's
    ``src/caffe/util/interp.cpp``, e.g. in hszhao/PSPNet): the same size copies; otherwise
    source coordinate ``h1r = rheight * h2`` with ``rheight = float(h1 - 1) / (h2 - 1)``
    computed in float32 (``coordinates``), the taps ``int(h1r)`` and the next one (clamped at the
    edge), weights from ``h1r - int(h1r)``: bilinear with aligned corners."""
    height1, width1 = x.shape[-2:]
    height2, width2 = size or (_caffe_interp_size(height1, zoom, shrink),
                               _caffe_interp_size(width1, zoom, shrink))
    if (height1, width1) == (height2, width2):
        return x.clone()

    def taps(n1: int, n2: int):
        ratio = coordinates(n1 - 1) / coordinates(n2 - 1) if n2 > 1 else coordinates(0.0)
        position = ratio * np.arange(n2, dtype=coordinates)
        first = position.astype(np.int64)
        second = first + (first < n1 - 1)
        weight = torch.from_numpy((position - first.astype(coordinates)).astype(np.float64))
        return torch.from_numpy(first), torch.from_numpy(second), weight.to(x.dtype)

    top, bottom, down = taps(height1, height2)
    left, right, across = taps(width1, width2)
    rows = (x[..., top, :] * (1 - down)[:, None] + x[..., bottom, :] * down[:, None])
    return rows[..., left] * (1 - across) + rows[..., right] * across


def _caffe_msc_test_net(net: nn.Module, data: torch.Tensor, coordinates=np.float32) -> torch.Tensor:
    """The multi-scale part of DeepLabV2's ResNet-101 VOC12 test prototxt (isht7/pytorch-deeplab-
    resnet ``data/test.prototxt``, the released DeepLabV2 net): ``data_res05`` = Interp(shrink 2),
    ``data_res075`` = Interp(shrink 4, zoom 3), each through the network; ``fc1_voc12_res05_interp``
    = Interp(zoom 2), ``fc1_voc12_res075_interp`` = Interp(zoom 4, shrink 3); ``fc_fusion`` =
    Eltwise MAX, which needs the three the same size. Those logit factors give it for 321, 513
    and 161, not for 320 (0.75: 30 -> 37, not 41): there a prototxt must give the logits' Interp
    the size explicitly (``height``/``width``), as done here when the factors do not fit.
    ``coordinates``: the dtype of Interp's source coordinates (Caffe's: float32)."""
    interp = functools.partial(_caffe_interp, coordinates=coordinates)
    fc1 = net(data)
    fused_size = tuple(fc1.shape[2:])
    branches = [fc1]
    for (zoom, shrink), (logits_zoom, logits_shrink) in (((3, 4), (4, 3)), ((None, 2), (2, None))):
        logits = net(interp(data, zoom, shrink))
        by_factors = tuple(_caffe_interp_size(n, logits_zoom, logits_shrink)
                           for n in logits.shape[2:])
        branches.append(interp(logits, logits_zoom, logits_shrink,
                               size=None if by_factors == fused_size else fused_size))
    return torch.max(torch.max(branches[0], branches[1]), branches[2])


# --- helpers -------------------------------------------------------------------------------------

def _randomize(module: nn.Module) -> nn.Module:
    """Random weights, biases and BatchNorm statistics (moderate, so deep nets stay finite)."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Conv2d):
                fan_in = sub.weight[0].numel()
                sub.weight.normal_(0.0, math.sqrt(1.0 / fan_in))
                if sub.bias is not None:
                    sub.bias.normal_(0.0, 0.1)
            elif isinstance(sub, nn.BatchNorm2d):
                sub.weight.uniform_(0.3, 1.0)
                sub.bias.normal_(0.0, 0.1)
                sub.running_mean.normal_(0.0, 0.1)
                sub.running_var.uniform_(0.5, 2.0)
                sub.num_batches_tracked.fill_(1000)
    return module


def _caffe_logits_size(n: int) -> int:
    """isht7's ``outS``: stem conv, ceil-mode pool, stride-2 layer2."""
    stem = (n - 1) // 2 + 1
    pooled = math.ceil((stem - 1) / 2) + 1
    return (pooled - 1) // 2 + 1


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    assert actual.shape == expected.shape
    error = (actual - expected).norm() / expected.norm()
    assert error < rtol, f"relative error {error:.3g}"


def _model(backbone: str = "small", **kwargs) -> DeepLabV2:
    return DeepLabV2(5, backbone=backbone, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These ops are small: one intra-op thread is as fast on 2 cores, and far faster when other
    processes share the CPU (OpenMP barriers wait for descheduled threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet101() -> DeepLabV2:
    return _model("resnet101").eval()


# --- shapes, strides, dilations ------------------------------------------------------------------

@pytest.mark.parametrize("size, expected", [(321, 41), (513, 65), ((97, 130), (13, 17)),
                                            (33, 5), (96, 13)])
def test_small_output_stride_follows_caffe_arithmetic(size, expected):
    height, width = (size, size) if isinstance(size, int) else size
    model = _model().eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, height, width))
    assert logits.shape[:2] == (1, 5)
    assert tuple(logits.shape[2:]) == (_caffe_logits_size(height), _caffe_logits_size(width))
    assert tuple(logits.shape[2:]) == ((expected, expected) if isinstance(expected, int)
                                       else expected)
    assert model.output_stride == 8


@pytest.mark.parametrize("backbone", ["resnet50", "resnet101"])
def test_deep_backbones_output_size(backbone, resnet101):
    model = resnet101 if backbone == "resnet101" else _model(backbone).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 41, 57))
    assert logits.shape == (2, 5, _caffe_logits_size(41), _caffe_logits_size(57)) == (2, 5, 6, 8)
    assert model.backbone.out_channels == 2048


def test_backbone_layout_strides_and_dilations(resnet101):
    net = resnet101.backbone
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert net.conv1.bias is None
    assert (net.maxpool.kernel_size, net.maxpool.stride, net.maxpool.padding,
            net.maxpool.ceil_mode) == (3, 2, 1, True)
    geometry = {1: (1, 1, 64), 2: (2, 1, 128), 3: (1, 2, 256), 4: (1, 4, 512)}
    depths = [len(getattr(net, f"layer{i}")) for i in range(1, 5)]
    assert tuple(depths) == RESNET101
    for index, (stride, dilation, width) in geometry.items():
        for i, block in enumerate(getattr(net, f"layer{index}")):
            first = i == 0
            assert block.conv1.stride == ((stride, stride) if first else (1, 1))  # Caffe: 1x1
            assert block.conv2.stride == (1, 1)
            assert block.conv2.dilation == block.conv2.padding == (dilation, dilation)
            assert block.conv2.out_channels == width and block.conv3.out_channels == 4 * width
            assert isinstance(block.bn1, FrozenBatchNorm2d) and block.bn1.eps == 1e-5
            assert (block.downsample is not None) == first  # layer1 too
            if first:
                assert block.downsample[0].stride == (stride, stride)


def test_dilation_changes_the_function():
    """Setting layer4's dilation to 1 changes the output: the dilated convs are really used."""
    model = _model().eval()
    x = torch.randn(1, 3, 97, 97)
    with torch.no_grad():
        dilated = model(x)
        for block in model.backbone.layer4:
            block.conv2.dilation = block.conv2.padding = (1, 1)
        undilated = model(x)
    assert not torch.allclose(dilated, undilated, rtol=1e-3, atol=1e-5)


def test_fused_and_conv_heads_agree():
    conv = _model(fused_aspp=False, rates=(2, 4, 8, 12)).eval()
    fused = _model(fused_aspp=True, rates=(2, 4, 8, 12)).eval()
    with torch.no_grad():
        for branch in conv.aspp.convs:
            branch.weight.normal_(0, 0.05)
            branch.bias.normal_()
    fused.backbone.load_state_dict(conv.backbone.state_dict())
    fused.aspp.load_state_dict(ASPP.from_convs(conv.aspp.convs).state_dict())
    assert isinstance(fused.aspp, ASPP) and isinstance(conv.aspp, ConvASPP)
    x = torch.randn(2, 3, 121, 121)
    with torch.no_grad():
        _assert_close(fused(x), conv(x), 1e-5)
    # load_weights converts between the two head layouts both ways.
    report = load_weights(conv, fused.state_dict())
    assert report.format == "deeplabv2" and report.complete
    with torch.no_grad():
        _assert_close(conv(x), fused(x), 1e-5)


def test_head_parameters_live_under_aspp():
    for fused in (True, False):
        model = MSC(_model(fused_aspp=fused, frozen_bn=False))
        head = {name for name, _ in model.named_parameters() if "aspp." in name}
        expected = {f"base.aspp.{name}" for name, _ in model.base.aspp.named_parameters()}
        assert head == expected and head


def test_conv_aspp_is_the_op_reference():
    """ConvASPP sums its convolutions with deeplabv2_ext's one ASPP reference: the same numbers
    as the fused op's reference on the stacked parameters (and as the convs called one by one)."""
    from deeplabv2_ext.aspp import aspp_reference

    head = ConvASPP(4, 3, (1, 3)).double()
    with torch.no_grad():
        for conv in head.convs:
            conv.weight.normal_()
            conv.bias.normal_()
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    stacked = (torch.stack([c.weight for c in head.convs]), torch.stack([c.bias for c in head.convs]))
    with torch.no_grad():
        out = head(x)
        assert torch.equal(out, aspp_reference(x, *stacked, head.rates))
        assert torch.equal(out, head.convs[0](x) + head.convs[1](x))


@pytest.mark.parametrize("rates, error, match", [
    ((), ValueError, "non-empty"),
    ((6, 0), ValueError, "positive"),
    ((6, 1.5), TypeError, "sequence of ints"),
    ((6, 2**31), ValueError, "too large"),
    ((6, 2**70), ValueError, "too large"),  # beyond int64: refused before it reaches the op
])
def test_heads_check_rates_alike(rates, error, match):
    """The fused head, the reference head and DeepLabV2 check rates with the op's one check;
    DeepLabV2 reports a rate of the wrong type as a ValueError, like its other bad arguments."""
    for head in (ASPP, ConvASPP):
        with pytest.raises(error, match=match):
            head(4, 3, rates)
    with pytest.raises(ValueError, match=match):
        _model(rates=rates)


def test_conv_aspp_init():
    head = ConvASPP(64, 7, (6, 12))
    assert [conv.dilation for conv in head.convs] == [(6, 6), (12, 12)]
    weights = torch.cat([conv.weight.flatten() for conv in head.convs])
    assert abs(weights.std().item() - 0.01) < 0.001
    assert all(torch.all(conv.bias == 0) for conv in head.convs)


# --- MSC -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("resizing, size, expected", [
    ("caffe", (321, 513), {0.75: (241, 385), 0.5: (161, 257), 1.25: (401, 641)}),
    ("caffe", (161, 320), {0.75: (121, 238), 0.5: (81, 160)}),
    ("kazuto1011", (161, 320), {0.75: (120, 240), 0.5: (80, 160), 1.5: (241, 480)}),
    ("isht7", (161, 320), {0.75: (121, 241), 0.5: (81, 161)}),
])
def test_scaled_size_of_each_convention(resizing, size, expected):
    for scale, want in expected.items():
        assert scaled_size(size, scale, resizing) == want
        assert resize_input(torch.zeros(1, 1, *size), scale, resizing).shape[2:] == want
        if resizing == "caffe":  # what Caffe's Interp layer computes
            zoom, shrink = Fraction(scale).numerator, Fraction(scale).denominator
            assert want == tuple(_caffe_interp_size(n, zoom, shrink) for n in size)
    assert scaled_size(size, 1.0, resizing) == size


def test_resizing_rejects_unknown_names_and_non_caffe_scales():
    assert RESIZINGS == ("caffe", "kazuto1011", "isht7")
    for call in (lambda: MSC(_model(), resizing="kazuto"),
                 lambda: DeepLabV2(5, backbone="small", resizing="Caffe"),
                 lambda: scaled_size((9, 9), 0.5, "torch"),
                 lambda: set_resizing(_model(), "isht")):
        known = r"resizing .*known: \['caffe', 'kazuto1011', 'isht7'\]"
        with pytest.raises(ValueError, match=known):
            call()
    with pytest.raises(ValueError, match="Interp"):
        MSC(_model(), (1.0, 0.7071), resizing="caffe")
    msc = MSC(_model(), (1.0, 0.7071), resizing="kazuto1011")
    with pytest.raises(ValueError, match="Interp"):
        set_resizing(msc, "caffe")
    assert msc.resizing == msc.base.resizing == "kazuto1011"


@functools.cache
def _photograph(size: int) -> torch.Tensor:
    """scikit-image's astronaut resized to size x size, Caffe-preprocessed, float64 [1, 3, n, n]."""
    from skimage import data

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    photo = F.interpolate(photo, size=(size, size), mode="bilinear", antialias=True)
    return preprocess(photo, "caffe").double()


def _msc_case(reference: str, size: int, training: bool):
    """(our MSC, the reference forward, input) for a randomised float64 small network and a
    photograph: ours is loaded from the reference's own state dict (``load_weights``)."""
    rates = (6, 12, 18, 24)
    if reference == "caffe":
        _, net = _reference("kazuto1011", SMALL, 16, rates)
        ours = MSC(_model(rates=rates).double(), (1.0, 0.75, 0.5), resizing="caffe")
        load_weights(ours, net.state_dict())
        forward = functools.partial(_caffe_msc_test_net, net)
    else:
        name = "kazuto1011-msc" if reference == "kazuto1011" else "isht7"
        checkpoint, _ = _reference(name, SMALL, 16, rates)
        ours = MSC(_model(rates=rates).double(), (1.0, 0.75, 0.5), resizing=reference)
        assert load_weights(ours, checkpoint.state_dict()).complete
        if reference == "kazuto1011":
            checkpoint = KazutoMSC(checkpoint.base, scales=(0.75, 0.5))
        forward = checkpoint.eval()
        if training:  # a copy: the cached reference stays in eval mode for the other tests
            forward = copy.deepcopy(checkpoint).train()
            for module in forward.modules():  # kazuto1011's freeze_bn(), isht7's model.eval()
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
    ours.train(training)
    return ours, forward, _photograph(size)


@pytest.mark.parametrize("size", [161, 320, 321, 513])
@pytest.mark.parametrize("reference", ["caffe", "kazuto1011", "isht7"])
def test_msc_equals_each_reference_in_eval(reference, size):
    """Eval mode (the fused max). Caffe's Interp computes its sampling coordinates in float32:
    that alone parts it from our float64 result (up to 2.5e-6 here; about 1e-5 on noise
    images); with float64 coordinates the two agree to rounding."""
    ours, forward, x = _msc_case(reference, size, training=False)
    with torch.no_grad():
        result = ours(x)
        expected = forward(x)
        if reference == "isht7":
            expected = expected[3]  # what its evalpyt.py evaluates
        _assert_close(result, expected, 1e-5)
        if reference == "caffe":
            _assert_close(result, forward(x, coordinates=np.float64), 1e-12)
    assert expected.shape[2:] == (_caffe_logits_size(size),) * 2


@pytest.mark.parametrize("size", [161, 320])
@pytest.mark.parametrize("reference", ["kazuto1011", "isht7"])
def test_msc_equals_each_reference_in_training(reference, size):
    """In training mode (BatchNorm frozen, as both references train), the outputs (scale 1,
    0.75, 0.5, max) have each reference's sizes and values. DeepLabV2's Caffe training net is
    not re-implemented (its prototxt was not among the sources read): the caffe convention
    upsamples every scale."""
    ours, forward, x = _msc_case(reference, size, training=True)
    with torch.no_grad():
        expected = forward(x)
        outputs = ours(x)
    assert len(outputs) == len(expected) == 4
    for output, want in zip(outputs, expected, strict=True):
        _assert_close(output, want, 1e-5)


@pytest.mark.parametrize("scales", [(1.0, 0.75, 0.5), (0.5, 1.0, 1.25)])
def test_msc_training_and_eval_outputs(scales):
    """Caffe convention, any order of scales, a non-square input: each scale through Caffe's
    Interp (zoom/shrink from the scale: 1.25 is zoom 5, shrink 4), its logits resized with
    aligned corners to the scale-1 logits, all of them and their max returned in training."""
    base = _model()
    with torch.no_grad():
        base.aspp.bias.normal_()
    model = MSC(base, scales).train()
    assert model.resizing == "caffe" and "resizing='caffe'" in repr(model)
    x = torch.randn(2, 3, 73, 81)
    with torch.no_grad():
        outputs = model(x)
        reference = base(x)
        expected = []
        for scale in scales:
            zoom, shrink = Fraction(scale).numerator, Fraction(scale).denominator
            logits = base(_caffe_interp(x, zoom, shrink))
            # 73 x 81 is no size Caffe's Eltwise could fuse: resized to the size it needs.
            expected.append(F.interpolate(logits, size=reference.shape[2:], mode="bilinear",
                                          align_corners=True))
        assert reference.shape == (2, 5, 10, 11)
        fused = torch.max(torch.stack(expected), dim=0).values
    assert isinstance(outputs, list) and len(outputs) == len(scales) + 1
    for output, want in zip(outputs, expected + [fused], strict=True):
        _assert_close(output, want, 1e-5)
    assert torch.equal(outputs[scales.index(1.0)], reference)
    assert torch.equal(outputs[-1], torch.stack(outputs[:-1]).amax(0))
    model.eval()
    with torch.no_grad():
        evaluated = model(x)
    assert isinstance(evaluated, torch.Tensor)
    _assert_close(evaluated, fused, 1e-5)


@pytest.mark.parametrize("scales", [(), (0.75, 0.5), (1.0, 1.0), (1.0, -0.5)])
def test_msc_rejects_bad_scales(scales):
    with pytest.raises(ValueError, match="scales"):
        MSC(_model(), scales)


def test_resize_logits_corners():
    logits = torch.randn(1, 3, 5, 7, dtype=torch.float64)
    for resizing, aligned in (("caffe", True), ("kazuto1011", False), ("isht7", True)):
        up = resize_logits(logits, (33, 49), resizing)
        _assert_close(up, F.interpolate(logits, size=(33, 49), mode="bilinear",
                                        align_corners=aligned), 1e-12)
    _assert_close(resize_logits(logits, (33, 49), "caffe"), _caffe_interp(logits, zoom=8), 1e-6)


# --- weights: the published layouts --------------------------------------------------------------

@functools.cache
def _reference(name: str, layers: tuple[int, ...], base: int, rates: tuple[int, ...]):
    """(checkpoint module, its single-scale network) of a randomised float64 reference model (the
    same values whichever test asks first)."""
    with torch.random.fork_rng():
        torch.manual_seed(sum(layers) + base + sum(rates))
        return _randomized_reference(name, layers, base, rates)


def _randomized_reference(name: str, layers: tuple[int, ...], base: int,
                          rates: tuple[int, ...]):
    if name == "isht7":
        net = _randomize(MS_Deeplab(IshtBottleneck, 5, layers, rates, base)).double().eval()
        return net, net.Scale
    net = _randomize(KazutoDeepLabV2(5, layers, rates, base)).double().eval()
    return (KazutoMSC(net) if name == "kazuto1011-msc" else net), net


def test_reference_state_dict_layouts_resnet101():
    kazuto, _ = _reference("kazuto1011-msc", RESNET101, 64, (6, 12, 18, 24))
    isht7, _ = _reference("isht7", RESNET101, 64, (6, 12, 18, 24))
    kazuto_keys, isht7_keys = set(kazuto.state_dict()), set(isht7.state_dict())
    assert {"base.layer1.conv1.conv.weight", "base.layer1.conv1.bn.running_mean",
            "base.layer2.block1.reduce.conv.weight", "base.layer2.block1.shortcut.bn.running_var",
            "base.layer4.block23.increase.bn.weight", "base.layer5.block3.conv3x3.conv.weight",
            "base.aspp.c0.weight", "base.aspp.c3.bias"} <= kazuto_keys
    assert "base.layer2.block2.shortcut.conv.weight" not in kazuto_keys
    assert {"Scale.conv1.weight", "Scale.bn1.running_var", "Scale.layer1.0.downsample.0.weight",
            "Scale.layer1.0.downsample.1.running_mean", "Scale.layer3.22.conv2.weight",
            "Scale.layer4.2.bn3.bias", "Scale.layer5.conv2d_list.0.weight",
            "Scale.layer5.conv2d_list.3.bias"} <= isht7_keys
    # 104 convolutions, 104 BatchNorms (5 entries each), 4 head branches (2 each).
    assert len(kazuto_keys) == len(isht7_keys) == 104 + 104 * 5 + 8
    model = _model("resnet101")
    for state in (kazuto.state_dict(), isht7.state_dict()):
        report = load_weights(model, state)
        assert report.complete and len(report.loaded) == len(model.state_dict())
        assert len(report.ignored) == 104  # num_batches_tracked: our BN is frozen


# (reference, its layers, its base width, rates, input size, our backbone, our head fused?).
# ResNet-101 at 33x33 checks the full layout; "small" at 201x201 (26x26 logits) makes every
# ASPP rate reach past the centre tap, so a misplaced head branch would show.
REFERENCE_CASES = [
    ("kazuto1011-msc", RESNET101, 64, (6, 12, 18, 24), 33, "resnet101", True),
    ("isht7", RESNET101, 64, (6, 12, 18, 24), 33, "resnet101", False),
    ("kazuto1011-msc", SMALL, 16, (6, 12, 18, 24), 201, "small", True),
    ("kazuto1011-msc", SMALL, 16, (6, 12, 18, 24), 201, "small", False),
    ("kazuto1011", SMALL, 16, (2, 5, 9, 13), 201, "small", True),
    ("isht7", SMALL, 16, (6, 12, 18, 24), 201, "small", True),
    ("isht7", SMALL, 16, (6, 12, 18, 24), 201, "small", False),
]


@pytest.mark.parametrize("reference, layers, base, rates, size, backbone, fused",
                         REFERENCE_CASES)
def test_published_checkpoints_give_the_reference_logits(reference, layers, base, rates, size,
                                                         backbone, fused):
    checkpoint, single_scale = _reference(reference, layers, base, rates)
    model = _model(backbone, rates=rates, fused_aspp=fused, frozen_bn=fused).double()
    wrapped = MSC(model) if reference == "kazuto1011-msc" else model
    report = load_weights(wrapped, checkpoint.state_dict())
    assert report.format == reference.removesuffix("-msc") and report.complete
    x = torch.randn(1 if backbone == "resnet101" else 2, 3, size, size, dtype=torch.float64) * 50
    model.eval()
    with torch.no_grad():
        expected = single_scale(x)
        _assert_close(model(x), expected, 1e-9)
    assert expected.shape[2:] == (_caffe_logits_size(size),) * 2


def _torchvision_state_dict(layers, classes=1000):
    """A torchvision ResNet state dict, by name and shape (torchvision.models.resnet)."""
    state = {"conv1.weight": torch.randn(64, 3, 7, 7)}

    def bn(prefix, channels):
        state.update({f"{prefix}.weight": torch.rand(channels) + 0.5,
                      f"{prefix}.bias": torch.randn(channels),
                      f"{prefix}.running_mean": torch.randn(channels),
                      f"{prefix}.running_var": torch.rand(channels) + 0.5,
                      f"{prefix}.num_batches_tracked": torch.tensor(7)})

    bn("bn1", 64)
    inplanes = 64
    for index, depth in enumerate(layers, start=1):
        planes = 64 * 2 ** (index - 1)
        for i in range(depth):
            prefix = f"layer{index}.{i}"
            state[f"{prefix}.conv1.weight"] = torch.randn(planes, inplanes, 1, 1)
            bn(f"{prefix}.bn1", planes)
            state[f"{prefix}.conv2.weight"] = torch.randn(planes, planes, 3, 3)
            bn(f"{prefix}.bn2", planes)
            state[f"{prefix}.conv3.weight"] = torch.randn(planes * 4, planes, 1, 1)
            bn(f"{prefix}.bn3", planes * 4)
            if i == 0:
                state[f"{prefix}.downsample.0.weight"] = torch.randn(planes * 4, inplanes, 1, 1)
                bn(f"{prefix}.downsample.1", planes * 4)
            inplanes = planes * 4
    state["fc.weight"] = torch.randn(classes, 2048)
    state["fc.bias"] = torch.randn(classes)
    return state


def test_torchvision_checkpoint_loads_the_backbone_only(resnet101):
    state = _torchvision_state_dict(RESNET101)
    assert len(state) == 626 and "layer4.2.bn3.running_var" in state
    model = MSC(_model("resnet101", frozen_bn=False))
    head_before = {key: value.clone() for key, value in model.base.aspp.state_dict().items()}
    report = load_weights(model, {"state_dict": state})
    assert report.format == "torchvision" and report.complete
    assert sorted(report.kept) == ["base.aspp.bias", "base.aspp.weight"]
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == 626 - 2
    ours = model.base.backbone.state_dict()
    assert all(torch.equal(ours[key], value) for key, value in state.items()
               if not key.startswith("fc."))
    for key, value in model.base.aspp.state_dict().items():
        assert torch.equal(value, head_before[key])
    # Into a frozen-BN model, num_batches_tracked is ignored as well.
    frozen = load_weights(resnet101, state)
    assert frozen.complete and len(frozen.ignored) == 2 + 104


# --- weights: bad checkpoints --------------------------------------------------------------------

_UNPICKLED = []


def _record_unpickling():
    _UNPICKLED.append(True)
    return {}


class _Payload:
    """Unpickling it would run _record_unpickling: weights_only must refuse it."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_bad_keys_are_all_listed_or_skipped():
    source = _model()
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.normal_()
    state = source.state_dict()
    del state["backbone.layer2.0.conv1.weight"], state["backbone.bn1.running_var"]
    state["backbone.layer9.0.conv1.weight"] = torch.zeros(1)
    state["decoder.weight"] = torch.zeros(1)
    state["aspp.weight"] = torch.zeros(4, 6, 512, 3, 3)
    state["backbone.conv1.weight"] = torch.zeros(16, 3, 5, 5)

    target = _model()
    with pytest.raises(WeightsError) as error:
        load_weights(target, state)
    message = str(error.value)
    for expected in ["backbone.layer2.0.conv1.weight", "backbone.bn1.running_var",
                     "backbone.layer9.0.conv1.weight", "decoder.weight",
                     "aspp.weight: expected (4, 5, 512, 3, 3), got (4, 6, 512, 3, 3)",
                     "backbone.conv1.weight: expected (16, 3, 7, 7), got (16, 3, 5, 5)"]:
        assert expected in message
    assert "missing (2)" in message and "unexpected (2)" in message
    assert "wrong shape (2)" in message

    before = {key: value.clone() for key, value in target.state_dict().items()}
    report = load_weights(target, state, strict=False)
    assert sorted(report.missing) == ["backbone.bn1.running_var", "backbone.layer2.0.conv1.weight"]
    assert sorted(report.unexpected) == ["backbone.layer9.0.conv1.weight", "decoder.weight"]
    assert len(report.mismatched) == 2 and not report.complete
    after = target.state_dict()
    for key in ("backbone.layer2.0.conv1.weight", "aspp.weight", "backbone.conv1.weight"):
        assert torch.equal(after[key], before[key])
    assert torch.equal(after["aspp.bias"], state["aspp.bias"])
    assert torch.equal(after["backbone.layer4.0.conv2.weight"],
                       state["backbone.layer4.0.conv2.weight"])


def test_published_checkpoint_with_wrong_classes_and_depth():
    checkpoint, _ = _reference("kazuto1011-msc", (1, 1, 2, 1), 16, (6, 12, 18, 24))
    state = {f"module.{key}": value for key, value in checkpoint.state_dict().items()}
    with pytest.raises(WeightsError) as error:
        load_weights(_model(rates=(6, 12, 18)), state)
    message = str(error.value)
    assert ("backbone.layer3.1.conv1.weight (from module.base.layer4.block2.reduce.conv.weight)"
            in message)
    assert "aspp.weight: expected (3, 5, 512, 3, 3), got (4, 5, 512, 3, 3)" in message
    report = load_weights(_model(rates=(6, 12, 18), fused_aspp=False), state, strict=False)
    assert "aspp.convs.3.weight (from module.base.aspp.c3.weight)" in report.unexpected
    assert not report.missing and "aspp.convs.0.weight" in report.loaded


def test_checkpoint_files_that_are_not_state_dicts(tmp_path):
    model = _model()
    for name, payload in [("tensor.pt", torch.zeros(3)), ("list.pt", [torch.zeros(3)]),
                          ("mixed.pt", {"model": {"conv1.weight": torch.zeros(1), "epoch": 3}})]:
        path = tmp_path / name
        torch.save(payload, path)
        with pytest.raises(WeightsError, match=re.escape(str(path))):
            load_weights(model, path)
    path = tmp_path / "payload.pt"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(WeightsError, match="weights_only") as error:
        load_weights(model, str(path))
    assert str(path) in str(error.value) and not _UNPICKLED
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=re.escape(str(path))):
        load_weights(model, path)
    with pytest.raises(WeightsError, match="unrecognised checkpoint format"):
        load_weights(model, {"encoder.weight": torch.zeros(1)})


# --- preprocessing -------------------------------------------------------------------------------

def test_preprocess_caffe_and_torchvision():
    rgb = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 4)
    caffe = preprocess(rgb, "caffe")
    assert caffe.dtype == torch.float32 and caffe.shape == (3, 2, 4)
    expected = torch.tensor([30 - 104.008, 20 - 116.669, 10 - 122.675]).view(3, 1, 1)
    assert torch.allclose(caffe, expected.expand(3, 2, 4), atol=1e-4)
    tv = preprocess(rgb.float().unsqueeze(0), "torchvision")
    expected = torch.tensor([(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224,
                             (30 / 255 - 0.406) / 0.225]).view(1, 3, 1, 1)
    assert tv.shape == (1, 3, 2, 4) and torch.allclose(tv, expected.expand(1, 3, 2, 4), atol=1e-5)
    assert torch.equal(preprocess(rgb.double(), "caffe"), caffe)


@pytest.mark.parametrize("style, tolerance", [("caffe", 0.5), ("torchvision", 0.01)])
def test_padding_rgb_maps_to_zero(style, tolerance):
    colour = padding_rgb(style)
    assert all(isinstance(value, int) and 0 <= value <= 255 for value in colour)
    image = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)
    assert preprocess(image, style).abs().max() < tolerance
    assert colour == {"caffe": (123, 117, 104), "torchvision": (124, 116, 104)}[style]


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="caffe.*torchvision"):
        preprocess(torch.zeros(3, 2, 2), "bgr")
    with pytest.raises(ValueError, match="caffe.*torchvision"):
        padding_rgb("imagenet")
    with pytest.raises(ValueError, match="RGB"):
        preprocess(torch.zeros(1, 4, 2, 2), "caffe")
    assert STYLES == ("caffe", "torchvision")


# --- frozen BN, training -------------------------------------------------------------------------

def test_frozen_batchnorm_matches_batchnorm_eval_and_loads_its_state():
    bn = _randomize(nn.Sequential(nn.BatchNorm2d(6)))[0].eval()
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is accepted and dropped
    assert set(frozen.state_dict()) == set(bn.state_dict()) - {"num_batches_tracked"}
    assert not list(frozen.parameters())
    x = torch.randn(3, 6, 5, 5)
    frozen.train()
    _assert_close(frozen(x), bn(x), 1e-6)
    assert frozen(x.bfloat16()).dtype == torch.bfloat16  # stays in the activations' dtype


def test_frozen_bn_model_does_not_change_in_training():
    model = MSC(_model(), (1.0, 0.5))
    buffers = {key: value.clone() for key, value in model.named_buffers()}
    x = torch.randn(2, 3, 65, 65)
    model.eval()
    with torch.no_grad():
        evaluated = model(x)
    model.train()
    with torch.no_grad():
        trained = model(x)[-1]
    assert torch.equal(evaluated, trained)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sum(output.square().mean() for output in model(x)).backward()
    optimizer.step()
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key]), key
    assert not [name for name, _ in model.named_parameters() if ".bn" in name
                or "downsample.1" in name]


def test_backward_reaches_backbone_and_head():
    model = MSC(_model(frozen_bn=False)).train()
    x = torch.randn(2, 3, 49, 49)
    target = torch.randint(0, 5, (2, 7, 7))
    loss = sum(F.cross_entropy(output, target) for output in model(x))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# --- build_model ---------------------------------------------------------------------------------

def test_build_model_variants():
    msc = build_model(ModelConfig(backbone="small", num_classes=3, msc_scales=(1.0, 0.5)))
    assert isinstance(msc, MSC) and msc.scales == (1.0, 0.5)
    assert isinstance(msc.base.aspp, ASPP) and msc.base.aspp.rates == (6, 12, 18, 24)
    assert isinstance(msc.base.backbone.bn1, FrozenBatchNorm2d)
    for scales in ((), (1.0,)):
        single = build_model(ModelConfig(backbone="small", msc_scales=scales, fused_aspp=False,
                                         frozen_bn=False, rates=(2, 4, 8, 12)))
        assert isinstance(single, DeepLabV2) and isinstance(single.aspp, ConvASPP)
        assert isinstance(single.backbone.bn1, nn.BatchNorm2d)
        assert single.aspp.rates == (2, 4, 8, 12) and single.num_classes == 21
    assert BACKBONES == ("resnet101", "resnet50", "small")


@pytest.mark.parametrize("changes, match", [
    ({"backbone": "resnet18"}, "resnet101"),
    ({"rates": ()}, "rates"),
    ({"rates": (6, 0)}, "rates"),
    ({"num_classes": 0}, "num_classes"),
    ({"msc_scales": (0.5,)}, "1.0"),
    ({"preprocessing": "bgr"}, "caffe"),
])
def test_build_model_rejects_bad_configs(changes, match):
    config = dataclasses.replace(ModelConfig(backbone="small"), **changes)
    with pytest.raises(ValueError, match=match):
        build_model(config)


def test_build_model_loads_its_own_checkpoint(tmp_path):
    config = ModelConfig(backbone="small", num_classes=4, msc_scales=(1.0, 0.75))
    model = build_model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "iteration": 10}, path)
    for scales in ((1.0, 0.75), ()):
        loaded = build_model(ModelConfig(backbone="small", num_classes=4, msc_scales=scales,
                                         weights=str(path)))
        ours = loaded.state_dict()
        for key, value in model.state_dict().items():
            assert torch.equal(ours[key if scales else key.removeprefix("base.")], value)
    with pytest.raises(WeightsError, match="expected"):
        build_model(ModelConfig(backbone="small", num_classes=5, weights=str(path)))
    partial = build_model(ModelConfig(backbone="small", num_classes=5, weights=str(path),
                                      strict_weights=False))
    assert torch.equal(partial.base.backbone.conv1.weight, model.base.backbone.conv1.weight)


@pytest.mark.parametrize("layout, setting, expected, why", [
    ("kazuto1011-msc", None, "kazuto1011", "the kazuto1011 checkpoint layout"),
    ("isht7", None, "isht7", "the isht7 checkpoint layout"),
    ("isht7", "kazuto1011", "kazuto1011", "model.msc_resizing"),
    ("ours", None, "caffe", "the default"),
])
def test_build_model_takes_the_resizing_of_the_checkpoint_layout(tmp_path, caplog, layout,
                                                                  setting, expected, why):
    rates = (6, 12, 18, 24)
    if layout == "ours":
        state = _model(rates=rates).state_dict()
    else:
        state = _reference(layout, SMALL, 16, rates)[0].state_dict()
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    for scales in ((1.0, 0.75, 0.5), ()):
        config = ModelConfig(backbone="small", num_classes=5, rates=rates, msc_scales=scales,
                             weights=str(path), msc_resizing=setting)
        with caplog.at_level("INFO", logger="deeplabv2.models.deeplabv2"):
            caplog.clear()
            model = build_model(config)
        assert model.resizing == expected
        assert (model.base if scales else model).resizing == expected
        assert f"multi-scale resizing {expected} ({why}" in caplog.text
    # Without weights: the setting, else caffe.
    assert build_model(ModelConfig(backbone="small", msc_resizing=setting)).resizing == (
        setting or "caffe")


def test_build_model_rejects_a_misspelt_resizing():
    with pytest.raises(ValueError, match=r"model\.msc_resizing: unknown .*'kazuto'.*isht7"):
        build_model(ModelConfig(backbone="small", msc_resizing="kazuto"))
