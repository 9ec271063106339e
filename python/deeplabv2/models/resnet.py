"""The Caffe-style ResNet backbone of DeepLabV2 (output stride 8), named like torchvision's ResNet.

Differences from torchvision's ResNet (v1.5), all as in the DeepLabV2 Caffe release:

* the stride of a bottleneck sits in its first 1x1 convolution, not in the 3x3 one;
* the stem max-pool rounds up (``ceil_mode=True``), so a 321x321 input gives 81x81 after the stem
  and 41x41 at stride 8 (513 -> 129 -> 65);
* layer3 and layer4 keep stride 1 and dilate their 3x3 convolutions by 2 and 4 instead
  (output stride 8, 2048 channels for ResNet-50/101);
* the first block of every layer has a projection shortcut, layer1's included.

Module and parameter names follow torchvision (``conv1, bn1, layer1.0.conv1, ...,
layer4.2.downsample.1``), and every parameter shape is the same, so a torchvision ImageNet
state dict loads by name (see ``deeplabv2.models.weights``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class BackboneSpec:
    """Depths (bottlenecks per layer), stem width and bottleneck mid widths (outputs are 4x)."""

    depths: tuple[int, int, int, int]
    stem_channels: int
    widths: tuple[int, int, int, int]


EXPANSION = 4
BACKBONE_SPECS: dict[str, BackboneSpec] = {
    "resnet101": BackboneSpec((3, 4, 23, 3), 64, (64, 128, 256, 512)),
    "resnet50": BackboneSpec((3, 4, 6, 3), 64, (64, 128, 256, 512)),
    # A light variant for CPU demos and tests: one bottleneck per layer, a quarter of the widths.
    "small": BackboneSpec((1, 1, 1, 1), 16, (16, 32, 64, 128)),
}
BACKBONES: tuple[str, ...] = tuple(BACKBONE_SPECS)

# (stride, dilation) of layer1..layer4: output stride 8.
_LAYER_GEOMETRY = ((1, 1), (2, 1), (1, 2), (1, 4))


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (DeepLabV2 trains with BN frozen).

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers, so the state dict
    keys are those of ``nn.BatchNorm2d`` (a ``num_batches_tracked`` entry is accepted on load and
    dropped). It computes ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` in
    both train() and eval() mode and has no trainable parameters.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, input: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        # In the input's dtype, so that under autocast the activations stay in half precision.
        scale, shift = (t.to(input.dtype).view(1, -1, 1, 1) for t in (scale, shift))
        return input * scale + shift

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _norm(channels: int, frozen: bool) -> nn.Module:
    return FrozenBatchNorm2d(channels) if frozen else nn.BatchNorm2d(channels, eps=1e-5)


class Bottleneck(nn.Module):
    """1x1 (stride) -> 3x3 (dilation) -> 1x1 (x4 channels), each with BN; residual; ReLU."""

    def __init__(self, in_channels: int, mid_channels: int, stride: int, dilation: int,
                 projection: bool, frozen_bn: bool) -> None:
        super().__init__()
        out_channels = mid_channels * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, stride=stride, bias=False)
        self.bn1 = _norm(mid_channels, frozen_bn)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = _norm(mid_channels, frozen_bn)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = _norm(out_channels, frozen_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                          _norm(out_channels, frozen_bn))
            if projection else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """DeepLabV2's dilated ResNet: [N, 3, H, W] -> [N, out_channels, h, w] at output stride 8.

    The Caffe size arithmetic: the stem conv gives ``a = floor((H - 1) / 2) + 1``, the max-pool
    ``b = ceil((a - 1) / 2) + 1`` and layer2 ``h = floor((b - 1) / 2) + 1``; layer3/4 keep it.
    321 -> 161 -> 81 -> 41, 513 -> 257 -> 129 -> 65.

    Args:
        name: one of ``BACKBONES`` ("resnet101", "resnet50", "small").
        frozen_bn: FrozenBatchNorm2d (statistics and affine fixed) instead of nn.BatchNorm2d.
    """

    def __init__(self, name: str = "resnet101", frozen_bn: bool = True) -> None:
        super().__init__()
        if name not in BACKBONE_SPECS:
            raise ValueError(f"unknown backbone {name!r}; known: {list(BACKBONES)}")
        spec = BACKBONE_SPECS[name]
        self.name = name
        self.conv1 = nn.Conv2d(3, spec.stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(spec.stem_channels, frozen_bn)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        in_channels = spec.stem_channels
        for index, (depth, width, (stride, dilation)) in enumerate(
                zip(spec.depths, spec.widths, _LAYER_GEOMETRY, strict=True), start=1):
            blocks = [
                Bottleneck(in_channels if i == 0 else width * EXPANSION, width,
                           stride=stride if i == 0 else 1, dilation=dilation,
                           projection=i == 0, frozen_bn=frozen_bn)
                for i in range(depth)
            ]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
            in_channels = width * EXPANSION
        self.out_channels = in_channels
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
