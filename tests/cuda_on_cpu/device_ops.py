"""The CUDA launchers of csrc/ called on CPU tensors through a :class:`harness.Device`.

Each function takes and returns torch CPU tensors and mirrors what the op's CUDA glue passes to
the launcher (strides, dtype, TF32 flag, lattice tensors); outputs are allocated with the
strides given (the glue's choice) and poisoned before the launch. A tensor's data pointer keeps
its alignment within its storage (harness.to_buffer).
"""
from __future__ import annotations

from typing import Sequence

import torch

from deeplabv2_ext.densecrf import PermutohedralLattice

from .harness import Device, Result, device_dtype, from_bytes, poison_buffer, span, to_buffer


def _strides(t: torch.Tensor) -> tuple:
    return ("i64s", list(t.stride()))


def _sizes(input_: torch.Tensor, weight: torch.Tensor, rates: Sequence[int]) -> list:
    N, C, H, W = input_.shape
    R, K = weight.shape[:2]
    return [("i64", N), ("i32", C), ("i32", H), ("i32", W), ("i32", K), ("i32", R), ("i32s", list(rates))]


def _output(like: torch.Tensor, size, stride) -> tuple:
    return poison_buffer(span(tuple(size), tuple(stride)), like.dtype)


def aspp_forward(dev: Device, input_: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 rates: Sequence[int], out_stride: Sequence[int], *, allow_tf32: bool = False,
                 seed: int = 0, sm_major: int = 9) -> tuple[torch.Tensor, Result]:
    N, _, H, W = input_.shape
    size = (N, weight.shape[1], H, W)
    args = [to_buffer(input_), _strides(input_), to_buffer(weight), _strides(weight)]
    args += [to_buffer(bias), _strides(bias)] if bias is not None else [("null",), ("null",)]
    args += [_output(input_, size, out_stride), ("i64s", list(out_stride))]
    args += _sizes(input_, weight, rates) + [("i32", device_dtype(input_.dtype)), ("i32", int(allow_tf32))]
    result = dev.call("coc_aspp_forward", args, seed=seed, sm_major=sm_major)
    return from_bytes(result.buffers[-1], input_.dtype, size, out_stride), result


def aspp_dgrad(dev: Device, grad_output: torch.Tensor, input_: torch.Tensor, weight: torch.Tensor,
               rates: Sequence[int], gi_stride: Sequence[int], *, allow_tf32: bool = False,
               seed: int = 0) -> tuple[torch.Tensor, Result]:
    size = tuple(input_.shape)
    args = [to_buffer(grad_output), _strides(grad_output), to_buffer(weight), _strides(weight),
            _output(input_, size, gi_stride), ("i64s", list(gi_stride))]
    args += _sizes(input_, weight, rates) + [("i32", device_dtype(input_.dtype)), ("i32", int(allow_tf32))]
    result = dev.call("coc_aspp_dgrad", args, seed=seed)
    return from_bytes(result.buffers[-1], input_.dtype, size, gi_stride), result


def aspp_wgrad(dev: Device, grad_output: torch.Tensor, input_: torch.Tensor, weight: torch.Tensor,
               rates: Sequence[int], *, want_weight: bool = True, want_bias: bool = True,
               allow_tf32: bool = False, seed: int = 0,
               sm_count: int = 132) -> tuple[torch.Tensor | None, torch.Tensor | None, Result]:
    """grad_weight [R, K, C, 3, 3] and grad_bias [R, K] (contiguous, as the glue allocates them);
    sm_count (the device's multiprocessor count) sets how far wgrad splits the pixel range."""
    R, K, C = weight.shape[:3]
    gw_stride = (K * C * 9, C * 9, 9, 3, 1)
    gb_stride = (K, 1)
    args = [to_buffer(grad_output), _strides(grad_output)]
    args += [to_buffer(input_), _strides(input_)] if want_weight else [("null",), ("null",)]
    args += ([poison_buffer(R * K * C * 9, weight.dtype), ("i64s", list(gw_stride))] if want_weight
             else [("null",), ("null",)])
    args += [poison_buffer(R * K, weight.dtype), ("i64s", list(gb_stride))] if want_bias else [("null",), ("null",)]
    args += _sizes(input_, weight, rates) + [("i32", device_dtype(input_.dtype)), ("i32", int(allow_tf32))]
    result = dev.call("coc_aspp_wgrad", args, seed=seed, sm_count=sm_count)
    buffers = iter(result.buffers[2 if want_weight else 1:])
    grad_weight = from_bytes(next(buffers), weight.dtype, weight.shape) if want_weight else None
    grad_bias = from_bytes(next(buffers), weight.dtype, (R, K)) if want_bias else None
    return grad_weight, grad_bias, result


