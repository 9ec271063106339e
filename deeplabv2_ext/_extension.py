"""Loads the native extension, which registers the torch.ops.deeplabv2_ext operators, and
reports how it was built and which code paths its CPU kernels choose."""
from __future__ import annotations

from collections.abc import Sequence

import torch

try:  # written by setup.py next to _C; absent when _C was not built by setup.py
    from deeplabv2_ext import _build_info as build_info
except ImportError:
    build_info = None

try:
    from deeplabv2_ext import _C  # noqa: F401  (importing registers the ops)
except ImportError as error:  # e.g. an undefined symbol: _C was compiled against another torch
    if build_info is not None and build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"deeplabv2_ext._C was built against torch {build_info.TORCH_VERSION}, and this is "
            f"torch {torch.__version__}: run `pip install .` again to rebuild it against this "
            f"torch ({error})") from error
    raise


def cuda_kernels_available() -> bool:
    """Whether this build of deeplabv2_ext contains its CUDA kernels."""
    return bool(torch.ops.deeplabv2_ext.cuda_kernels_available())


def cpu_isa() -> str:
    """The build of the CPU DenseCRF loops (lattice filter, mean-field) this process uses:
    ``"avx2+fma"`` when the CPU has AVX2 and FMA, else ``"baseline"`` (x86-64 SSE2, or the
    portable code); ``DEEPLABV2_EXT_CPU_ISA=default`` in the environment, read once per process,
    forces ``"baseline"``."""
    return _C.cpu_isa()


def cpu_lattice_neighbour_searches(features: torch.Tensor) -> list[str]:
    """For each image of ``features`` [N, D, P] (float32, CPU), the blur-neighbour search the
    CPU ``permutohedral_lattice`` runs: ``"merge"`` (sorted packed keys, the usual case) or
    ``"hash"`` (keys too wide to pack into 64 bits, or ``DEEPLABV2_EXT_LATTICE_NEIGHBOURS=hash``
    in the environment). Asks the kernel's own code; used by the tests."""
    return _C.cpu_lattice_neighbour_searches(features)


def cpu_aspp_row_blocks(input: torch.Tensor, weight: torch.Tensor,
                        rates: Sequence[int]) -> list[tuple[int, int, int]]:
    """The row blocks the CPU ``aspp`` kernels (forward and backward) visit for each image of
    ``input`` [N, C, H, W] with ``weight`` [R, K, C, 3, 3] and ``rates``, in order:
    ``(dy, first source row, end source row)``. A row group (one dy) split into several blocks
    is the path taken when its buffer would exceed the kernel's scratch cap. Asks the kernel's
    own block loop (the tensors' data is not read); used by the tests."""
    return _C.cpu_aspp_row_blocks(input, weight, list(rates))
