// Torch-facing declarations shared by the ASPP op's CPU and CUDA kernels.
//
// The schema lives in aspp.cpp:
//   aspp(Tensor input, Tensor weight, Tensor? bias, int[] rates) -> Tensor
//   aspp_backward(Tensor grad_output, Tensor input, Tensor weight, int[] rates,
//                 bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)
// Shapes: input [N, C, H, W]; weight [R, K, C, 3, 3]; bias [R, K]; output [N, K, H, W].
// Branch r is a 3x3 convolution with dilation = padding = rates[r]; the output is the sum of the
// branches plus the sum of their biases. A gradient whose output_mask entry is false is returned
// as an empty tensor of shape [0].
//
// The argument checks below are the only definition of the op's rules. The kernels call them;
// Python reaches them through the op aspp_check_args (aspp.cpp): the fake kernels, the split of
// more than kAsppMaxRates rates and the modules' constructors. They read metadata only (sizes as
// SymInts, dtypes, devices, layouts), never data, so they accept meta and fake tensors. Each
// device adds only its own limits, in one place: check_cpu_args (cpu/aspp_kernel.cpp) and
// checked_cuda_sizes (cuda/aspp_cuda.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/ArrayRef.h>

#include <optional>

namespace deeplabv2_ext::aspp {

// TORCH_CHECKs the rates alone: at least one, each in [1, kMaxRate].
void check_rates(at::IntArrayRef rates);

// TORCH_CHECKs the branch structure: weight [R, K, C, 3, 3] with R = len(rates), valid rates,
// bias (if any) [R, K]. No dtypes or devices: deeplabv2_ext.aspp runs it on the whole call
// before splitting more than kAsppMaxRates rates into op calls (autocast casts each call).
void check_branches(const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    at::IntArrayRef rates);

// TORCH_CHECKs every property of the forward arguments (dims, shapes, rates, dtypes, devices).
void check_forward_args(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef rates);

// TORCH_CHECKs the backward arguments, including grad_output's shape [N, K, H, W].
void check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                         const at::Tensor& weight, at::IntArrayRef rates);

// The memory format of the output (and of grad_input): channels_last when the input is laid out
// channels_last, contiguous otherwise. The fake kernel in deeplabv2_ext/aspp.py mirrors this rule.
at::MemoryFormat output_memory_format(const at::Tensor& input);

}  // namespace deeplabv2_ext::aspp
