"""Correctness tests for deeplabv2_ext (fused ASPP = sum of R dilated 3x3 convolutions).

The reference is deeplabv2_ext.aspp.aspp_reference in float64:
sum_r F.conv2d(x, w[r], b[r], padding=d_r, dilation=d_r).
Every check runs on "cpu" and, when a GPU is present, on "cuda" (parametrisations marked
``cuda`` are skipped by tests/conftest.py when torch.cuda.is_available() is False).
"""
import contextlib
import math
import random
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import deeplabv2_ext
from deeplabv2_ext import ASPP, aspp
from deeplabv2_ext._C import ASPP_MAX_RATES
from deeplabv2_ext.aspp import aspp_reference
from deeplabv2_ext._extension import cpu_aspp_row_blocks

import cuda_stream_checks

try:  # hypothesis is optional (absent on the bare GPU machine): fall back to the seeded sweeps
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # pragma: no cover
    HAVE_HYPOTHESIS = False

CUDA = pytest.mark.cuda
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
CUDA_ONLY = [pytest.param("cuda", marks=CUDA)]

ASPP_L = (6, 12, 18, 24)
ASPP_S = (2, 4, 8, 12)

# Relative tolerance on ||out - ref|| / ||ref|| per dtype; the elementwise check is looser.
RTOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 1e-2,
}
TF32_RTOL = 2e-3  # TF32 keeps 10 mantissa bits: ~5e-4 relative per product
FP32_EXACT_RTOL = 1e-5  # fp32 on CUDA with TF32 disabled (small reductions)


