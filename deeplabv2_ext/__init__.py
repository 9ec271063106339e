"""deeplabv2_ext: fused ASPP and DenseCRF operators for DeepLabV2.

>>> from deeplabv2_ext import ASPP, aspp
"""
from deeplabv2_ext._extension import cuda_kernels_available
from deeplabv2_ext.aspp import ASPP, aspp

__all__ = ["ASPP", "aspp", "cuda_kernels_available"]
__version__ = "0.1.0"
