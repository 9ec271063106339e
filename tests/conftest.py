"""Shared pytest configuration for the deeplabv2_ext correctness suite.

* Tests (or parametrisations) marked ``cuda`` are skipped when no CUDA device is usable.
* Every test starts from a fixed RNG seed and restores the global TF32 / determinism flags
  it may have touched, so tests are order-independent.
"""
import random

import pytest
import torch


def _cuda_usable():
    try:
        return torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception:  # pragma: no cover - broken driver
        return False


CUDA_AVAILABLE = _cuda_usable()


def pytest_report_header(config):
    lines = [f"torch {torch.__version__}, CUDA available: {CUDA_AVAILABLE}"]
    if CUDA_AVAILABLE:
        lines.append(f"CUDA device: {torch.cuda.get_device_name(0)} (torch CUDA {torch.version.cuda})")
    try:
        import deeplabv2_ext

        lines.append(
            f"deeplabv2_ext from {getattr(deeplabv2_ext, '__file__', '?')}, "
            f"cuda_kernels_available={deeplabv2_ext.cuda_kernels_available()}"
        )
    except Exception as exc:  # reported again (as errors) by the tests themselves
        lines.append(f"deeplabv2_ext import failed: {exc!r}")
    return lines


def pytest_collection_modifyitems(config, items):
    if CUDA_AVAILABLE:
        return
    skip_cuda = pytest.mark.skip(reason="CUDA not available")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed_and_restore_flags():
    torch.manual_seed(0)
    random.seed(0)
    saved = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    yield
    (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    ) = saved
