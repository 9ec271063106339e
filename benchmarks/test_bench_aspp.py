"""Benchmarks: fused ASPP (deeplabv2_ext.aspp) vs the plain PyTorch baseline.

Groups are (shape, dtype, pass) with pass in {forward, forward+backward}. In each group:
  ours-nchw, ours-cl            deeplabv2_ext.aspp on NCHW / channels_last input
  cudnn-nchw, cudnn-cl          deeplabv2_ext.aspp.aspp_reference: R x F.conv2d, summed
                                (cudnn.benchmark=True) -- "cpu-conv-*" on CPU
  compile-nchw                  torch.compile of that baseline (inductor)
FLOPs (nominal, dense 3x3 taps) and the peak extra CUDA memory are in benchmark.extra_info.

Run:  pytest benchmarks [--aspp-device cpu|cuda] [--benchmark-json=out.json]
"""
import math
from dataclasses import dataclass

import pytest
import torch
import torch._dynamo

import deeplabv2_ext
from deeplabv2_ext.aspp import aspp_reference

ASPP_L = (6, 12, 18, 24)

# name: (N, C, H, W, K, rates)
GPU_SHAPES = {
    "S1": (10, 2048, 41, 41, 21, ASPP_L),
    "S2": (1, 2048, 65, 65, 21, ASPP_L),
    "S3": (2, 2048, 128, 256, 19, ASPP_L),
}
CPU_SHAPES = {
    "CPU1": (2, 512, 33, 33, 21, ASPP_L),
    # one image of S1: DeepLabV2's real head input (ResNet-101 res5, 321x321 crop, stride 8)
    "CPU2": (1, 2048, 41, 41, 21, ASPP_L),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PASSES = ("forward", "forward+backward")


@dataclass(frozen=True)
class Spec:
    device: str
    shape_name: str
    shape: tuple
    dtype_name: str
    pass_: str
    variant: str

    @property
    def group(self):
        N, C, H, W, K, rates = self.shape
        return f"{self.shape_name}(N{N},C{C},{H}x{W},K{K})-{self.dtype_name}-{self.pass_}"

    @property
    def id(self):
        return f"{self.shape_name}-{self.dtype_name}-{self.pass_}-{self.variant}"


def _specs(opts):
    dev = opts["device"]
    shapes = GPU_SHAPES if dev == "cuda" else CPU_SHAPES
    dtypes = ["fp32", "bf16"] if dev == "cuda" else ["fp32"]
    if opts["shapes"]:
        unknown = set(opts["shapes"]) - set(shapes)
        if unknown:
            raise pytest.UsageError(f"unknown shapes {sorted(unknown)} for {dev}; known: {sorted(shapes)}")
        shapes = {k: v for k, v in shapes.items() if k in opts["shapes"]}
    if opts["dtypes"]:
        dtypes = opts["dtypes"]
    base = "cudnn" if dev == "cuda" else "cpu-conv"
    variants = ["ours-nchw", "ours-cl", f"{base}-nchw", f"{base}-cl"]
    if opts["compile"]:
        variants.append("compile-nchw")
    return [
        Spec(dev, sname, shape, dname, p, v)
        for sname, shape in shapes.items()
        for dname in dtypes
        for p in PASSES
        for v in variants
    ]


def pytest_generate_tests(metafunc):
    if "spec" in metafunc.fixturenames:
        specs = _specs(metafunc.config.aspp_bench_options)
        metafunc.parametrize("spec", specs, ids=[s.id for s in specs])


@pytest.fixture(scope="session", autouse=True)
def _backend_flags():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.benchmark = True
    # TF32 on for both ours and the baselines (fp32 groups)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _make_fn(spec, x, w, b, go):
    """The timed callable: forward (no autograd) or forward + backward (grads of x, w, b)."""
    N, C, H, W, K, rates = spec.shape
    R = len(rates)
    fwd_bwd = spec.pass_ == "forward+backward"
    cl = spec.variant.endswith("-cl")
    dev = spec.device

    if spec.variant.startswith("ours"):
        leaves = [x, w, b]

        def forward():
            return deeplabv2_ext.aspp(x, w, b, rates)

    else:
        fmt = torch.channels_last if cl else torch.contiguous_format
        ws = [w[r].detach().clone().contiguous(memory_format=fmt).requires_grad_(fwd_bwd) for r in range(R)]
        bs = [b[r].detach().clone().requires_grad_(fwd_bwd) for r in range(R)]
        leaves = [x] + ws + bs
        if spec.variant.startswith("compile"):
            torch._dynamo.reset()  # fresh cache per benchmark (avoids hitting the recompile limit)
            base = torch.compile(aspp_reference, dynamic=False)
        else:
            base = aspp_reference  # what DeepLab-v2 does: R separate dilated 3x3 convs, summed

        def forward():
            return base(x, ws, bs, rates)

    if fwd_bwd:

        def fn():
            out = forward()
            grads = torch.autograd.grad(out, leaves, go)
            _sync(dev)
            return grads

    else:

        def fn():
            with torch.no_grad():
                out = forward()
            _sync(dev)
            return out

    return fn, forward


def test_aspp(benchmark, spec, record_result, request):
    opts = request.config.aspp_bench_options
    dev, dtype = spec.device, DTYPES[spec.dtype_name]
    N, C, H, W, K, rates = spec.shape
    R = len(rates)
    fwd_bwd = spec.pass_ == "forward+backward"
    cl = spec.variant.endswith("-cl")

    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(N, C, H, W, generator=g).to(dev, dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(R, K, C, 3, 3, generator=g) * (1.0 / math.sqrt(9 * C * R))).to(dev, dtype)
    b = torch.randn(R, K, generator=g).to(dev, dtype)
    for t in (x, w, b):
        t.requires_grad_(fwd_bwd)
    go = torch.randn(N, K, H, W, generator=g).to(dev, dtype)
    if cl:
        go = go.contiguous(memory_format=torch.channels_last)

    fn, forward = _make_fn(spec, x, w, b, go)

    # sanity: our forward agrees with the baseline (recorded, not asserted: this is a benchmark)
    rel_err = None
    if spec.variant.startswith("ours"):
        with torch.no_grad():
            ref = aspp_reference(x.float(), w.float(), b.float(), rates)
            out = forward().float()
            rel_err = ((out - ref).norm() / ref.norm()).item()

    # warm-up outside the timed region (compiles / cudnn autotuning), then peak memory of one call
    fn()
    peak_mb = None
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mem = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base_mem) / 2**20

    flops_fwd = 2.0 * N * K * C * 9 * R * H * W
    flops = flops_fwd * (3 if fwd_bwd else 1)  # backward = grad_input + grad_weight
    benchmark.group = spec.group
    benchmark.name = spec.variant
    benchmark.extra_info.update(
        {
            "group": spec.group,
            "variant": spec.variant,
            "role": "ours" if spec.variant.startswith("ours") else "baseline",
            "device": dev,
            "device_name": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
            "shape": {"N": N, "C": C, "H": H, "W": W, "K": K, "rates": list(rates)},
            "dtype": spec.dtype_name,
            "pass": spec.pass_,
            "tf32": dev == "cuda" and dtype == torch.float32,
            "flops": flops,
            "peak_mem_mb": peak_mb,
            "rel_err_vs_baseline": rel_err,
        }
    )

    if dev == "cuda":
        big = N * H * W >= 2 * 128 * 256
        rounds, warmup = (10 if big else 20), 3
    else:
        rounds, warmup = 5, 1
    rounds = opts["rounds"] or rounds
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)

    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None else None
    if median:
        benchmark.extra_info["tflops"] = flops / median / 1e12
    record_result(
        group=spec.group,
        variant=spec.variant,
        role=benchmark.extra_info["role"],
        median_s=median,
        flops=flops,
        peak_mb=peak_mb,
        error=rel_err,
    )