def fp32_exact_rtol(case):
    """fp32 (TF32 off): 1e-5, widened for long reductions: a sequential fp32 sum of n random-sign
    terms has a relative error of about 2**-24 * sqrt(n)."""
    n = case.C * 9 * len(case.rates)
    return max(FP32_EXACT_RTOL, 4 * 2.0**-24 * math.sqrt(n))

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
OPS = torch.ops.deeplabv2_ext
ANY_ERROR = (RuntimeError, ValueError, TypeError, IndexError)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def tf32(enabled):
    """Set the TF32 switches for cuDNN convs and matmuls (restored on exit)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def precision_ctx(dtype, device):
    """fp32 checks on CUDA are run with TF32 off (the "exact" setting) unless asked otherwise."""
    if device.startswith("cuda") and dtype == torch.float32:
        return tf32(False)
    return contextlib.nullcontext()


def reference_forward(x, w, b, rates):
    """aspp_reference (per-branch F.conv2d, summed) on detached float64 copies of the inputs."""
    x64 = x.detach().to(torch.float64)
    w64 = w.detach().to(torch.float64)
    b64 = None if b is None else b.detach().to(torch.float64)
    return aspp_reference(x64, w64, b64, rates)


def reference_with_grads(x, w, b, rates, grad_out):
    """float64 reference output and (grad_x, grad_w, grad_b) for the given grad_output."""
    x64 = x.detach().to(torch.float64).requires_grad_()
    w64 = w.detach().to(torch.float64).requires_grad_()
    b64 = None if b is None else b.detach().to(torch.float64).requires_grad_()
    out = aspp_reference(x64, w64, b64, rates)
    leaves = [x64, w64] + ([b64] if b64 is not None else [])
    grads = torch.autograd.grad(out, leaves, grad_out.detach().to(torch.float64), allow_unused=True)
    grads = list(grads) + ([None] if b64 is None else [])
    # a leaf the output does not depend on (cannot happen here, but be explicit) -> zeros
    grads = [torch.zeros_like(l) if (g is None and l is not None) else g for g, l in zip(grads, [x64, w64, b64])]
    return out.detach(), grads


def assert_close(actual, expected, rtol, name="output"):
    """||a - e|| / ||e|| <= rtol, plus an elementwise allclose with a generous atol; NaN/Inf fail."""
    assert actual is not None, f"{name}: got None"
    assert tuple(actual.shape) == tuple(expected.shape), f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(device=a.device, dtype=torch.float64)
    n_bad = (~torch.isfinite(a)).sum().item()
    assert n_bad == 0, f"{name}: {n_bad} non-finite values"
    ref_norm = e.norm().item()
    err = (a - e).norm().item()
    rel = err / max(ref_norm, 1e-30)
    assert err <= rtol * ref_norm or err <= 1e-12, (
        f"{name}: relative error {rel:.3e} > {rtol:.1e} (||err||={err:.3e}, ||ref||={ref_norm:.3e})"
    )
    atol = 20 * rtol * max(e.abs().max().item(), 1e-30)
    torch.testing.assert_close(a, e, rtol=10 * rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def _randn(shape, dtype, device, scale=1.0):
    # generate in float32 on CPU so CPU and CUDA see identical values for a given seed
    return (torch.randn(shape) * scale).to(device=device, dtype=dtype)


def make_input(N, C, H, W, dtype, device, layout="contiguous"):
    """An [N, C, H, W] tensor with the requested memory layout / kind of view."""
    if layout == "contiguous":
        x = _randn((N, C, H, W), dtype, device)
    elif layout == "channels_last":
        x = _randn((N, C, H, W), dtype, device).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":  # strided H, offset W
        x = _randn((N, C, 2 * H, W + 1), dtype, device)[:, :, ::2, 1:]
    elif layout == "transposed":  # H and W swapped in memory
        x = _randn((N, C, W, H), dtype, device).transpose(2, 3)
    elif layout == "channel_slice":  # a slice of a larger channel dimension
        x = _randn((N, C + 3, H, W), dtype, device)[:, 1 : C + 1]
    elif layout == "batch_stride":
        x = _randn((2 * N, C, H, W), dtype, device)[::2]
    elif layout == "cl_sliced":  # channels_last storage, sliced spatially
        x = _randn((N, C, H + 2, W + 3), dtype, device).contiguous(memory_format=torch.channels_last)[:, :, 1:-1, 2:-1]
    else:
        raise AssertionError(layout)
    assert tuple(x.shape) == (N, C, H, W)
    return x


def make_params(R, K, C, dtype, device, bias=True, contiguous=True):
    scale = 1.0 / math.sqrt(9 * C * R)  # keeps outputs O(1) so fp16 cannot overflow
    if contiguous:
        w = _randn((R, K, C, 3, 3), dtype, device, scale)
        b = _randn((R, K), dtype, device) if bias else None
    else:
        w = _randn((K, R, C, 3, 3), dtype, device, scale).transpose(0, 1)
        b = _randn((K, R), dtype, device).t() if bias else None
    return w, b


def check_memory_format(x, out):
    """channels_last in -> channels_last out; plain NCHW / other views -> contiguous out."""
    N, C, H, W = x.shape
    cl = torch.channels_last
    ambiguous = C <= 1 or H * W <= 1 or x.numel() == 0
    if ambiguous:
        assert out.is_contiguous() or out.is_contiguous(memory_format=cl)
    elif x.is_contiguous(memory_format=cl) and not x.is_contiguous():
        assert out.is_contiguous(memory_format=cl), f"channels_last input gave strides {out.stride()}"
    elif x.is_contiguous() or x.stride(1) >= x.stride(2) >= x.stride(3):
        assert out.is_contiguous(), f"NCHW-ordered input gave output strides {out.stride()}"


@dataclass(frozen=True)
class Case:
    N: int
    C: int
    H: int
    W: int
    K: int
    rates: tuple
    bias: bool = True
    layout: str = "contiguous"
    contiguous_params: bool = True

    @property
    def id(self):
        b = "b" if self.bias else "nob"
        p = "" if self.contiguous_params else "-ncparams"
        r = "_".join(map(str, self.rates))
        return f"N{self.N}C{self.C}H{self.H}W{self.W}K{self.K}-r{r}-{b}-{self.layout}{p}"


FIXED_CASES = [
    Case(2, 3, 5, 7, 2, (1, 2, 3)),
    Case(1, 1, 1, 1, 1, (1,)),  # everything 1, R = 1
    Case(2, 4, 6, 5, 3, ASPP_L, layout="channels_last"),  # all rates larger than the map
    Case(1, 19, 9, 11, 21, ASPP_S, bias=False),
    Case(2, 21, 13, 13, 19, ASPP_L, layout="channels_last"),
    Case(1, 182, 8, 8, 21, ASPP_L),
    Case(1, 256, 6, 7, 256, (1, 2), layout="channels_last"),
    Case(1, 8, 7, 9, 182, (3,), bias=False, layout="sliced"),
    Case(2, 5, 8, 6, 4, (2, 2, 2), layout="transposed"),  # repeated rates
    Case(3, 6, 5, 9, 5, (1, 3), layout="channel_slice", contiguous_params=False),
    Case(2, 4, 1, 9, 3, (1, 2, 4), layout="batch_stride"),  # H = 1
    Case(1, 3, 12, 1, 2, (1, 5), layout="channels_last"),  # W = 1
    Case(2, 7, 9, 10, 6, (1, 4), layout="cl_sliced", contiguous_params=False),
    Case(1, 2, 25, 25, 2, ASPP_L),  # rates inside the map (25 > 24)
    Case(2, 3, 5, 6, 2, (1, 1000, 3)),  # a huge rate: that branch only sees the centre tap
]


def _random_cases(n, seed=1234):
    rng = random.Random(seed)
    layouts = ["contiguous", "channels_last", "sliced", "transposed", "channel_slice", "batch_stride", "cl_sliced"]
    out = []
    for _ in range(n):
        R = rng.randint(1, 4)
        out.append(
            Case(
                N=rng.randint(1, 3),
                C=rng.choice([1, 2, 3, 5, 8, 16, 19]),
                H=rng.randint(1, 14),
                W=rng.randint(1, 14),
                K=rng.choice([1, 2, 3, 7, 19, 21]),
                rates=tuple(sorted(rng.randint(1, 13) for _ in range(R))),
                bias=rng.random() < 0.7,
                layout=rng.choice(layouts),
                contiguous_params=rng.random() < 0.8,
            )
        )
    return out


CASES = FIXED_CASES + _random_cases(10)


def run_case(case, dtype, device, rtol=None, check_grads=True):
    """Forward (+ backward with a random grad_output) against the float64 reference."""
    rtol = RTOL[dtype] if rtol is None else rtol
    R = len(case.rates)
    x = make_input(case.N, case.C, case.H, case.W, dtype, device, case.layout)
    w, b = make_params(R, case.K, case.C, dtype, device, case.bias, case.contiguous_params)
    leaves = [t for t in (x, w, b) if t is not None]
    for t in leaves:
        t.requires_grad_(check_grads)

    out = aspp(x, w, b, case.rates)
    assert out.dtype == dtype and out.device == x.device
    assert tuple(out.shape) == (case.N, case.K, case.H, case.W)
    check_memory_format(x, out)
    if not check_grads:
        assert_close(out, reference_forward(x, w, b, case.rates), rtol)
        return out

    grad_out = _randn(tuple(out.shape), dtype, device)
    ref_out, (rgx, rgw, rgb) = reference_with_grads(x, w, b, case.rates, grad_out)
    assert_close(out, ref_out, rtol, "output")
    grads = torch.autograd.grad(out, leaves, grad_out)
    gx, gw = grads[0], grads[1]
    for g, t in zip(grads, leaves):
        assert g.dtype == t.dtype and g.device == t.device
    assert_close(gx, rgx, rtol, "grad_input")
    assert_close(gw, rgw, rtol, "grad_weight")
    if b is not None:
        assert_close(grads[2], rgb, rtol, "grad_bias")
    return out


# ----------------------------------------------------------------------------------------------
# forward / backward sweeps
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward_backward_matches_reference(case, dtype, device):
    with precision_ctx(dtype, device):
        run_case(case, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires", ["x", "w", "b", "xw", "wb", "xb"])
def test_partial_requires_grad(device, requires):
    """Only the requested gradients are computed (exercises the backward output_mask)."""
    case = Case(2, 5, 7, 6, 4, (1, 3, 9))
    with precision_ctx(torch.float32, device):
        x = make_input(case.N, case.C, case.H, case.W, torch.float32, device)
        w, b = make_params(3, case.K, case.C, torch.float32, device)
        flags = {"x": x, "w": w, "b": b}
        for k, t in flags.items():
            t.requires_grad_(k in requires)
        out = aspp(x, w, b, case.rates)
        go = torch.randn_like(out)
        _, ref = reference_with_grads(x, w, b, case.rates, go)
        wanted = [t for t in (x, w, b) if t.requires_grad]
        got = torch.autograd.grad(out, wanted, go)
        ref_by_name = dict(zip("xwb", ref))
        for name, g in zip([k for k in "xwb" if k in requires], got):
            assert_close(g, ref_by_name[name], RTOL[torch.float32], f"grad_{name}")


class _RecordAsppCalls(TorchDispatchMode):
    """Records the number of rates of every torch.ops.deeplabv2_ext.aspp call made under it."""

    def __init__(self):
        super().__init__()
        self.rates_per_call = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is OPS.aspp.default:
            self.rates_per_call.append(len(args[3]))
        return func(*args, **(kwargs or {}))


MANY_BRANCHES = [  # R -> the rates of each op call aspp() makes
    (ASPP_MAX_RATES, [ASPP_MAX_RATES]),
    (ASPP_MAX_RATES + 1, [ASPP_MAX_RATES, 1]),
    (2 * ASPP_MAX_RATES + 5, [ASPP_MAX_RATES, ASPP_MAX_RATES, 5]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("R,calls", MANY_BRANCHES, ids=lambda v: str(v) if isinstance(v, int) else "")
def test_many_branches(device, bias, R, calls):
    """More rates than one op call takes on CUDA (ASPP_MAX_RATES): aspp() runs one call per group
    of at most ASPP_MAX_RATES rates on every device and sums them; up to the limit it is one call.
    Forward and all gradients match the reference."""
    rates = tuple(1 + (i % 5) for i in range(R))
    recorder = _RecordAsppCalls()
    with precision_ctx(torch.float32, device), recorder:
        run_case(Case(1, 3, 6, 5, 2, rates, bias=bias), torch.float32, device)
    assert recorder.rates_per_call == calls


@pytest.mark.parametrize("device", DEVICES)
def test_many_branches_compile_fullgraph(device):
    """The split into op calls traces under torch.compile(fullgraph=True): same numbers as eager."""
    import torch._dynamo

    torch._dynamo.reset()
    rates = tuple(1 + (i % 7) for i in range(ASPP_MAX_RATES + 3))
    x = torch.randn(2, 3, 8, 7, device=device, requires_grad=True)
    w, b = make_params(len(rates), 4, 3, torch.float32, device)
    w.requires_grad_()
    b.requires_grad_()
    fn = lambda x, w, b: aspp(x, w, b, rates)  # noqa: E731
    with precision_ctx(torch.float32, device):
        expected = fn(x, w, b)
        expected_grads = torch.autograd.grad(expected.square().sum(), (x, w, b))
        got = torch.compile(fn, backend="aot_eager", fullgraph=True)(x, w, b)
        got_grads = torch.autograd.grad(got.square().sum(), (x, w, b))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.parametrize("batched", ["weight", "bias"])
def test_many_branches_vmap_over_parameters(batched):
    """torch.vmap over the weight or the bias with more rates than one op call takes: the check
    of the whole call (aspp_check_args, no outputs, so vmap's fallback cannot run it) sees each
    sample's shapes, as the op calls (vmap's fallback) do. Same numbers as a loop over samples."""
    R = ASPP_MAX_RATES + 2
    rates = [1 + (i % 3) for i in range(R)]
    x = torch.randn(2, 3, 5, 5)
    w, b = make_params(R, 2, 3, torch.float32, "cpu")
    params = {"weight": torch.stack([w, 2 * w]), "bias": torch.stack([b, b - 1])}[batched]
    call = {"weight": lambda p: aspp(x, p, b, rates), "bias": lambda p: aspp(x, w, p, rates)}[batched]
    expected = torch.stack([call(p) for p in params])
    torch.testing.assert_close(torch.vmap(call)(params), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"bias must have shape \\[R, K\\] = \\[{R}, 2\\]"):
        torch.vmap(lambda p: aspp(x, w, p[:-1], rates))(params if batched == "bias" else b[None])


@pytest.mark.parametrize("level", ["rates", "branches", "forward", "backward"])
def test_opcheck_check_args(level):
    """The check op itself passes opcheck (schema, autograd registration, fake tensors, AOT
    dispatch) at every level of arguments it takes."""
    x = torch.randn(2, 3, 5, 5)
    w, b = make_params(2, 4, 3, torch.float32, "cpu")
    args = {"rates": ([1, 2],), "branches": ([1, 2], w, b), "forward": ([1, 2], w, b, x),
            "backward": ([1, 2], w, None, x, torch.randn(2, 4, 5, 5))}[level]
    torch.library.opcheck(OPS.aspp_check_args.default, args)


def test_cpu_op_takes_any_number_of_rates():
    """Only the CUDA op limits the rates of one call; the raw CPU op takes more in one call."""
    rates = [1 + (i % 3) for i in range(ASPP_MAX_RATES + 2)]
    x = torch.randn(1, 2, 5, 4)
    w, b = make_params(len(rates), 3, 2, torch.float32, "cpu")
    assert_close(OPS.aspp(x, w, b, rates), reference_forward(x, w, b, rates), RTOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dims,message",
    [((1, 0, 5, 5, 2), "channel counts C and K must be at least 1"),
     ((1, 3, 5, 5, 0), "channel counts C and K must be at least 1"),
     ((1, 3, 0, 5, 2), "height and width must be at least 1"),
     ((1, 3, 5, 0, 2), "height and width must be at least 1")],
    ids=["C0", "K0", "H0", "W0"])
def test_zero_sizes_raise(device, dims, message):
    """Zero-sized C, K, H or W: a ValueError that names the size (an empty batch works:
    test_empty_batch)."""
    N, C, H, W, K = dims
    x = torch.randn(N, C, H, W, device=device)
    w = torch.randn(2, K, C, 3, 3, device=device)
    b = torch.randn(2, K, device=device)
    with pytest.raises(ValueError, match=message):
        aspp(x, w, b, (1, 2))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_row_block_path(layout):
    """The CPU kernels process a row group (the taps of one dy) in blocks of rows when its
    U_g*K x pixels buffer would pass their scratch cap; the other cases are far too small for
    that. Here (K = 64, W = 2000) every row group is split, as the kernel's own plan reports, and
    forward and backward still match the float64 reference."""
    case = Case(1, 2, 24, 2000, 64, (1, 2), layout=layout)
    x = make_input(case.N, case.C, case.H, case.W, torch.float64, "cpu", case.layout)
    w, _ = make_params(len(case.rates), case.K, case.C, torch.float64, "cpu")
    blocks = cpu_aspp_row_blocks(x, w, case.rates)
    spans = {}
    for dy, row_begin, row_end in blocks:
        spans.setdefault(dy, []).append((row_begin, row_end))
    assert sorted(spans) == [-2, -1, 0, 1, 2]
    for dy, group in spans.items():
        assert len(group) > 1, (dy, group)
        # the blocks tile the group's source rows [max(0, dy), H + min(0, dy)) in order
        assert group[0][0] == max(0, dy) and group[-1][1] == case.H + min(0, dy)
        assert all(end == next_begin for (_, end), (next_begin, _) in zip(group, group[1:]))
    # a small map: one block per row group
    x_small, (w_small, _) = make_input(2, 3, 5, 7, torch.float64, "cpu"), make_params(
        2, 2, 3, torch.float64, "cpu")
    assert [dy for dy, _, _ in cpu_aspp_row_blocks(x_small, w_small, (1, 2))] == [-2, -1, 0, 1, 2]
    run_case(case, torch.float64, "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_backward_accumulates_into_leaf_grad(device):
    """The usual .backward() path: .grad fields filled and accumulated across two calls."""
    with precision_ctx(torch.float32, device):
        m = ASPP(6, 5, rates=(1, 2)).to(device)
        with torch.no_grad():
            m.bias.normal_()
        x = torch.randn(2, 6, 5, 5, device=device, requires_grad=True)
        m(x).sum().backward()
        g1 = (x.grad.clone(), m.weight.grad.clone(), m.bias.grad.clone())
        m(x).sum().backward()
        for g, acc in zip(g1, (x.grad, m.weight.grad, m.bias.grad)):
            assert_close(acc, 2 * g, 1e-6)
        # grad_bias of sum(out) is N*H*W for every (r, k)
        assert_close(m.bias.grad, torch.full_like(m.bias, 2 * 2 * 5 * 5), 1e-6, "grad_bias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_empty_batch(device, dtype, layout):
    C, K, H, W, rates = 4, 3, 5, 6, (1, 2)
    x = make_input(0, C, H, W, dtype, device, layout).requires_grad_()
    w, b = make_params(2, K, C, dtype, device)
    w.requires_grad_()
    b.requires_grad_()
    out = aspp(x, w, b, rates)
    assert tuple(out.shape) == (0, K, H, W) and out.dtype == dtype
    gx, gw, gb = torch.autograd.grad(out, (x, w, b), torch.ones_like(out))
    assert tuple(gx.shape) == (0, C, H, W)
    assert tuple(gw.shape) == tuple(w.shape) and torch.all(gw == 0)
    assert tuple(gb.shape) == tuple(b.shape) and torch.all(gb == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_memory_format(device):
    x = torch.randn(2, 8, 9, 10, device=device)
    w, b = make_params(4, 6, 8, torch.float32, device)
    out = aspp(x, w, b, ASPP_S)
    assert out.is_contiguous()
    out_cl = aspp(x.contiguous(memory_format=torch.channels_last), w, b, ASPP_S)
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and not out_cl.is_contiguous()
    assert_close(out_cl, out.double(), 1e-5)
    out_t = aspp(x.transpose(2, 3).contiguous().transpose(2, 3), w, b, ASPP_S)
    assert out_t.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_op_grad_input_format(device, layout):
    """aspp_backward: grad_input follows the input's memory format, grads have the right shapes,
    unrequested grads are empty tensors of shape [0]."""
    x = make_input(2, 5, 6, 7, torch.float32, device, layout)
    w, _ = make_params(2, 3, 5, torch.float32, device)
    go = torch.randn(2, 3, 6, 7, device=device)
    if layout == "channels_last":
        go = go.contiguous(memory_format=torch.channels_last)
    gi, gw, gb = OPS.aspp_backward(go, x, w, [1, 2], [True, True, True])
    assert tuple(gi.shape) == tuple(x.shape) and tuple(gw.shape) == tuple(w.shape) and tuple(gb.shape) == (2, 3)
    if layout == "channels_last":
        assert gi.is_contiguous(memory_format=torch.channels_last)
    else:
        assert gi.is_contiguous()
    for mask in ([True, False, False], [False, True, False], [False, False, True]):
        res = OPS.aspp_backward(go, x, w, [1, 2], mask)
        for want, g in zip(mask, res):
            if not want:
                assert tuple(g.shape) == (0,), f"mask {mask}: unrequested grad has shape {tuple(g.shape)}"
        for want, g, full in zip(mask, res, (gi, gw, gb)):
            if want:
                assert_close(g, full.double(), 1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_and_inference_mode(device):
    x = torch.randn(1, 3, 6, 6, device=device, requires_grad=True)
    w, b = make_params(2, 2, 3, torch.float32, device)
    w.requires_grad_()
    with torch.no_grad():
        out = aspp(x, w, b, (1, 2))
    assert not out.requires_grad
    with torch.inference_mode():
        out2 = aspp(x.detach(), w.detach(), b, (1, 2))
    assert torch.equal(out, out2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_forward_deterministic(device, dtype):
    """Repeated calls give bit-identical, finite results (no uninitialised / racy output)."""
    x = make_input(2, 19, 17, 15, dtype, device, "channels_last")
    w, b = make_params(4, 21, 19, dtype, device)
    with precision_ctx(dtype, device):
        outs = [aspp(x, w, b, ASPP_L) for _ in range(3)]
        outs += [aspp(x.contiguous(), w, b, ASPP_L)]
    assert torch.isfinite(outs[0]).all()
    for o in outs[1:3]:
        assert torch.equal(o, outs[0])
    assert_close(outs[3], outs[0].double(), RTOL[dtype])


# ----------------------------------------------------------------------------------------------
# property-based sweep (hypothesis, derandomised: deterministic in CI)
# ----------------------------------------------------------------------------------------------
if HAVE_HYPOTHESIS:

    @st.composite
    def _cases(draw):
        R = draw(st.integers(1, 4))
        return Case(
            N=draw(st.integers(0, 3)),
            C=draw(st.integers(1, 12)),
            H=draw(st.integers(1, 12)),
            W=draw(st.integers(1, 12)),
            K=draw(st.integers(1, 10)),
            rates=tuple(draw(st.lists(st.integers(1, 16), min_size=R, max_size=R))),
            bias=draw(st.booleans()),
            layout=draw(st.sampled_from(["contiguous", "channels_last", "sliced", "transposed", "cl_sliced"])),
            contiguous_params=draw(st.booleans()),
        )

    @pytest.mark.parametrize("device", DEVICES)
    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=_cases(), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    def test_hypothesis_forward_backward(device, case, dtype):
        with precision_ctx(dtype, device):
            run_case(case, dtype, device)

else:  # pragma: no cover

    def test_hypothesis_forward_backward():
        pytest.skip("hypothesis not installed; the seeded sweeps above still run")


# ----------------------------------------------------------------------------------------------
# gradcheck / double backward
# ----------------------------------------------------------------------------------------------
GRADCHECK_CASES = [
    (Case(2, 3, 5, 7, 2, (1, 2, 3)), "rates123"),
    (Case(1, 2, 4, 5, 3, (1, 9), bias=False), "rate_larger_than_map"),
    (Case(2, 2, 1, 1, 2, (1, 2)), "H1W1"),
    (Case(1, 3, 6, 5, 2, (2, 2), layout="channels_last"), "repeated_rates_cl"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [c for c, _ in GRADCHECK_CASES], ids=[i for _, i in GRADCHECK_CASES])
def test_gradcheck(case, device):
    x = make_input(case.N, case.C, case.H, case.W, torch.float64, device, case.layout).requires_grad_()
    w, b = make_params(len(case.rates), case.K, case.C, torch.float64, device, case.bias)
    w.requires_grad_()
    if b is not None:
        b.requires_grad_()
    fn = lambda x, w, b: aspp(x, w, b, case.rates)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_raises(device):
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2, 2, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, 2, dtype=torch.float64, device=device, requires_grad=True)
    with pytest.raises((RuntimeError, NotImplementedError), match="(?i)double backward"):
        out = aspp(x, w, b, (1, 2))
        gx, gw = torch.autograd.grad(out.pow(2).sum(), (x, w), create_graph=True)
        (gx.sum() + gw.sum()).backward()
    with pytest.raises((RuntimeError, NotImplementedError), match="(?i)double backward"):
        torch.autograd.gradgradcheck(lambda x, w, b: aspp(x, w, b, (1, 2)), (x, w, b))


# ----------------------------------------------------------------------------------------------
# torch.library.opcheck (schema, autograd registration, fake tensor, AOT dispatch dynamic)
# ----------------------------------------------------------------------------------------------
def _opcheck_samples(device):
    samples = []
    combos = [
        (torch.float32, "contiguous", False, True),
        (torch.float32, "contiguous", True, False),
        (torch.float32, "channels_last", True, True),
        (torch.float32, "channels_last", False, False),
        (torch.float64, "contiguous", True, True),
        (torch.float64, "channels_last", False, True),
        (torch.float64, "channels_last", True, False),
    ]
    for i, (dtype, layout, rg, bias) in enumerate(combos):
        rates = [(1, 2, 3), (2, 7), (6, 12, 18, 24)][i % 3]
        x = make_input(2, 3, 6, 5, dtype, device, layout).requires_grad_(rg)
        w, b = make_params(len(rates), 4, 3, dtype, device, bias)
        w.requires_grad_(rg)
        if b is not None:
            b.requires_grad_(rg)
        samples.append(pytest.param((x, w, b, list(rates)), id=f"{dtype}-{layout}-rg{int(rg)}-b{int(bias)}"))
    return samples


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample_idx", range(7))
def test_opcheck_forward(device, sample_idx):
    args = _opcheck_samples(device)[sample_idx].values[0]
    torch.library.opcheck(OPS.aspp.default, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "mask",
    [[True, True, True], [True, False, False], [False, True, True], [False, True, False], [False, False, True]],
    ids=str,
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_backward(device, mask, layout):
    x = make_input(2, 3, 6, 5, torch.float32, device, layout)
    w, _ = make_params(2, 4, 3, torch.float32, device)
    go = torch.randn(2, 4, 6, 5, device=device)
    torch.library.opcheck(OPS.aspp_backward.default, (go, x, w, [1, 3], mask))


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------
class _ReluASPP(nn.Module):
    def __init__(self, c, k, rates):
        super().__init__()
        self.aspp = ASPP(c, k, rates)
        with torch.no_grad():
            self.aspp.weight.normal_(0, 0.1)
            self.aspp.bias.normal_()

    def forward(self, x):
        return self.aspp(torch.relu(x))


def _compile_and_compare(device, backend, layout):
    import torch._dynamo

    torch._dynamo.reset()
    with precision_ctx(torch.float32, device):
        model = _ReluASPP(5, 4, (1, 2, 5)).to(device)
        x = make_input(2, 5, 9, 8, torch.float32, device, layout).requires_grad_()
        ref = model(x)
        gref = torch.autograd.grad(ref.sum(), [x, model.aspp.weight, model.aspp.bias])
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        out = compiled(x)
        got = torch.autograd.grad(out.sum(), [x, model.aspp.weight, model.aspp.bias])
    assert out.dtype == ref.dtype
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, ref.double(), 1e-6, "compiled output")
    for name, g, r in zip(("x", "weight", "bias"), got, gref):
        assert_close(g, r.double(), 1e-6, f"compiled grad_{name}")
    torch._dynamo.reset()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compile_aot_eager(device, layout):
    _compile_and_compare(device, "aot_eager", layout)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_dynamic_shapes(device):
    """dynamic=True: the fake kernels must handle symbolic N, H, W (no recompiles per size)."""
    import torch._dynamo

    torch._dynamo.reset()
    model = _ReluASPP(4, 3, (1, 3)).to(device)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    with precision_ctx(torch.float32, device):
        for shape in [(2, 4, 7, 9), (3, 4, 11, 5), (1, 4, 6, 6)]:
            x = torch.randn(shape, device=device, requires_grad=True)
            out = compiled(x)
            ref = model(x)
            assert_close(out, ref.double(), 1e-6, f"dynamic {shape}")
            (gx,) = torch.autograd.grad(out.sum(), x)
            (rgx,) = torch.autograd.grad(ref.sum(), x)
            assert_close(gx, rgx.double(), 1e-6, f"dynamic grad {shape}")
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compile_inductor(device):
    _compile_and_compare(device, "inductor", "contiguous")


# ----------------------------------------------------------------------------------------------
# autocast
# ----------------------------------------------------------------------------------------------
AUTOCAST = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=CUDA),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=CUDA),
]


@pytest.mark.parametrize("device,amp_dtype", AUTOCAST)
def test_autocast(device, amp_dtype):
    x = torch.randn(2, 6, 9, 9, device=device, requires_grad=True)
    w, b = make_params(4, 5, 6, torch.float32, device)
    w.requires_grad_()
    b.requires_grad_()
    with torch.autocast(device_type=device, dtype=amp_dtype):
        out = aspp(x, w, b, ASPP_S)
        conv_dtype = F.conv2d(x, w[0], b[0], padding=1).dtype
    assert out.dtype == amp_dtype == conv_dtype
    go = torch.randn_like(out)
    ref, ref_grads = reference_with_grads(x.to(amp_dtype), w.to(amp_dtype), b.to(amp_dtype), ASPP_S, go)
    assert_close(out, ref, RTOL[amp_dtype])
    grads = torch.autograd.grad(out, (x, w, b), go)
    for name, g, r in zip(("x", "w", "b"), grads, ref_grads):
        assert g.dtype == torch.float32, f"grad_{name} dtype {g.dtype}"
        assert_close(g, r, RTOL[amp_dtype], f"grad_{name}")


@pytest.mark.parametrize("device,amp_dtype", AUTOCAST)
def test_autocast_mixed_dtypes_more_rates_than_one_call(device, amp_dtype):
    """Under autocast an activation of the autocast dtype meets float32 weights (as after an
    autocast layer): with more rates than one op call takes, the split path must let autocast
    cast each group's arguments, as the one-call path does."""
    rates = tuple(range(1, ASPP_MAX_RATES + 2))
    x = torch.randn(1, 3, 5, 5, device=device).to(amp_dtype)
    w, b = make_params(len(rates), 2, 3, torch.float32, device)
    with torch.autocast(device_type=device, dtype=amp_dtype):
        out = aspp(x, w, b, rates)
    assert out.dtype == amp_dtype
    ref = aspp_reference(x.double(), w.to(amp_dtype).double(), b.to(amp_dtype).double(), rates)
    assert_close(out, ref, RTOL[amp_dtype])


