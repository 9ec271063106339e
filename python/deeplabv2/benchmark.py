"""`deeplabv2 benchmark`: training-step and inference time of the whole DeepLabV2 with the fused
ASPP head against the same network with the nn.Conv2d ASPP head, in the same run.

Timing method: warm-up runs, then `repeats` runs each bracketed by device synchronisation
(`torch.cuda.synchronize` on CUDA); the median is reported with the ratio conv / fused
(> 1 means the fused head is faster)."""
from __future__ import annotations

import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from deeplabv2.evaluate import synchronize
from deeplabv2.models import MSC, DeepLabV2, load_weights
from deeplabv2.train import segmentation_loss

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class BenchmarkSetup:
    """The network and input of one benchmark."""

    backbone: str = "resnet101"
    num_classes: int = 21
    rates: tuple[int, ...] = (6, 12, 18, 24)
    msc_scales: tuple[float, ...] = (1.0,)
    size: int = 513
    batch: int = 1
    dtype: str = "bf16"
    repeats: int = 10
    warmup: int = 3


@dataclass(frozen=True)
class Timing:
    """Median milliseconds of one head and mode."""

    head: str
    mode: str  # "train step" (forward, loss, backward, SGD step) or "inference"
    median_ms: float
    runs_ms: tuple[float, ...]
    peak_memory_mib: float | None


def _time(run: Callable[[], None], device: torch.device, setup: BenchmarkSetup) -> list[float]:
    for _ in range(setup.warmup):
        run()
    times = []
    for _ in range(setup.repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return times


def _network(setup: BenchmarkSetup, fused: bool) -> nn.Module:
    base = DeepLabV2(
        setup.num_classes, setup.backbone, setup.rates, frozen_bn=True, fused_aspp=fused
    )
    return MSC(base, setup.msc_scales) if len(setup.msc_scales) > 1 else base


def run_benchmark(setup: BenchmarkSetup, device: torch.device) -> list[Timing]:
    """Times both heads, training step and inference, on `device`."""
    if setup.dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(AUTOCAST_DTYPES)}, got {setup.dtype!r}")
    torch.manual_seed(0)
    fused = _network(setup, fused=True).to(device)
    conv = _network(setup, fused=False).to(device)
    load_weights(conv, fused.state_dict())  # same weights: the head converted to nn.Conv2d
    images = torch.randn(setup.batch, 3, setup.size, setup.size, device=device)
    labels = torch.randint(0, setup.num_classes, (setup.batch, setup.size, setup.size), device=device)
    autocast_dtype = AUTOCAST_DTYPES[setup.dtype]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def autocast():
        return torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        )

    timings = []
    for head, network in (("fused ASPP", fused), ("nn.Conv2d ASPP", conv)):
        optimizer = torch.optim.SGD(network.parameters(), lr=1e-6, momentum=0.9)

        def train_step() -> None:
            network.train()
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = segmentation_loss(network(images), labels)
            loss.backward()
            optimizer.step()

        @torch.no_grad()
        def inference() -> None:
            network.eval()
            with autocast():
                network(images)

        for mode, run in (("train step", train_step), ("inference", inference)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            runs = _time(run, device, setup)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            timings.append(Timing(head, mode, statistics.median(runs), tuple(runs), peak))
    return timings


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _project_commit(directory: Path) -> str | None:
    """HEAD of the deeplabv2_ext checkout containing `directory` (None if it is not in one)."""
    try:
        top = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    is_project = len(top) == 2 and (Path(top[0]) / "csrc" / "aspp").is_dir()
    return top[1] if is_project else None


def environment(device: torch.device) -> dict[str, str | None]:
    """Device name, versions and the git commit, recorded with every result."""
    candidates = (Path.cwd(), Path(__file__).resolve().parent)
    commit = next((found for found in map(_project_commit, candidates) if found), None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": str(torch.get_num_threads()),
        "commit": commit,
    }


def summary(timings: list[Timing]) -> str:
    """A table of medians and the conv/fused ratios."""
    lines = [f"{'mode':<11} {'head':<15} {'median ms':>10} {'peak MiB':>9}"]
    for timing in timings:
        peak = "-" if timing.peak_memory_mib is None else f"{timing.peak_memory_mib:.0f}"
        lines.append(f"{timing.mode:<11} {timing.head:<15} {timing.median_ms:>10.1f} {peak:>9}")
    for mode in ("train step", "inference"):
        by_head = {timing.head: timing.median_ms for timing in timings if timing.mode == mode}
        ratio = by_head["nn.Conv2d ASPP"] / by_head["fused ASPP"]
        lines.append(f"{mode}: nn.Conv2d / fused = {ratio:.2f}x")
    return "\n".join(lines)


def as_json(setup: BenchmarkSetup, timings: list[Timing], device: torch.device) -> dict:
    """Everything needed to read the result later."""
    return {
        "setup": asdict(setup),
        "environment": environment(device),
        "timings": [asdict(timing) for timing in timings],
    }
