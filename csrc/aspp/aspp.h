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
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/ArrayRef.h>

#include <optional>

namespace deeplabv2_ext::aspp {

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
