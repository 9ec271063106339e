"""Fixtures of the CUDA-on-CPU tests: one worker per library variant for the whole session."""
import pytest

from .harness import Device


@pytest.fixture(scope="session")
def asan_device():
    """The real launchers under AddressSanitizer + UBSan (built on first use)."""
    dev = Device("asan")
    yield dev
    dev.close()


@pytest.fixture(scope="session")
def race_device():
    """The real launchers with the barrier-aware race detector (built on first use)."""
    dev = Device("race")
    yield dev
    dev.close()


DESELECTED: list[str] = []


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda_on_cpu" in item.nodeid:
            item.add_marker(pytest.mark.cuda_on_cpu)


def pytest_deselected(items):
    """Remembered so the kernel-coverage test knows whether the whole suite ran."""
    DESELECTED.extend(item.nodeid for item in items)
