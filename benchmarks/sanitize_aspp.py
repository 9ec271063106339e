#!/usr/bin/env python3
"""Drive deeplabv2_ext.aspp forward + backward on CUDA under compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \
        python benchmarks/sanitize_aspp.py
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck --error-exitcode 1 \
        python benchmarks/sanitize_aspp.py --tiny

PYTORCH_NO_CUDA_MEMORY_CACHING=1 gives every tensor its own cudaMalloc, so an out-of-bounds access
is not hidden inside a block of PyTorch's caching allocator. The CUDA results are also compared
with deeplabv2_ext.aspp.aspp_reference in float64, computed on the CPU so that no cuDNN kernel
runs under the sanitizer; the script exits 1 on a mismatch or a non-finite value, 0 otherwise.
"""
import argparse
import math
import sys
import time

import torch

import deeplabv2_ext
from deeplabv2_ext.aspp import aspp_reference

ASPP_L = (6, 12, 18, 24)
ASPP_S = (2, 4, 8, 12)

# (N, C, H, W, K, rates, bias, layout)
CASES = [
    (2, 3, 5, 7, 2, (1, 2, 3), True, "contiguous"),
    (1, 1, 1, 1, 1, (1,), True, "contiguous"),
    (2, 1, 9, 9, 1, ASPP_L, False, "channels_last"),
    (1, 19, 9, 13, 21, ASPP_S, True, "channels_last"),
    (1, 21, 7, 5, 19, ASPP_L, True, "contiguous"),  # all rates larger than the map
    (2, 64, 17, 17, 21, ASPP_L, True, "channels_last"),
    (1, 37, 33, 29, 23, (1, 5, 9), True, "contiguous"),  # nothing a multiple of a tile size
    (1, 130, 11, 12, 65, (2, 2), False, "sliced"),  # repeated rates, non-contiguous input
    (1, 256, 8, 8, 256, (3, 7), True, "channels_last"),
    (3, 7, 1, 1, 5, ASPP_L, True, "channels_last"),
    (0, 8, 5, 5, 3, (1, 2), True, "contiguous"),  # empty batch
    (1, 513, 6, 5, 21, ASPP_L, True, "channels_last"),
]
TINY = [
    (1, 4, 6, 7, 3, (1, 2), True, "contiguous"),
    (1, 8, 5, 5, 4, (1, 3), True, "channels_last"),
]
MODES = {  # name: (dtype, tf32, relative tolerance)
    "fp32": (torch.float32, False, 1e-4),
    "tf32": (torch.float32, True, 3e-3),
    "fp16": (torch.float16, False, 1e-2),
    "bf16": (torch.bfloat16, False, 3e-2),
}


def make_input(N, C, H, W, layout, dtype):
    if layout == "sliced":
        x = torch.randn(N, C, 2 * H, W + 1)[:, :, ::2, 1:]
    else:
        x = torch.randn(N, C, H, W)
    x = x.to("cuda", dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def reference(x, w, b, rates, go):
    x = x.detach().cpu().double().requires_grad_()
    w = w.detach().cpu().double().requires_grad_()
    b = None if b is None else b.detach().cpu().double().requires_grad_()
    out = aspp_reference(x, w, b, rates)
    leaves = [t for t in (x, w, b) if t is not None]
    return [out] + list(torch.autograd.grad(out, leaves, go.cpu().double())) if out.numel() else [out, None, None, None]


def rel_err(a, e):
    if e is None or e.numel() == 0:
        return 0.0
    a = a.detach().cpu().double()
    if not torch.isfinite(a).all():
        return math.inf
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def run(case, mode):
    N, C, H, W, K, rates, bias, layout = case
    dtype, tf32, tol = MODES[mode]
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    R = len(rates)
    x = make_input(N, C, H, W, layout, dtype).requires_grad_()
    w = (torch.randn(R, K, C, 3, 3) / math.sqrt(9 * C * R)).to("cuda", dtype).requires_grad_()
    b = torch.randn(R, K).to("cuda", dtype).requires_grad_() if bias else None
    out = deeplabv2_ext.aspp(x, w, b, rates)
    go = torch.randn(out.shape).to("cuda", dtype)
    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(out, leaves, go)
    torch.cuda.synchronize()
    out2 = deeplabv2_ext.aspp(x, w, b, rates)  # determinism of the forward
    torch.cuda.synchronize()
    problems = []
    if not torch.equal(out, out2):
        problems.append("forward not deterministic")
    if N == 0:
        if tuple(out.shape) != (0, K, H, W):
            problems.append(f"bad empty output shape {tuple(out.shape)}")
        if not all(torch.all(g == 0) for g in grads[1:]):
            problems.append("non-zero parameter grads for N=0")
        return problems
    ref = reference(x, w, b, rates, go)
    for name, got, want in zip(("out", "grad_input", "grad_weight", "grad_bias"), [out] + list(grads), ref):
        e = rel_err(got, want)
        if not e <= tol:
            problems.append(f"{name} rel err {e:.2e} > {tol:.0e}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="two tiny cases (for racecheck / initcheck)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("sanitize_aspp: CUDA not available", file=sys.stderr)
        return 2
    if not deeplabv2_ext.cuda_kernels_available():
        print("sanitize_aspp: deeplabv2_ext was built without CUDA kernels", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    cases = TINY if args.tiny else CASES
    modes = [m for m in args.modes.split(",") if m]
    failures = 0
    t0 = time.time()
    for case in cases:
        for mode in modes:
            try:
                problems = run(case, mode)
            except Exception as exc:  # report and keep going: the sanitizer log has the details
                problems = [f"{type(exc).__name__}: {exc}"]
            status = "ok" if not problems else "FAIL: " + "; ".join(problems)
            failures += bool(problems)
            print(f"{mode:5s} N{case[0]} C{case[1]} {case[2]}x{case[3]} K{case[4]} rates={case[5]} "
                  f"bias={case[6]} {case[7]}: {status}", flush=True)
    print(f"sanitize_aspp: {len(cases) * len(modes)} runs, {failures} failed, {time.time() - t0:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