@pytest.mark.parametrize("device,amp_dtype", AUTOCAST)
def test_autocast_module(device, amp_dtype):
    m = ASPP(4, 3, rates=(1, 2)).to(device)
    x = torch.randn(1, 4, 6, 6, device=device)
    with torch.autocast(device_type=device, dtype=amp_dtype):
        out = m(x)
    assert out.dtype == amp_dtype
    assert m.weight.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# the nn.Module
# ----------------------------------------------------------------------------------------------
def test_module_init_statistics():
    torch.manual_seed(0)
    m = ASPP(256, 21)
    assert m.rates == ASPP_L and isinstance(m.rates, tuple) and all(type(r) is int for r in m.rates)
    assert isinstance(m.weight, nn.Parameter) and tuple(m.weight.shape) == (4, 21, 256, 3, 3)
    assert isinstance(m.bias, nn.Parameter) and tuple(m.bias.shape) == (4, 21)
    assert torch.all(m.bias == 0)
    std = m.weight.std().item()
    mean = m.weight.mean().item()
    assert abs(std - 0.01) < 0.0003, std  # 193k samples: sampling error of std ~ 1.6e-5
    assert abs(mean) < 0.0003, mean
    for r in range(4):  # every branch is initialised, not only the first
        assert abs(m.weight[r].std().item() - 0.01) < 0.0005


