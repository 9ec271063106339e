"""Builds deeplabv2_ext's native extension deeplabv2_ext._C (the package's metadata is in
pyproject.toml; build_backend/ holds the PEP 517 backend that makes `pip install .` see the
installed torch).

The CUDA kernels are built when torch has CUDA and nvcc is found (or FORCE_CUDA=1); otherwise
the build is CPU-only. Honours MAX_JOBS and TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX"). The
build prints what it builds, and writes it to deeplabv2_ext/_build_info.py next to _C (read by
`python -m deeplabv2_ext`). Without torch only an sdist can be made.
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"
EXTENSION = "deeplabv2_ext._C"
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ModuleNotFoundError as error:
    if error.name != "torch":
        raise
    torch = None


def cuda_decision() -> tuple[bool, str]:
    """(build the CUDA kernels?, why), from FORCE_CUDA, torch's CUDA version and nvcc."""
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} has no CUDA"
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if nvcc is None or not os.path.exists(nvcc):
        return False, (f"torch has CUDA {torch.version.cuda} but nvcc was not found "
                       "(set CUDA_HOME, or FORCE_CUDA=1)")
    return True, f"torch has CUDA {torch.version.cuda}, nvcc: {nvcc}"


def sources(with_cuda: bool) -> list[str]:
    cpp = sorted(glob.glob(os.path.join(CSRC, "**", "*.cpp"), recursive=True))
    cuda_glue = [path for path in cpp if os.sep + "cuda" + os.sep in path]
    host = [path for path in cpp if path not in cuda_glue]
    if not with_cuda:
        return host
    kernels = sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))
    return host + cuda_glue + kernels


def extension(with_cuda: bool) -> Extension:
    cxx_flags = ["-O3"]
    link_flags = []
    if sys.platform.startswith("linux"):
        # ATen's at::parallel_for is an inline OpenMP loop in this torch build
        # (AT_PARALLEL_OPENMP): without -fopenmp our CPU kernels' parallel_for ran on one thread.
        # The extension then needs libgomp.so.1, which torch has already loaded.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    common = dict(include_dirs=[os.path.join(ROOT, CSRC)], extra_link_args=link_flags)
    if with_cuda:
        return CUDAExtension(
            EXTENSION,
            sources(with_cuda=True),
            define_macros=[("DEEPLABV2_EXT_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            **common,
        )
    return CppExtension(EXTENSION, sources(with_cuda=False), extra_compile_args={"cxx": cxx_flags},
                        **common)


if torch is not None:
    WITH_CUDA, WHY = cuda_decision()
    if WITH_CUDA:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)

    class BuildAndRecord(BuildExtension):
        """torch's BuildExtension that says what it builds and records it in _build_info.py."""

        def finalize_options(self) -> None:
            # Always build: without ninja, distutils would keep a _C newer than its sources that
            # was built against another torch or arch list, and _build_info.py would then lie.
            # ninja (the usual case) still recompiles only what changed.
            super().finalize_options()
            self.force = True

        def run(self) -> None:
            kernels = (f"CPU and CUDA kernels for TORCH_CUDA_ARCH_LIST="
                       f"{os.environ['TORCH_CUDA_ARCH_LIST']}" if WITH_CUDA else "CPU kernels only")
            print(f"deeplabv2_ext: compiling {EXTENSION} against torch {torch.__version__} "
                  f"({os.path.dirname(torch.__file__)}): {kernels} ({WHY}); "
                  f"MAX_JOBS={os.environ.get('MAX_JOBS', 'all cores')}", flush=True)
            super().run()
            info = {
                "TORCH_VERSION": torch.__version__,
                "CUDA_VERSION": torch.version.cuda if WITH_CUDA else None,
                "CUDA_ARCH_LIST": os.environ["TORCH_CUDA_ARCH_LIST"] if WITH_CUDA else None,
            }
            path = os.path.join(os.path.dirname(self.get_ext_fullpath(EXTENSION)), "_build_info.py")
            with open(path, "w") as f:
                f.write('"""What deeplabv2_ext._C was built with (written by setup.py)."""\n')
                f.writelines(f"{name} = {value!r}\n" for name, value in info.items())

    setup(ext_modules=[extension(WITH_CUDA)], cmdclass={"build_ext": BuildAndRecord})
else:
    # No torch: metadata and an sdist only. A build stops with the backend's message (pip and
    # python -m build stop there already, before this runs).
    sys.path.insert(0, os.path.join(ROOT, "build_backend"))
    from deeplabv2_ext_backend import MISSING_TORCH

    class NoTorch(build_ext):
        def run(self) -> None:
            raise SystemExit(MISSING_TORCH.format(python=sys.executable))

    setup(ext_modules=[Extension(EXTENSION, sources(with_cuda=True))], cmdclass={"build_ext": NoTorch})
