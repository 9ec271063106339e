"""The ASPP CUDA launchers (forward, dgrad, wgrad + bias) run on the CPU through the CUDA-on-CPU
layer, against the float64 reference of tests/test_aspp.py: every dtype path the device takes
(WMMA fp16 / bf16 / tf32, exact SIMT fp32 / fp64), NCHW / channels_last / strided tensors, maps
smaller than the rates and than one tile, channel counts off the tile sizes."""
from __future__ import annotations

import zlib

import pytest
import torch
from deeplabv2_ext.aspp import _output_memory_format

from test_aspp import (RTOL, TF32_RTOL, Case, assert_close, fp32_exact_rtol, make_input, make_params,
                       reference_with_grads)

from . import device_ops as ops


CASES = [  # (the Case of tests/test_aspp.py)
    Case(1, 3, 1, 1, 1, (1,)),  # one pixel, every off-centre tap outside
    Case(2, 37, 5, 7, 19, (6, 12, 18, 24), layout="channels_last"),  # map smaller than every rate
    Case(1, 5, 12, 13, 21, (1, 2, 3, 4), layout="sliced"),  # 156 pixels: beyond one 128-pixel tile
    Case(3, 8, 4, 6, 33, (2, 2), layout="channels_last"),  # repeated rate, C % 8 == 0 (vector loads)
    Case(1, 130, 3, 4, 21, (1, 3), layout="channel_slice"),  # C beyond several channel chunks
    Case(2, 16, 6, 5, 64, (1,), layout="transposed"),  # K = 64: a full BK = 64 block
    Case(1, 3, 40, 40, 5, (2,)),  # 1600 pixels: wgrad splits the pixel range
]

# (dtype, allow_tf32, expected policy in the implicit-GEMM kernel's name)
PATHS = [
    (torch.float32, False, "PolSimt<float, float>"),
    (torch.float32, True, "PolWmmaTF32"),
    (torch.float16, False, "PolWmmaF16"),
    (torch.bfloat16, False, "PolWmmaBF16"),
    (torch.float64, False, "PolSimt<double, double>"),
]


def tolerance(case: Case, dtype: torch.dtype, allow_tf32: bool) -> float:
    if dtype == torch.float32:
        return TF32_RTOL if allow_tf32 else fp32_exact_rtol(case)
    return RTOL[dtype]


def inputs(case: Case, dtype: torch.dtype):
    torch.manual_seed(zlib.crc32(case.id.encode()))
    x = make_input(case.N, case.C, case.H, case.W, dtype, "cpu", case.layout)
    w, b = make_params(len(case.rates), case.K, case.C, dtype, "cpu")
    grad_out = torch.randn(case.N, case.K, case.H, case.W).to(dtype)
    if case.layout == "channels_last":
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    return x, w, b, grad_out


def output_stride(x: torch.Tensor, channels: int) -> tuple[int, ...]:
    """The glue allocates outputs in input.suggest_memory_format()."""
    N, _, H, W = x.shape
    fmt = _output_memory_format(x)
    return torch.empty(N, channels, H, W).contiguous(memory_format=fmt).stride()


def igemm_policies(result) -> list[str]:
    return [name for name in result.kernels() if "aspp_igemm_kernel" in name]