def test_module_options():
    m = ASPP(5, 3, rates=[2, 4, 8], bias=False)
    assert m.bias is None
    assert m.rates == (2, 4, 8)
    assert tuple(m.weight.shape) == (3, 3, 5, 3, 3)
    names = {n for n, _ in m.named_parameters()}
    assert names == {"weight"}
    m1 = ASPP(2, 2, rates=(3,))
    assert tuple(m1.weight.shape) == (1, 2, 2, 3, 3) and m1.rates == (3,)
    sd = ASPP(5, 3).state_dict()
    assert set(sd) == {"weight", "bias"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_module_forward_matches_functional(device, bias):
    m = ASPP(7, 4, rates=ASPP_S, bias=bias).to(device)
    if bias:
        with torch.no_grad():
            m.bias.normal_()
    x = torch.randn(2, 7, 10, 11, device=device)
    with precision_ctx(torch.float32, device):
        out = m(x)
        assert torch.equal(out, aspp(x, m.weight, m.bias, m.rates))
        assert_close(out, reference_forward(x, m.weight, m.bias, m.rates), 1e-4)


def _convs(C, K, rates, bias=True, device="cpu"):
    convs = []
    for d in rates:
        c = nn.Conv2d(C, K, 3, padding=d, dilation=d, bias=bias)
        if bias:
            nn.init.normal_(c.bias)
        convs.append(c.to(device))
    return convs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rates", [ASPP_L, ASPP_S, (3,), (2, 2)], ids=str)
def test_from_convs(device, bias, rates):
    C, K = 6, 5
    convs = _convs(C, K, rates, bias, device)
    m = ASPP.from_convs(convs)
    assert m.rates == tuple(rates)
    assert (m.bias is None) == (not bias)
    assert tuple(m.weight.shape) == (len(rates), K, C, 3, 3)
    assert m.weight.device.type == device
    x = torch.randn(2, C, 13, 12, device=device)
    with precision_ctx(torch.float32, device), torch.no_grad():
        ref = sum(c.double()(x.double()) for c in _clone_convs(convs))
        out = m(x)
    assert_close(out, ref, 1e-4)


def _clone_convs(convs):
    import copy

    return [copy.deepcopy(c) for c in convs]


def test_from_convs_accepts_tuple_and_modulelist():
    convs = _convs(3, 2, (1, 2))
    x = torch.randn(1, 3, 5, 5)
    out_list = ASPP.from_convs(nn.ModuleList(convs))(x)
    out_tuple = ASPP.from_convs(tuple(convs))(x)
    assert torch.equal(out_list, out_tuple)


def _bad_conv_sets():
    ok = lambda d, c=4, k=3: nn.Conv2d(c, k, 3, padding=d, dilation=d)  # noqa: E731
    return {
        "kernel5x5": [ok(1), nn.Conv2d(4, 3, 5, padding=2)],
        "kernel1x1": [nn.Conv2d(4, 3, 1)],
        "kernel3x1": [nn.Conv2d(4, 3, (3, 1), padding=(1, 0))],
        "stride2": [ok(1), nn.Conv2d(4, 3, 3, stride=2, padding=2, dilation=2)],
        "groups2": [nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, 3, padding=2, dilation=2)],
        "padding_ne_dilation": [ok(1), nn.Conv2d(4, 3, 3, padding=1, dilation=2)],
        "anisotropic_dilation": [nn.Conv2d(4, 3, 3, padding=(1, 2), dilation=(1, 2))],
        "in_channels_disagree": [ok(1), ok(2, c=5)],
        "out_channels_disagree": [ok(1), ok(2, k=2)],
    }


