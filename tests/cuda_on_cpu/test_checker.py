"""The CUDA-on-CPU checker catches what it claims to catch: kernels with planted bugs
(src/planted_kernels.cu) fail loudly, their correct twins pass."""
from __future__ import annotations

import pytest
import torch

from .harness import DeviceError, WorkerCrashed, from_bytes

THREADS = 64


def run_planted(dev, name: str, *, n: int = THREADS, threads: int = THREADS, initial: torch.Tensor | None = None,
                seed: int = 0, expect_success: bool = True):
    """Runs planted kernel `name` with one block of `threads` threads on n floats (NaN unless
    `initial` is given); returns the n floats after the launch and the result."""
    data = (initial if initial is not None else torch.full((n,), float("nan"))).to(torch.float32)
    result = dev.call("coc_planted", [("str", name), ("buf", data.numpy().tobytes()), ("i32", threads)], seed=seed,
                      expect_success=expect_success)
    assert result.rc != -1, f"unknown planted kernel {name}"
    return from_bytes(result.buffers[0], torch.float32, (n,)), result


def failure_of(dev, name: str, **kwargs) -> str:
    with pytest.raises(DeviceError) as info:
        run_planted(dev, name, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_missing_barrier_is_a_shared_memory_race(race_device, seed):
    report = failure_of(race_device, "missing_barrier", seed=seed)
    assert "data race" in report and "__shared__ values" in report and "neighbour_exchange<false>" in report
    assert "thread (" in report and "no barrier between" in report


def test_barrier_removes_the_race(race_device):
    out, _ = run_planted(race_device, "with_barrier")
    assert torch.equal(out, (torch.arange(THREADS) + 1).remainder(THREADS).float())


def test_uninitialised_shared_memory_reads_nan(asan_device, race_device):
    for dev in (asan_device, race_device):
        out, _ = run_planted(dev, "uninitialised_shared")
        assert torch.isnan(out).all()


def test_global_off_by_one(asan_device, race_device):
    with pytest.raises(WorkerCrashed, match="heap-buffer-overflow"):
        run_planted(asan_device, "global_off_by_one")
    assert "out-of-bounds write" in failure_of(race_device, "global_off_by_one")


def test_shared_off_by_one(asan_device, race_device):
    # UBSan sees the constant-size array; through a pointer ASan's redzone would.
    with pytest.raises(WorkerCrashed, match="heap-buffer-overflow|index 64 out of bounds"):
        run_planted(asan_device, "shared_off_by_one")
    report = failure_of(race_device, "shared_off_by_one")
    assert "out-of-bounds write" in report and "__shared__ values" in report


@pytest.mark.parametrize("name", ["divergent_barrier", "early_return_barrier"])
def test_barrier_not_reached_by_all_threads(asan_device, name):
    report = failure_of(asan_device, name)
    assert "__syncthreads()" in report and "not reached by every thread" in report
    assert name in report


def test_wrong_shuffle_mask(asan_device):
    report = failure_of(asan_device, "wrong_shuffle_mask")
    assert "__shfl_xor_sync" in report and "not in its mask 0x0000ffff" in report


def test_warp_shuffle_reduction(asan_device, race_device):
    expected = torch.tensor([sum(range(32))] * 32 + [sum(range(32, 64))] * 32, dtype=torch.float32)
    for dev in (asan_device, race_device):
        out, _ = run_planted(dev, "warp_sum")
        assert torch.equal(out, expected)


def test_conflicting_global_writes(race_device):
    report = failure_of(race_device, "global_write_conflict")
    assert "data race" in report and "in the same launch" in report


@pytest.mark.parametrize("seed", [0, 3])
def test_global_atomics_do_not_race(race_device, seed):
    out, _ = run_planted(race_device, "global_atomic_sum", initial=torch.zeros(THREADS), seed=seed)
    assert out[0].item() == THREADS and torch.equal(out[1:], torch.zeros(THREADS - 1))


def wmma_expected() -> torch.Tensor:
    i = torch.arange(16)
    return (i[:, None] + i[None, :]).float().flatten()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_wmma_store_is_layout_free(asan_device, seed):
    out, _ = run_planted(asan_device, "wmma_store", n=256, threads=32, seed=seed)
    assert torch.equal(out, wmma_expected())


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_wmma_layout_assumption_is_caught(asan_device, seed):
    out, result = run_planted(asan_device, "wmma_assume_layout", n=256, threads=32, seed=seed)
    assert not torch.equal(out, wmma_expected()), "a kernel that assumes the fragment layout must compute garbage"


def test_wmma_misaligned_pointer(asan_device):
    assert "256-bit aligned" in failure_of(asan_device, "wmma_misaligned", n=32, threads=32)


def test_trap_names_the_kernel_and_thread(asan_device):
    report = failure_of(asan_device, "trap")
    assert "__trap()" in report and "trap_one" in report and "thread (3,0,0)" in report


def test_static_shared_memory_limit(asan_device):
    assert "exceed the sm_90 limits" in failure_of(asan_device, "too_much_shared")


@pytest.mark.parametrize("name", ["block_too_large", "grid_y_too_large"])
def test_launch_configuration_limits(asan_device, name):
    _, result = run_planted(asan_device, name, expect_success=False)
    assert result.rc == 9  # cudaErrorInvalidConfiguration
    assert "refused" in result.failures


def test_cross_block_read_of_a_write_in_the_same_launch(race_device):
    report = failure_of(race_device, "cross_block_read", threads=32)
    assert "after a write by block 0" in report and "in the same launch" in report


def test_read_only_load_of_data_written_in_the_launch(race_device):
    assert "__ldg" in failure_of(race_device, "ldg_after_write", threads=32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_release_acquire_orders_plain_accesses(race_device, seed):
    out, _ = run_planted(race_device, "flag_release_acquire", seed=seed)
    assert out[2].item() == 7.0


def test_relaxed_flag_does_not_order_plain_accesses(race_device):
    report = failure_of(race_device, "flag_relaxed")
    assert "data race" in report and "not ordered before it" in report


def test_misaligned_atomic(asan_device):
    assert "misaligned 4-byte atomic" in failure_of(asan_device, "misaligned_atomic", threads=32)


def test_shuffle_width_follows_ptx(asan_device):
    out, _ = run_planted(asan_device, "shuffle_xor_width16", n=32, threads=32)
    assert torch.equal(out, torch.cat([torch.arange(16), torch.arange(16)]).float())


def test_spin_wait_without_sleep_ends(asan_device):
    out, _ = run_planted(asan_device, "spin_without_sleep", threads=32)
    assert out[1].item() == 1.0


def test_host_memory_is_not_device_memory(asan_device, race_device):
    _, result = run_planted(asan_device, "host_pointer_argument", threads=32, expect_success=False)
    assert result.rc == 700 and "does not point into device memory" in result.failures
    assert "not device memory" in failure_of(race_device, "host_pointer_in_struct", threads=32)


def test_dynamic_shared_memory_needs_the_opt_in_attribute(asan_device):
    _, result = run_planted(asan_device, "dynamic_smem_without_opt_in", expect_success=False)
    assert result.rc == 9 and "dynamic shared memory" in result.failures
    out, _ = run_planted(asan_device, "dynamic_smem_with_opt_in")
    assert out[0].item() == sum(range(32))
