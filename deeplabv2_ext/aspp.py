"""Fused ASPP: the parallel 3x3 dilated convolutions of DeepLabV2, summed, as one operator.

``aspp(input, weight, bias, rates)`` equals ``aspp_reference(input, weight, bias, rates)``,
``sum(F.conv2d(input, weight[r], bias[r], padding=rates[r], dilation=rates[r]) for r in range(R))``,
but runs as one fused kernel (``torch.ops.deeplabv2_ext.aspp``) on CPU and CUDA. One call of the
op takes at most ``ASPP_MAX_RATES`` (64) rates on CUDA; ``aspp`` splits more rates into groups of
at most that many, on every device, and sums the groups' outputs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeplabv2_ext import _C  # importing it registers torch.ops.deeplabv2_ext.*

ASPP_L_RATES = (6, 12, 18, 24)
ASPP_S_RATES = (2, 4, 8, 12)
# The most rates one call of the op takes on CUDA (kAsppMaxRates, csrc/aspp/aspp_limits.h).
ASPP_MAX_RATES: int = _C.ASPP_MAX_RATES


def _as_rates(rates: Sequence[int]) -> tuple[int, ...]:
    """The rates as a tuple of Python ints; rejects floats, bools and non-sequences."""
    if isinstance(rates, (int, str, bytes, Tensor)) or not isinstance(rates, Sequence):
        raise TypeError(f"aspp: rates must be a sequence of ints, got {rates!r}")
    for rate in rates:
        if isinstance(rate, bool) or not isinstance(rate, int):
            raise TypeError(f"aspp: rates must be a sequence of ints, got {tuple(rates)!r}")
        if not -2**63 <= rate < 2**63:  # cannot reach the op's own range check as an int[]
            raise ValueError(f"aspp: rate {rate} is too large")
    return tuple(rates)


def checked_rates(rates: Sequence[int]) -> tuple[int, ...]:
    """The rates of an ASPP head as a tuple, checked before any tensor exists (module
    constructors): a non-empty sequence of positive ints, by the op's own check.

    Raises:
        TypeError: rates that are not a sequence of ints.
        ValueError: no rates, or a rate < 1 (or too large).
    """
    rates = _as_rates(rates)
    torch.ops.deeplabv2_ext.aspp_check_args(list(rates))
    return rates


def aspp_reference(
    input: Tensor,
    weight: Tensor | Sequence[Tensor],
    bias: Tensor | Sequence[Tensor] | None,
    rates: Sequence[int],
) -> Tensor:
    """What ``aspp`` computes, written with ``F.conv2d``: the sum over branches r of
    ``F.conv2d(input, weight[r], bias[r], padding=rates[r], dilation=rates[r])``.

    The one reference of the op: the tests call it on float64 tensors, the benchmarks time it as
    the cuDNN / oneDNN baseline, ``deeplabv2.models.ConvASPP`` is its module form. ``weight`` is
    [R, K, C, 3, 3] or R tensors [K, C, 3, 3] (``bias`` likewise [R, K] or R tensors [K]), so
    that R separate ``nn.Conv2d`` parameters are used as they are. It runs in the arguments'
    dtype, on their device.
    """
    output = None
    for r, rate in enumerate(rates):
        branch = F.conv2d(input, weight[r], None if bias is None else bias[r], padding=rate,
                          dilation=rate)
        output = branch if output is None else output + branch
    return output


def aspp(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    rates: Sequence[int] = ASPP_L_RATES,
) -> Tensor:
    """Sum of R parallel 3x3 dilated convolutions (DeepLabV2's ASPP), fused.

    Args:
        input: [N, C, H, W], float32/float16/bfloat16/float64, contiguous or channels_last.
        weight: [R, K, C, 3, 3], one 3x3 kernel bank per branch.
        bias: [R, K] or None; the biases of all branches are added.
        rates: R positive ints; branch r uses dilation = padding = rates[r].

    Returns:
        [N, K, H, W] in the memory format of ``input``. Differentiable w.r.t. input, weight
        and bias (double backward is not supported). Under ``torch.autocast`` it runs in the
        autocast dtype, like ``conv2d``. More than ``ASPP_MAX_RATES`` rates run as one op call
        per group of at most that many branches, summed.

    Raises:
        ValueError: wrong shapes, channel mismatch, non-3x3 kernels, len(rates) != R,
            non-positive rates, tensors on different devices.
        TypeError: integer or mismatched dtypes, rates that are not ints.
    """
    rates = _as_rates(rates)
    if len(rates) <= ASPP_MAX_RATES:
        return torch.ops.deeplabv2_ext.aspp(input, weight, bias, list(rates))
    # The branch structure of the whole call, before slicing (so that errors name the whole
    # call); dtypes and devices are checked by each group's op call, after autocast has cast
    # its arguments.
    torch.ops.deeplabv2_ext.aspp_check_args(list(rates), weight, bias)
    output = None
    for start in range(0, len(rates), ASPP_MAX_RATES):
        group = slice(start, start + ASPP_MAX_RATES)
        part = torch.ops.deeplabv2_ext.aspp(input, weight[group],
                                            None if bias is None else bias[group],
                                            list(rates[group]))
        output = part if output is None else output + part
    return output


def _output_memory_format(input: Tensor) -> torch.memory_format:
    """Mirror of ATen's ``suggest_memory_format`` used by the C++ kernels for the output."""
    sizes, strides = input.shape, input.stride()
    if strides[1] == 0:
        return torch.contiguous_format
    minimum = 0
    for dim in (1, 3, 2, 0):
        if sizes[dim] == 0 or strides[dim] < minimum:
            return torch.contiguous_format
        if dim == 0 and minimum == strides[1]:
            return torch.contiguous_format
        minimum = strides[dim] * sizes[dim] if sizes[dim] > 1 else strides[dim]
    return torch.channels_last


@torch.library.register_fake("deeplabv2_ext::aspp")
def _aspp_fake(input: Tensor, weight: Tensor, bias: Tensor | None, rates: list[int]) -> Tensor:
    torch.ops.deeplabv2_ext.aspp_check_args(rates, weight, bias, input)
    batch, _, height, width = input.shape
    output = input.new_empty((batch, weight.shape[1], height, width))
    return output.contiguous(memory_format=_output_memory_format(input))


@torch.library.register_fake("deeplabv2_ext::aspp_backward")
def _aspp_backward_fake(
    grad_output: Tensor, input: Tensor, weight: Tensor, rates: list[int], output_mask: list[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    torch.ops.deeplabv2_ext.aspp_check_args(rates, weight, None, input, grad_output)
    grad_input = (
        torch.empty_like(input, memory_format=_output_memory_format(input))
        if output_mask[0] else input.new_empty((0,))
    )
    grad_weight = (
        torch.empty_like(weight, memory_format=torch.contiguous_format)
        if output_mask[1] else input.new_empty((0,))
    )
    grad_bias = weight.new_empty(weight.shape[:2]) if output_mask[2] else input.new_empty((0,))
    return grad_input, grad_weight, grad_bias


def _aspp_setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    input, weight, bias, rates = inputs
    ctx.save_for_backward(input, weight)
    ctx.rates = rates
    ctx.has_bias = bias is not None


def _aspp_backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
    input, weight = ctx.saved_tensors
    output_mask = [
        ctx.needs_input_grad[0],
        ctx.needs_input_grad[1],
        ctx.has_bias and ctx.needs_input_grad[2],
    ]
    grads = torch.ops.deeplabv2_ext.aspp_backward(grad_output, input, weight, ctx.rates,
                                                  output_mask)
    return tuple(g if needed else None for g, needed in zip(grads, output_mask)) + (None,)


def _setup_nothing(ctx, inputs: tuple, output: tuple) -> None:
    pass


def _double_backward_unsupported(ctx, *grads: Tensor) -> None:
    raise NotImplementedError(
        "deeplabv2_ext.aspp: double backward (a gradient of the gradient) is not supported"
    )


torch.library.register_autograd("deeplabv2_ext::aspp", _aspp_backward,
                                setup_context=_aspp_setup_context)
torch.library.register_autograd("deeplabv2_ext::aspp_backward", _double_backward_unsupported,
                                setup_context=_setup_nothing)


class ASPP(nn.Module):
    """DeepLabV2's atrous spatial pyramid pooling head, fused into one operator.

    ``R = len(rates)`` parallel 3x3 convolutions from ``in_channels`` to ``out_channels`` with
    dilation = padding = rate, summed. ASPP-L is rates (6, 12, 18, 24), ASPP-S (2, 4, 8, 12).
    Parameters: ``weight`` [R, K, C, 3, 3] ~ N(0, 0.01^2) and ``bias`` [R, K] = 0, as in the
    DeepLabV2 Caffe release.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: Sequence[int] = ASPP_L_RATES,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.rates = checked_rates(rates)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"ASPP: in_channels and out_channels must be >= 1, got "
                             f"{in_channels} and {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        factory = {"device": device, "dtype": dtype}
        shape = (len(self.rates), out_channels, in_channels, 3, 3)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(len(self.rates), out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DeepLabV2 initialisation: weights N(0, 0.01^2), biases 0."""
        nn.init.normal_(self.weight, mean=0.0, std=0.01)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return aspp(input, self.weight, self.bias, self.rates)

    @classmethod
    def from_convs(cls, convs: Sequence[nn.Conv2d]) -> ASPP:
        """Build an ASPP from R classic branch convolutions (e.g. a 4-conv ASPP checkpoint).

        Each conv must be ``nn.Conv2d(C, K, 3, padding=d, dilation=d)`` (stride 1, groups 1,
        zero padding); the rates are read from the dilations, the weights and biases copied.
        """
        convs = list(convs)
        if not convs:
            raise ValueError("ASPP.from_convs: need at least one convolution")
        first = convs[0]
        for index, conv in enumerate(convs):
            problem = _branch_conv_problem(conv, first)
            if problem:
                raise ValueError(f"ASPP.from_convs: convs[{index}] {problem}")
        has_bias = first.bias is not None
        if any((conv.bias is not None) != has_bias for conv in convs):
            raise ValueError("ASPP.from_convs: either all convolutions have a bias or none")
        module = cls(first.in_channels, first.out_channels,
                     rates=[conv.dilation[0] for conv in convs], bias=has_bias,
                     device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            module.weight.copy_(torch.stack([conv.weight for conv in convs]))
            if has_bias:
                module.bias.copy_(torch.stack([conv.bias for conv in convs]))
        return module

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, rates={self.rates}, "
                f"bias={self.bias is not None}")


def _branch_conv_problem(conv: nn.Module, first: nn.Conv2d) -> str | None:
    """Why ``conv`` cannot be an ASPP branch next to ``first``, or None when it can."""
    if not isinstance(conv, nn.Conv2d):
        return f"is a {type(conv).__name__}, not an nn.Conv2d"
    if conv.kernel_size != (3, 3):
        return f"must be 3x3, got kernel_size={conv.kernel_size}"
    if conv.stride != (1, 1) or conv.groups != 1:
        return f"must have stride 1 and groups 1, got stride={conv.stride}, groups={conv.groups}"
    if conv.dilation[0] != conv.dilation[1] or conv.padding != conv.dilation:
        return (f"must have equal dilations and padding == dilation, got "
                f"dilation={conv.dilation}, padding={conv.padding}")
    if conv.padding_mode != "zeros":
        return f"must use zero padding, got padding_mode={conv.padding_mode!r}"
    if (conv.in_channels, conv.out_channels) != (first.in_channels, first.out_channels):
        return (f"has {conv.in_channels}->{conv.out_channels} channels but convs[0] has "
                f"{first.in_channels}->{first.out_channels}")
    return None
