"""Build deeplabv2_ext and its native extension deeplabv2_ext._C.

The CUDA kernels are built when torch has CUDA and nvcc is found (or FORCE_CUDA=1); otherwise
the build is CPU-only. Install with `pip install --no-build-isolation .` so that the extension is
compiled against the torch that is already installed. Honours MAX_JOBS and TORCH_CUDA_ARCH_LIST
(default "8.0;9.0+PTX").
"""
from __future__ import annotations

import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def want_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    nvcc_found = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    return torch.version.cuda is not None and nvcc_found


def sources(with_cuda: bool) -> list[str]:
    cpp = sorted(glob.glob(os.path.join(CSRC, "**", "*.cpp"), recursive=True))
    cuda_glue = [path for path in cpp if os.sep + "cuda" + os.sep in path]
    host = [path for path in cpp if path not in cuda_glue]
    if not with_cuda:
        return host
    kernels = sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))
    return host + cuda_glue + kernels


def extension():
    with_cuda = want_cuda()
    cxx_flags = ["-O3"]
    link_flags = []
    if sys.platform.startswith("linux"):
        # ATen's at::parallel_for is an inline OpenMP loop in this torch build
        # (AT_PARALLEL_OPENMP): without -fopenmp our CPU kernels' parallel_for ran on one thread.
        # The extension then needs libgomp.so.1, which torch has already loaded.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    define_macros = []
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        define_macros.append(("DEEPLABV2_EXT_WITH_CUDA", None))
        return CUDAExtension(
            "deeplabv2_ext._C",
            sources(with_cuda=True),
            include_dirs=[os.path.join(ROOT, CSRC)],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags,
        )
    return CppExtension(
        "deeplabv2_ext._C",
        sources(with_cuda=False),
        include_dirs=[os.path.join(ROOT, CSRC)],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


def packages() -> list[str]:
    """The operator package and the DeepLabV2 application package (from python/deeplabv2)."""
    application = ["deeplabv2"] + [
        "deeplabv2." + name for name in find_packages(os.path.join(ROOT, "python", "deeplabv2"))
    ]
    return find_packages(include=["deeplabv2_ext", "deeplabv2_ext.*"]) + application


setup(
    name="deeplabv2_ext",
    version="0.1.0",
    description="Fused ASPP and GPU DenseCRF operators for DeepLabV2, and a thin DeepLabV2 on top",
    packages=packages(),
    package_dir={"deeplabv2": os.path.join("python", "deeplabv2")},
    package_data={"deeplabv2": ["configs/*.yaml"]},
    entry_points={"console_scripts": ["deeplabv2 = deeplabv2.cli:main"]},
    python_requires=">=3.10",
    install_requires=["numpy", "pillow", "pyyaml", "tqdm"],
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
