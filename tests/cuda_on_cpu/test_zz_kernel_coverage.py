"""Runs after the other CUDA-on-CPU tests (file order): every __global__ kernel of csrc/ was
launched by at least one of them, and never with more threads than its __launch_bounds__."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from . import conftest
from .harness import LAUNCHED

CSRC = Path(__file__).resolve().parents[2] / "csrc"
KERNEL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\(([^)]*)\)\s*)?(\w+)\s*\(")
CONSTANT = re.compile(r"constexpr\s+(?:int|int64_t|unsigned)\s+(\w+)\s*=\s*([^;]+);")


def device_sources() -> list[Path]:
    return sorted(list(CSRC.glob("**/*.cu")) + list(CSRC.glob("**/*.cuh")))


def declared_kernels() -> dict[str, str | None]:
    """Kernel name -> the text of its __launch_bounds__ max-threads argument (or None)."""
    kernels = {}
    for path in device_sources():
        for bounds, name in KERNEL.findall(path.read_text()):
            kernels[name] = bounds.split(",")[0].strip() if bounds else None
    return kernels


def evaluate_bound(expression: str) -> int:
    constants = {}
    for path in device_sources():
        constants.update(CONSTANT.findall(path.read_text()))
    text = expression
    for _ in range(4):  # constants defined through other constants
        text = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: constants.get(m.group(0), m.group(0)), text)
    assert re.fullmatch(r"[\d\s+*/()-]+", text), f"cannot evaluate __launch_bounds__({expression})"
    return int(eval(text))  # digits and operators only (checked above)


def base_name(instantiation: str) -> str:
    return instantiation.split("<", 1)[0].rsplit("::", 1)[-1]


def test_every_kernel_is_launched_within_its_launch_bounds(request):
    mine = [nodeid for nodeid in conftest.DESELECTED if "cuda_on_cpu" in nodeid]
    if mine or not LAUNCHED:
        pytest.skip("run the whole tests/cuda_on_cpu suite to check kernel coverage")
    declared = declared_kernels()
    assert len(declared) >= 19, sorted(declared)
    launched: dict[str, int] = {}
    for instantiation, threads in LAUNCHED.items():
        name = base_name(instantiation)
        launched[name] = max(launched.get(name, 0), threads)
    missing = sorted(set(declared) - set(launched))
    assert not missing, f"__global__ kernels of csrc/ no CUDA-on-CPU test launches: {missing}"
    for name, bounds in declared.items():
        if bounds is not None:
            limit = evaluate_bound(bounds)
            assert launched[name] <= limit, f"{name} launched with {launched[name]} threads > __launch_bounds__({limit})"