@pytest.mark.parametrize("name", list(_bad_conv_sets()))
def test_from_convs_rejects(name):
    with pytest.raises(ValueError):
        ASPP.from_convs(_bad_conv_sets()[name])


# ----------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------
def _bad_inputs():
    """name -> (args factory, exception type for the Python wrapper, message regex)."""
    x = lambda: torch.randn(2, 3, 5, 5)  # noqa: E731
    w = lambda: torch.randn(2, 4, 3, 3, 3)  # noqa: E731
    b = lambda: torch.randn(2, 4)  # noqa: E731
    return {
        "input_3d": (lambda: (x()[0], w(), b(), (1, 2)), ValueError, "4-D"),
        "input_5d": (lambda: (x()[None], w(), b(), (1, 2)), ValueError, "4-D"),
        "weight_4d": (lambda: (x(), w()[0], b(), (1, 2)), ValueError, "5-D"),
        "weight_6d": (lambda: (x(), w()[None], b(), (1, 2)), ValueError, "5-D"),
        "weight_5x5": (lambda: (x(), torch.randn(2, 4, 3, 5, 5), b(), (1, 2)), ValueError, "3x3"),
        "weight_3x1": (lambda: (x(), torch.randn(2, 4, 3, 3, 1), b(), (1, 2)), ValueError, "3x3"),
        "channel_mismatch": (lambda: (x(), torch.randn(2, 4, 5, 3, 3), b(), (1, 2)), ValueError, "channel"),
        "too_many_rates": (lambda: (x(), w(), b(), (1, 2, 3)), ValueError, "rates"),
        "too_few_rates": (lambda: (x(), w(), b(), (1,)), ValueError, "rates"),
        "rate_zero": (lambda: (x(), w(), b(), (0, 2)), ValueError, "positive"),
        "rate_negative": (lambda: (x(), w(), b(), (1, -1)), ValueError, "positive"),
        "bias_1d": (lambda: (x(), w(), b()[0], (1, 2)), ValueError, "bias"),
        "bias_wrong_K": (lambda: (x(), w(), torch.randn(2, 5), (1, 2)), ValueError, "bias"),
        "bias_wrong_R": (lambda: (x(), w(), torch.randn(3, 4), (1, 2)), ValueError, "bias"),
        "bias_3d": (lambda: (x(), w(), torch.randn(2, 4, 1), (1, 2)), ValueError, "bias"),
        "weight_dtype": (lambda: (x(), w().double(), b(), (1, 2)), TypeError, "dtype"),
        "bias_dtype": (lambda: (x(), w(), b().double(), (1, 2)), TypeError, "dtype"),
        "input_dtype_half": (lambda: (x().half(), w(), b(), (1, 2)), TypeError, "dtype"),
        "integer_all": (lambda: (x().long(), w().long(), b().long(), (1, 2)), TypeError, "floating"),
        "integer_int32": (lambda: (x().int(), w().int(), None, (1, 2)), TypeError, "floating"),
    }


