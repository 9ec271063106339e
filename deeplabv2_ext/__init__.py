"""deeplabv2_ext: fused ASPP and DenseCRF operators for DeepLabV2.

>>> from deeplabv2_ext import ASPP, DenseCRF, aspp, dense_crf, permutohedral_filter
"""
from deeplabv2_ext._extension import cuda_kernels_available
from deeplabv2_ext.aspp import ASPP, aspp
from deeplabv2_ext.densecrf import DenseCRF, dense_crf, permutohedral_filter

__all__ = ["ASPP", "DenseCRF", "aspp", "cuda_kernels_available", "dense_crf",
           "permutohedral_filter"]
__version__ = "0.1.0"