Lattice = PermutohedralLattice  # the tensors of permutohedral_lattice, in the ops' order


def lattice(dev: Device, features: torch.Tensor, *, seed: int = 0, hash_capacity: int = 0,
            expect_success: bool = True) -> tuple[Lattice | None, Result, int]:
    """Builds the lattice of features [N, D, P] as permutohedral_lattice_cuda does. Returns the
    lattice (None when the build reported a full table), the result and the overflow flag."""
    N, D, P = features.shape
    entries = N * P * (D + 1)
    args = [to_buffer(features.contiguous()), ("i64", N), ("i32", D), ("i64", P), ("i64", hash_capacity),
            poison_buffer(entries, torch.int32), poison_buffer(entries, torch.float32),
            ("out_ptr",), ("out_ptr",), ("out_ptr",), ("out_i64",), ("out_i32",)]
    result = dev.call("coc_lattice", args, seed=seed, expect_success=expect_success)
    neighbours_ptr, offsets_ptr, entries_ptr, M, overflow = result.out
    if overflow or neighbours_ptr is None:
        return None, result, overflow
    int_bytes = 4
    neighbours = dev.read_and_free(neighbours_ptr, (D + 1) * M * 2 * int_bytes)
    offsets = dev.read_and_free(offsets_ptr, (M + 1) * int_bytes)
    plan = dev.read_and_free(entries_ptr, entries * int_bytes)
    built = Lattice(
        from_bytes(result.buffers[1], torch.int32, (N, P, D + 1)),
        from_bytes(result.buffers[2], torch.float32, (N, P, D + 1)),
        from_bytes(neighbours, torch.int32, (D + 1, M, 2)),
        from_bytes(offsets, torch.int32, (M + 1,)),
        from_bytes(plan, torch.int32, (entries,)),
    )
    return built, result, overflow


def filter_(dev: Device, values: torch.Tensor, lat: Lattice, *, reverse: bool = False,
            splat_weight: torch.Tensor | None = None, slice_weight: torch.Tensor | None = None,
            accumulate_into: torch.Tensor | None = None, seed: int = 0) -> tuple[torch.Tensor, Result]:
    """launch_filter on values [N, P, V] (float32 or float64); with accumulate_into the slice adds
    to a copy of that tensor instead of overwriting a poisoned output."""
    N, P, V = values.shape
    D = lat.vertex_index.shape[2] - 1
    M = lat.blur_neighbors.shape[1]
    output = to_buffer(accumulate_into.contiguous()) if accumulate_into is not None else poison_buffer(N * P * V, values.dtype)
    optional = lambda t: to_buffer(t.contiguous()) if t is not None else ("null",)  # noqa: E731
    args = [to_buffer(values.contiguous()), output, ("i32", device_dtype(values.dtype)),
            ("i64", N), ("i64", P), ("i64", V), ("i32", D), ("i64", M),
            to_buffer(lat.vertex_index.contiguous()), to_buffer(lat.vertex_weight.contiguous()),
            optional(splat_weight), optional(slice_weight), ("i32", int(accumulate_into is not None)),
            to_buffer(lat.blur_neighbors.contiguous()), to_buffer(lat.splat_offsets.contiguous()),
            to_buffer(lat.splat_entries.contiguous()), ("i32", int(reverse))]
    result = dev.call("coc_filter", args, seed=seed)
    return from_bytes(result.buffers[1], values.dtype, (N, P, V)), result