BAD = _bad_inputs()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_wrapper(name):
    make, exc, pattern = BAD[name]
    with pytest.raises(exc, match=f"(?i){pattern}"):
        aspp(*make())


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_raw_op(name):
    """The raw op validates too (TORCH_CHECK), instead of reading out of bounds or crashing."""
    x, w, b, rates = BAD[name][0]()
    with pytest.raises(ANY_ERROR):
        OPS.aspp(x, w, b, list(rates))


@pytest.mark.parametrize("name", ["input_3d", "weight_4d", "channel_mismatch", "too_many_rates", "rate_zero", "weight_dtype"])
def test_bad_inputs_raw_backward_op(name):
    x, w, _, rates = BAD[name][0]()
    go = torch.randn(2, 4, 5, 5)
    with pytest.raises(ANY_ERROR):
        OPS.aspp_backward(go, x, w, list(rates), [True, True, True])


def test_bad_grad_output_shape_raw_backward_op():
    x, w = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 3, 3, 3)
    for go in (torch.randn(2, 4, 5, 4), torch.randn(2, 5, 5, 5), torch.randn(1, 4, 5, 5), torch.randn(4, 5, 5)):
        with pytest.raises(ANY_ERROR):
            OPS.aspp_backward(go, x, w, [1, 2], [True, True, True])


@pytest.mark.parametrize("rates", [(1.5, 2), (1, True), 3], ids=["float", "bool", "int"])
def test_rates_must_be_a_sequence_of_ints(rates):
    with pytest.raises((TypeError, ValueError)):
        aspp(torch.randn(1, 3, 4, 4), torch.randn(2, 2, 3, 3, 3), None, rates)


