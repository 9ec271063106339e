"""What a bug report needs: ``python -m deeplabv2_ext`` prints :func:`report`."""
from __future__ import annotations

import os
import platform
import sys

import torch

import deeplabv2_ext
from deeplabv2_ext import _extension
from deeplabv2_ext._extension import build_info as _build_info


def cuda_kernels_line() -> str:
    """Whether _C holds CUDA kernels, and for which TORCH_CUDA_ARCH_LIST (as setup.py built it)."""
    if not _extension.cuda_kernels_available():
        return "not built (CPU kernels only)"
    if _build_info is None:
        return "built (architectures not recorded)"
    return (f"built with CUDA {_build_info.CUDA_VERSION} for "
            f"TORCH_CUDA_ARCH_LIST={_build_info.CUDA_ARCH_LIST}")


def collect() -> list[tuple[str, str]]:
    """(name, value) pairs: versions, the build of _C, the CPU loops picked, devices and threads."""
    built_against = _build_info.TORCH_VERSION if _build_info is not None else "not recorded"
    if _build_info is not None and built_against != torch.__version__:
        built_against += f" (MISMATCH: running with torch {torch.__version__}; reinstall)"
    rows = [
        ("deeplabv2_ext", f"{deeplabv2_ext.__version__} ({os.path.dirname(deeplabv2_ext.__file__)})"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda}, {os.path.dirname(torch.__file__)})"),
        ("_C built against torch", built_against),
        ("CUDA kernels", cuda_kernels_line()),
        ("CRF CPU loops", _extension.cpu_isa()),
        ("torch threads", f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} "
                          f"inter-op; {os.cpu_count()} CPUs; OMP_NUM_THREADS="
                          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}"),
        ("CUDA devices", cuda_devices_line()),
    ]
    return rows


def cuda_devices_line() -> str:
    """The visible CUDA devices with their compute capability, or why there are none."""
    if torch.version.cuda is None:
        return "none (CPU build of torch)"
    if not torch.cuda.is_available():
        return "none visible"
    names = []
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        names.append(f"{index}: {torch.cuda.get_device_name(index)} (sm_{major}{minor})")
    return "; ".join(names)


def report() -> str:
    """The :func:`collect` rows as aligned ``name: value`` lines."""
    rows = collect()
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}} : {value}" for name, value in rows)
