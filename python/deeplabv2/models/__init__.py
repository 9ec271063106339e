"""The DeepLabV2 network, multi-scale inputs and their resizing conventions, checkpoint loading
and input preprocessing.

>>> from deeplabv2.models import build_model, preprocess
"""
from deeplabv2.models.deeplabv2 import (
    MSC,
    ConvASPP,
    DeepLabV2,
    build_model,
    set_resizing,
)
from deeplabv2.models.preprocessing import STYLES, padding_rgb, preprocess
from deeplabv2.models.resizing import (
    DEFAULT_RESIZING,
    RESIZINGS,
    resize_input,
    resize_logits,
    scaled_size,
)
from deeplabv2.models.resnet import BACKBONES, FrozenBatchNorm2d, ResNet
from deeplabv2.models.weights import LoadReport, WeightsError, load_weights

__all__ = [
    "BACKBONES",
    "DEFAULT_RESIZING",
    "MSC",
    "RESIZINGS",
    "STYLES",
    "ConvASPP",
    "DeepLabV2",
    "FrozenBatchNorm2d",
    "LoadReport",
    "ResNet",
    "WeightsError",
    "build_model",
    "load_weights",
    "padding_rgb",
    "preprocess",
    "resize_input",
    "resize_logits",
    "scaled_size",
    "set_resizing",
]