def test_module_rejects_bad_rates():
    with pytest.raises(ValueError, match="(?i)positive"):
        ASPP(3, 2, rates=(0, 1))(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="non-empty"):
        ASPP(3, 2, rates=())
    with pytest.raises(TypeError, match="sequence of ints"):
        ASPP(3, 2, rates=b"\x01")


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_fake(name):
    """The fake kernel (tracing, torch.compile) raises what the op raises: it runs the op's own
    checks (aspp_check_args) on fake tensors, whose data does not exist."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    make, exc, pattern = BAD[name]
    x, w, b, rates = make()
    with FakeTensorMode() as mode:
        fakes = [None if t is None else mode.from_tensor(t) for t in (x, w, b)]
        with pytest.raises(exc, match=f"(?i){pattern}"):
            OPS.aspp(*fakes, list(rates))


@pytest.mark.parametrize("dims,message", [((1, 0, 5, 5, 2), "channel counts"),
                                          ((1, 3, 0, 5, 2), "height and width")], ids=["C0", "H0"])
def test_zero_sizes_raise_in_the_fake_kernel(dims, message):
    N, C, H, W, K = dims
    x, w = torch.empty(N, C, H, W, device="meta"), torch.empty(2, K, C, 3, 3, device="meta")
    with pytest.raises(ValueError, match=message):
        OPS.aspp(x, w, None, [1, 2])


def test_bad_grad_output_shape_fake_backward():
    """The backward's fake kernel checks grad_output's shape like the kernels do."""
    x, w = torch.empty(2, 3, 5, 5, device="meta"), torch.empty(2, 4, 3, 3, 3, device="meta")
    OPS.aspp_backward(torch.empty(2, 4, 5, 5, device="meta"), x, w, [1, 2], [True, True, True])
    with pytest.raises(ValueError, match=r"grad_output must have shape \[N, K, H, W\]"):
        OPS.aspp_backward(torch.empty(2, 4, 5, 4, device="meta"), x, w, [1, 2], [True, True, True])


@pytest.mark.parametrize("problem,message", [
    ("one_rate_too_few", f"len\\(rates\\) must equal .* = {ASPP_MAX_RATES + 2}, got "
                         f"{ASPP_MAX_RATES + 1} rates"),
    ("rate_zero", "positive integers, got \\[1, 2, 3, 1,"),
    ("bias_wrong_R", f"bias must have shape \\[R, K\\] = \\[{ASPP_MAX_RATES + 2}, 2\\]"),
    ("weight_5x5", "3x3"),
])
def test_many_branches_bad_structure(problem, message):
    """More rates than one op call takes: the whole call's branch structure is checked before
    the split (by the op's check), so a mismatch is named with the whole call's sizes, not with
    those of the group whose op call would meet it."""
    R = ASPP_MAX_RATES + 2
    rates = [1 + (i % 3) for i in range(R)]
    x = torch.randn(1, 3, 5, 5)
    w, b = make_params(R, 2, 3, torch.float32, "cpu")
    if problem == "one_rate_too_few":
        rates = rates[:-1]
    elif problem == "rate_zero":
        rates[-1] = 0
    elif problem == "bias_wrong_R":
        b = b[:-1]
    else:
        w = torch.randn(R, 2, 3, 5, 5)
    with pytest.raises(ValueError, match=message):
        aspp(x, w, b, rates)


def test_check_args_reads_metadata_only():
    """aspp_check_args, the checks of the op, takes meta tensors (no data) at every level: rates
    alone, the branches, the forward and the backward arguments."""
    x, w = torch.empty(2, 3, 5, 5, device="meta"), torch.empty(2, 4, 3, 3, 3, device="meta")
    b, go = torch.empty(2, 4, device="meta"), torch.empty(2, 4, 5, 5, device="meta")
    OPS.aspp_check_args([1, 2])
    OPS.aspp_check_args([1, 2], w, b)
    OPS.aspp_check_args([1, 2], w, b, x)
    OPS.aspp_check_args([1, 2], w, None, x, go)
    with pytest.raises(ValueError, match="non-empty"):
        OPS.aspp_check_args([])
    with pytest.raises(ValueError, match="too large"):
        OPS.aspp_check_args([2**31])
    with pytest.raises(ValueError, match="len\\(rates\\)"):
        OPS.aspp_check_args([1], w, b)
    with pytest.raises(TypeError, match="same dtype"):
        OPS.aspp_check_args([1, 2], w, b, x.double())
    with pytest.raises(ValueError, match="grad_output"):
        OPS.aspp_check_args([1, 2], w, None, x, go[:, :3])
    with pytest.raises(RuntimeError, match="need weight"):
        OPS.aspp_check_args([1, 2], None, None, x)


def test_reference_takes_stacked_or_per_branch_parameters():
    """aspp_reference, the one reference: the sum of F.conv2d per branch, from [R, ...] tensors
    or from R separate ones (the parameters of R nn.Conv2d)."""
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    w, b = make_params(3, 4, 3, torch.float64, "cpu")
    rates = (1, 2, 5)
    expected = sum(F.conv2d(x, w[r], b[r], padding=d, dilation=d) for r, d in enumerate(rates))
    torch.testing.assert_close(aspp_reference(x, w, b, rates), expected, rtol=0, atol=0)
    torch.testing.assert_close(aspp_reference(x, list(w), list(b), rates), expected, rtol=0, atol=0)
    no_bias = sum(F.conv2d(x, w[r], padding=d, dilation=d) for r, d in enumerate(rates))
    torch.testing.assert_close(aspp_reference(x, w, None, rates), no_bias, rtol=0, atol=0)


def test_cuda_kernels_available_is_bool():
    assert isinstance(deeplabv2_ext.cuda_kernels_available(), bool)


# ----------------------------------------------------------------------------------------------
# CUDA-specific checks
# ----------------------------------------------------------------------------------------------
@CUDA
def test_cuda_kernels_were_built():
    assert deeplabv2_ext.cuda_kernels_available(), "a CUDA device is present but the extension has no CUDA kernels"


@CUDA
@pytest.mark.parametrize(
    "name,args_device",
    [("input_on_cpu", "x"), ("weight_on_cpu", "w"), ("bias_on_cpu", "b")],
)
def test_cuda_mixed_devices(name, args_device):
    x = torch.randn(2, 3, 5, 5, device="cuda")
    w = torch.randn(2, 4, 3, 3, 3, device="cuda")
    b = torch.randn(2, 4, device="cuda")
    if args_device == "x":
        x = x.cpu()
    elif args_device == "w":
        w = w.cpu()
    else:
        b = b.cpu()
    with pytest.raises(ValueError, match="(?i)device"):
        aspp(x, w, b, (1, 2))
    with pytest.raises(ANY_ERROR):
        OPS.aspp(x, w, b, [1, 2])


CUDA_ODD = [
    Case(2, 1, 9, 9, 1, ASPP_L),
    Case(1, 1, 7, 5, 21, (1, 2)),
    Case(2, 13, 11, 9, 21, ASPP_L, layout="channels_last"),
    Case(1, 16, 9, 9, 256, ASPP_S),
    Case(1, 2048, 5, 6, 21, ASPP_L),
    Case(1, 2048, 4, 4, 19, ASPP_L, layout="channels_last", bias=False),
    Case(3, 7, 1, 1, 5, ASPP_L),
    Case(1, 64, 65, 65, 21, ASPP_L),
    Case(1, 64, 65, 65, 21, ASPP_L, layout="channels_last"),
    Case(2, 33, 17, 23, 19, (1, 2, 3), layout="sliced"),
    Case(2, 182, 10, 10, 182, ASPP_S, layout="channels_last"),
]


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CUDA_ODD, ids=lambda c: c.id)
def test_cuda_odd_shapes(case, dtype):
    rtol = fp32_exact_rtol(case) if dtype == torch.float32 else None
    with precision_ctx(dtype, "cuda"):
        run_case(case, dtype, "cuda", rtol=rtol)


@CUDA
@pytest.mark.parametrize("case", [CUDA_ODD[2], CUDA_ODD[4], CUDA_ODD[7], CUDA_ODD[8]], ids=lambda c: c.id)
def test_cuda_tf32(case):
    with tf32(True):
        run_case(case, torch.float32, "cuda", rtol=TF32_RTOL)


@CUDA
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_cuda_matches_cpu(layout, dtype):
    """Same inputs on CPU and CUDA give the same forward and gradients."""
    case = Case(2, 24, 15, 13, 21, ASPP_L, layout=layout)
    results = {}
    for dev in ("cpu", "cuda"):
        torch.manual_seed(7)
        x = make_input(case.N, case.C, case.H, case.W, dtype, dev, layout).requires_grad_()
        w, b = make_params(4, case.K, case.C, dtype, dev)
        w.requires_grad_()
        b.requires_grad_()
        with precision_ctx(dtype, dev):
            out = aspp(x, w, b, case.rates)
            go = torch.ones_like(out)
            grads = torch.autograd.grad(out, (x, w, b), go)
        results[dev] = [out] + list(grads)
    rtol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2 * RTOL[dtype])
    for name, c, g in zip(("out", "gx", "gw", "gb"), results["cpu"], results["cuda"]):
        assert g.device.type == "cuda"
        assert_close(g.cpu(), c.double(), rtol, name)


@CUDA
def test_cuda_op_refuses_more_rates_than_one_call_takes():
    """The raw CUDA op takes at most ASPP_MAX_RATES rates per call and says so (aspp() splits)."""
    rates = [1 + (i % 4) for i in range(ASPP_MAX_RATES + 1)]
    x = torch.randn(1, 3, 6, 5, device="cuda")
    w, b = make_params(len(rates), 2, 3, torch.float32, "cuda")
    message = f"one call of the op takes 1 to {ASPP_MAX_RATES} rates"
    with pytest.raises(ValueError, match=message):
        OPS.aspp(x, w, b, rates)
    with pytest.raises(ValueError, match=message):
        OPS.aspp_backward(torch.randn(1, 2, 6, 5, device="cuda"), x, w, rates, [True, True, True])
    with precision_ctx(torch.float32, "cuda"):  # the limit itself is one call
        out = OPS.aspp(x, w[1:], b[1:], rates[1:])
    assert_close(out, reference_forward(x, w[1:], b[1:], rates[1:]), RTOL[torch.float32])


@CUDA
@pytest.mark.parametrize("schedule", cuda_stream_checks.SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_runs_on_the_current_stream(schedule, dtype):
    """Forward, dgrad and wgrad enqueue all their work on the current stream: run on a side stream
    under schedules where a launch on another stream reads unwritten inputs or misses the host
    read (tests/cuda_stream_checks.py), they give the default stream's results (the forward
    bitwise; the atomic weight gradients up to rounding)."""
    # Inputs no other run used: a result left in recycled memory cannot pass for a late one.
    torch.manual_seed(cuda_stream_checks.SCHEDULES.index(schedule) + 10 * ALL_DTYPES.index(dtype) + 1)
    x = make_input(2, 16, 20, 20, dtype, "cuda", "channels_last")
    w, b = make_params(4, 21, 16, dtype, "cuda")
    grad_out = _randn((2, 21, 20, 20), dtype, "cuda")

    def forward_and_backward(x, w, b, grad_out):
        out = OPS.aspp(x, w, b, list(ASPP_L))
        return (out, *OPS.aspp_backward(grad_out, x, w, list(ASPP_L), [True, True, True]))

    with precision_ctx(dtype, "cuda"):
        expected = [t.cpu() for t in forward_and_backward(x, w, b, grad_out)]
        got = cuda_stream_checks.run_on_side_stream(schedule, forward_and_backward, (x, w, b, grad_out))
    assert torch.equal(got[0], expected[0]), "output differs from the default stream's"
    for name, g, e in zip(("grad_input", "grad_weight", "grad_bias"), got[1:], expected[1:]):
        assert_close(g, e.double(), RTOL[dtype], name)


def _misaligned(t, lead):
    """A copy of ``t`` with its strides whose data pointer lies ``lead`` elements past the start of
    its allocation (every allocation is at least 16-byte aligned)."""
    storage = torch.empty(t.untyped_storage().nbytes() // t.element_size() + lead, dtype=t.dtype, device=t.device)
    shifted = torch.as_strided(storage, t.shape, t.stride(), lead)
    shifted.copy_(t)
    return shifted


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("lead", [1, 3])
def test_misaligned_channels_last(device, dtype, lead):
    """channels_last with C and K multiples of 8 (whole 16-byte vectors along channels for every
    dtype) but input and grad_output data pointers off 16 bytes: the CUDA loaders' alignment guard
    must fall back to scalar loads (a misaligned 16-byte load is a launch error there); forward,
    dgrad and wgrad match the reference."""
    N, C, H, W, K, rates = 2, 16, 7, 9, 24, [1, 2]
    cl = torch.channels_last
    x = _misaligned(make_input(N, C, H, W, dtype, device, "channels_last"), lead)
    grad_out = _misaligned(_randn((N, K, H, W), dtype, device).contiguous(memory_format=cl), lead)
    w, b = make_params(len(rates), K, C, dtype, device)
    for t in (x, grad_out):
        assert t.is_contiguous(memory_format=cl) and t.data_ptr() % 16 != 0
    with precision_ctx(dtype, device):
        out = OPS.aspp(x, w, b, rates)
        grads = OPS.aspp_backward(grad_out, x, w, rates, [True, True, True])
    ref, ref_grads = reference_with_grads(x, w, b, rates, grad_out)
    assert_close(out, ref, RTOL[dtype], "output")
    for name, g, r in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads):
        assert_close(g, r, RTOL[dtype], name)


def _check_tf32_use(device: str, uses_tf32: bool) -> None:
    """Runs forward, dgrad and wgrad in float32 on inputs and grad_output of 1 + 2^-13, which
    TF32 rounds to 1, with weights of 1: every sum is exact in float32 either way, so the results
    show exactly whether the kernels rounded their operands to TF32 (``uses_tf32``) or not."""
    value = 1 + 2.0**-13
    rates = [1, 2]
    x = torch.full((2, 8, 5, 6), value, device=device)
    grad_out = torch.full((2, 4, 5, 6), value, device=device)
    w = torch.ones(len(rates), 4, 8, 3, 3, device=device)
    out = OPS.aspp(x, w, None, rates)
    grad_input, grad_weight, _ = OPS.aspp_backward(grad_out, x, w, rates, [True, True, False])
    seen = 1.0 if uses_tf32 else value  # the operand values the kernels multiplied
    ref, (ref_gi, ref_gw, _) = reference_with_grads(torch.full_like(x, seen), w, None, rates,
                                                   torch.full_like(grad_out, seen))
    for name, got, expected in (("output", out, ref), ("grad_input", grad_input, ref_gi),
                                ("grad_weight", grad_weight, ref_gw)):
        torch.testing.assert_close(got.double().cpu(), expected.cpu(), rtol=1e-6, atol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cudnn_tf32", [False, True], ids=["cudnn_tf32_off", "cudnn_tf32_on"])
@pytest.mark.parametrize("matmul_tf32", [False, True], ids=["matmul_tf32_off", "matmul_tf32_on"])
def test_tf32_follows_the_cudnn_switch_alone(device, cudnn_tf32, matmul_tf32):
    """float32 on CUDA uses TF32 iff torch.backends.cudnn.allow_tf32 (cuDNN convolutions may, as
    for conv2d); the matmul switch plays no part; the CPU op is exact whatever the switches."""
    torch.backends.cudnn.allow_tf32 = cudnn_tf32  # restored by tests/conftest.py
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    _check_tf32_use(device, uses_tf32=device == "cuda" and cudnn_tf32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("conv_precision", ["ieee", "tf32"])
def test_tf32_follows_the_cudnn_conv_precision(device, conv_precision):
    """The fp32_precision API: torch.backends.cudnn.conv.fp32_precision decides, as for conv2d,
    with the rnn precision set to the other value. torch raises when asked whether cuDNN may use
    TF32 without naming the op while conv and rnn differ, so the op must ask for conv."""
    conv, rnn = torch.backends.cudnn.conv, torch.backends.cudnn.rnn
    saved = (conv.fp32_precision, rnn.fp32_precision)
    try:
        conv.fp32_precision = conv_precision
        rnn.fp32_precision = "tf32" if conv_precision == "ieee" else "ieee"
        _check_tf32_use(device, uses_tf32=device == "cuda" and conv_precision == "tf32")
    finally:  # before conftest's teardown, which reads the legacy flags (they raise meanwhile)
        conv.fp32_precision, rnn.fp32_precision = saved


@CUDA
@pytest.mark.slow
def test_cuda_large_batch():
    """A DeepLab-sized case (N=4, C=2048, 33x33, K=21) with TF32 on, forward + backward."""
    with tf32(True):
        run_case(Case(4, 2048, 33, 33, 21, ASPP_L, layout="channels_last"), torch.float32, "cuda", rtol=TF32_RTOL)
        run_case(Case(2, 2048, 33, 33, 21, ASPP_L), torch.bfloat16, "cuda")