@pytest.mark.parametrize("dtype,allow_tf32,policy", PATHS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_aspp_forward_and_backward(asan_device, case, dtype, allow_tf32, policy):
    x, w, b, grad_out = inputs(case, dtype)
    ref, (ref_gx, ref_gw, ref_gb) = reference_with_grads(x, w, b, case.rates, grad_out)
    rtol = tolerance(case, dtype, allow_tf32)

    out, result = ops.aspp_forward(asan_device, x, w, b, case.rates, output_stride(x, case.K), allow_tf32=allow_tf32)
    assert_close(out, ref, rtol, "output")
    kernels = igemm_policies(result)
    assert len(kernels) == 1 and policy in kernels[0], result.kernels()

    gx, result = ops.aspp_dgrad(asan_device, grad_out, x, w, case.rates, output_stride(x, case.C),
                                allow_tf32=allow_tf32)
    assert_close(gx, ref_gx, rtol, "grad_input")
    assert policy in igemm_policies(result)[0]

    gw, gb, result = ops.aspp_wgrad(asan_device, grad_out, x, w, case.rates, allow_tf32=allow_tf32)
    assert_close(gw, ref_gw, rtol, "grad_weight")
    assert_close(gb, ref_gb, RTOL[dtype] if dtype != torch.float32 else 1e-5, "grad_bias")
    assert any("aspp_wgrad_kernel" in k and policy in k for k in result.kernels()), result.kernels()


LOAD_MODES = [  # (layout, dtype, C, expected load mode of the input tile loader)
    ("contiguous", torch.float16, 16, "0>"),      # pixel-fast
    ("channels_last", torch.float16, 12, "1>"),   # channel-fast: C % 8 != 0
    ("channels_last", torch.float16, 16, "2>"),   # 16-byte vectors
    ("channels_last", torch.float32, 8, "2>"),
]


@pytest.mark.parametrize("layout,dtype,C,mode", LOAD_MODES)
def test_forward_load_modes(asan_device, layout, dtype, C, mode):
    case = Case(1, C, 5, 6, 21, (1, 2), layout=layout)
    x, w, b, _ = inputs(case, dtype)
    out, result = ops.aspp_forward(asan_device, x, w, b, case.rates, output_stride(x, case.K))
    assert_close(out, reference_with_grads(x, w, b, case.rates, torch.zeros(1, 21, 5, 6))[0], tolerance(case, dtype, False))
    assert igemm_policies(result)[0].endswith(mode), result.kernels()


@pytest.mark.parametrize("lead", [1, 3])
def test_misaligned_channels_last_input_takes_the_scalar_loader(asan_device, lead):
    """channels_last with C % 8 == 0 (fp16) but a data pointer off 16 bytes: the vector loader's
    alignment guard must fall back to the channel-fast scalar loader (UBSan flags a misaligned
    16-byte load otherwise)."""
    case = Case(1, 16, 4, 5, 19, (1, 2), layout="channels_last")
    x, w, b, _ = inputs(case, torch.float16)
    storage = torch.empty(x.numel() + lead, dtype=x.dtype)
    shifted = torch.as_strided(storage, x.shape, x.stride(), lead)
    shifted.copy_(x)
    out, result = ops.aspp_forward(asan_device, shifted, w, b, case.rates, output_stride(x, case.K))
    assert_close(out, reference_with_grads(x, w, b, case.rates, torch.zeros(1, 19, 4, 5))[0], RTOL[torch.float16])
    assert igemm_policies(result)[0].endswith("1>"), result.kernels()


def test_bfloat16_needs_sm80(asan_device):
    case = Case(1, 4, 3, 3, 5, (1,))
    x, w, b, _ = inputs(case, torch.bfloat16)
    with pytest.raises(AssertionError, match="cudaError 801"):
        ops.aspp_forward(asan_device, x, w, b, case.rates, output_stride(x, 5), sm_major=7)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("dtype,allow_tf32,policy", [PATHS[0], PATHS[2]], ids=["float32", "float16"])
def test_aspp_race_free(race_device, seed, dtype, allow_tf32, policy):
    """Barrier-aware race detection on every ASPP kernel, under seeded schedules."""
    case = Case(2, 19, 6, 13, 21, (1, 3), layout="channels_last")
    x, w, b, grad_out = inputs(case, dtype)
    ref, (ref_gx, ref_gw, ref_gb) = reference_with_grads(x, w, b, case.rates, grad_out)
    rtol = tolerance(case, dtype, allow_tf32)
    out, _ = ops.aspp_forward(race_device, x, w, b, case.rates, output_stride(x, case.K), seed=seed)
    assert_close(out, ref, rtol)
    gx, _ = ops.aspp_dgrad(race_device, grad_out, x, w, case.rates, output_stride(x, case.C), seed=seed)
    assert_close(gx, ref_gx, rtol)
    gw, gb, _ = ops.aspp_wgrad(race_device, grad_out, x, w, case.rates, seed=seed)
    assert_close(gw, ref_gw, rtol)
    assert_close(gb, ref_gb, RTOL[dtype] if dtype != torch.float32 else 1e-5)


@pytest.mark.parametrize("sm_count", [1, 4, 132])
def test_wgrad_split_counts(asan_device, sm_count):
    """The number of pixel-range splits follows the multiprocessor count; the sum must not."""
    case = Case(2, 9, 24, 30, 21, (1, 4), layout="channels_last")
    x, w, b, grad_out = inputs(case, torch.float32)
    _, (_, ref_gw, ref_gb) = reference_with_grads(x, w, b, case.rates, grad_out)
    gw, gb, _ = ops.aspp_wgrad(asan_device, grad_out, x, w, case.rates, sm_count=sm_count)
    assert_close(gw, ref_gw, fp32_exact_rtol(case) * 4)
    assert_close(gb, ref_gb, 1e-5)


def test_wgrad_bias_only(asan_device):
    case = Case(2, 6, 3, 4, 40, (1, 2))
    x, w, b, grad_out = inputs(case, torch.float32)
    _, (_, _, ref_gb) = reference_with_grads(x, w, b, case.rates, grad_out)
    gw, gb, result = ops.aspp_wgrad(asan_device, grad_out, x, w, case.rates, want_weight=False)
    assert gw is None
    assert_close(gb, ref_gb, 1e-5)
    assert not any("aspp_wgrad_kernel" in k for k in result.kernels())
