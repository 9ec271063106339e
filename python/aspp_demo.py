"""A short demo of the fused ASPP op on the default device (CUDA when available, else CPU).

It checks the fused op against the classic DeepLabV2 head (deeplabv2.models.ConvASPP: R parallel
nn.Conv2d, summed) with the same weights, then times both, forward and forward+backward, and
prints the ratios.

    python python/aspp_demo.py [--device cpu|cuda] [--dtype float32|bfloat16] [--repeats 20]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import deeplabv2_ext
from deeplabv2_ext import ASPP
from deeplabv2.models import ConvASPP

# (N, C, H, W, K): S1 of the benchmarks on GPU (DeepLabV2 training, batch 10, 321x321 crops),
# a smaller map on CPU.
GPU_SHAPE = (10, 2048, 41, 41, 21)
CPU_SHAPE = (2, 512, 33, 33, 21)
RATES = (6, 12, 18, 24)


def median_ms(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median wall time of step() in ms, synchronising the device around each run."""
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    n, c, h, w, k = GPU_SHAPE if device.type == "cuda" else CPU_SHAPE
    print(f"deeplabv2_ext {deeplabv2_ext.__version__}: CUDA kernels built = "
          f"{deeplabv2_ext.cuda_kernels_available()}; device {device}, {args.dtype}, "
          f"N={n} C={c} {h}x{w} K={k} rates={RATES}")

    torch.manual_seed(0)
    classic = ConvASPP(c, k, RATES).to(device, dtype)
    for conv in classic.convs:  # nn.Conv2d's default init: outputs of a useful size
        conv.reset_parameters()
    fused = ASPP.from_convs(classic.convs)
    x = torch.randn(n, c, h, w, device=device, dtype=dtype)

    with torch.no_grad():
        reference = copy.deepcopy(classic).to(torch.float64)(x.double())
        error = (fused(x).double() - reference).norm() / reference.norm()
    print(f"relative error of the fused op vs the float64 reference: {error:.2e}")
    tolerance = 2e-2 if dtype == torch.bfloat16 else 2e-3  # bf16 operands / TF32 on GPU
    if not error <= tolerance:
        raise SystemExit(f"FAILED: relative error {error:.2e} exceeds {tolerance:.0e}")

    x_grad = x.clone().requires_grad_()

    def forward_backward(module: nn.Module) -> Callable[[], None]:
        return lambda: module(x_grad).sum().backward()

    rows = []
    for name, run in [
        ("forward", lambda m: (lambda: m(x))),
        ("forward+backward", forward_backward),
    ]:
        grad_mode = torch.enable_grad() if name != "forward" else torch.no_grad()
        with grad_mode:
            baseline_ms = median_ms(run(classic), device, args.repeats)
            fused_ms = median_ms(run(fused), device, args.repeats)
        rows.append((name, baseline_ms, fused_ms))
    print(f"{'pass':<18}{'4x conv2d + sum':>18}{'fused ASPP':>14}{'fused/baseline':>16}")
    for name, baseline_ms, fused_ms in rows:
        print(f"{name:<18}{baseline_ms:>15.2f} ms{fused_ms:>11.2f} ms{fused_ms / baseline_ms:>16.2f}")


if __name__ == "__main__":
    main()
