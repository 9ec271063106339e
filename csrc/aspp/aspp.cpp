// The ASPP op's schema and the argument checks shared by its CPU and CUDA kernels.
#include "aspp.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

namespace deeplabv2_ext::aspp {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_rates(at::IntArrayRef rates, int64_t num_branches) {
  TORCH_CHECK_VALUE(num_branches >= 1, "aspp: weight must have R >= 1 branches, got R = ",
                    num_branches);
  TORCH_CHECK_VALUE(static_cast<int64_t>(rates.size()) == num_branches,
                    "aspp: len(rates) must equal the number of branches R = weight.size(0) = ",
                    num_branches, ", got ", rates.size(), " rates ", rates);
  for (const int64_t rate : rates) {
    TORCH_CHECK_VALUE(rate >= 1, "aspp: rates must be positive integers, got ", rates);
    TORCH_CHECK_VALUE(rate <= std::numeric_limits<int32_t>::max() / 4,
                      "aspp: rate ", rate, " is too large");
  }
}

void check_same_device_and_dtype(const at::Tensor& reference, const at::Tensor& other,
                                 const char* name) {
  TORCH_CHECK_VALUE(other.device() == reference.device(),
                    "aspp: all tensors must be on the same device, but input is on ",
                    reference.device(), " and ", name, " is on ", other.device());
  TORCH_CHECK_TYPE(other.scalar_type() == reference.scalar_type(),
                   "aspp: all tensors must have the same dtype, but input is ",
                   reference.scalar_type(), " and ", name, " is ", other.scalar_type());
}

}  // namespace

void check_forward_args(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef rates) {
  TORCH_CHECK_VALUE(input.defined() && weight.defined(), "aspp: input and weight must be defined");
  TORCH_CHECK_VALUE(input.layout() == at::kStrided && weight.layout() == at::kStrided,
                    "aspp: sparse tensors are not supported");
  TORCH_CHECK_VALUE(input.dim() == 4, "aspp: input must be 4-D [N, C, H, W], got a ",
                    input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 5, "aspp: weight must be 5-D [R, K, C, 3, 3], got a ",
                    weight.dim(), "-D tensor of shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(3) == 3 && weight.size(4) == 3,
                    "aspp: weight must have 3x3 kernels, i.e. shape [R, K, C, 3, 3], got ",
                    weight.sizes());
  TORCH_CHECK_TYPE(is_supported_dtype(input.scalar_type()),
                   "aspp: input must be a floating point tensor (float32, float16, bfloat16 or "
                   "float64), got ", input.scalar_type());
  check_same_device_and_dtype(input, weight, "weight");
  TORCH_CHECK_VALUE(input.size(1) >= 1 && weight.size(1) >= 1,
                    "aspp: the channel counts C and K must be at least 1, got input ",
                    input.sizes(), " and weight ", weight.sizes());
  TORCH_CHECK_VALUE(input.size(1) == weight.size(2), "aspp: input has C = ", input.size(1),
                    " channels but weight [R, K, C, 3, 3] expects C = ", weight.size(2),
                    " channels");
  TORCH_CHECK_VALUE(input.size(2) >= 1 && input.size(3) >= 1,
                    "aspp: input height and width must be at least 1, got ", input.sizes());
  check_rates(rates, weight.size(0));
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->layout() == at::kStrided, "aspp: sparse bias is not supported");
    check_same_device_and_dtype(input, *bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 2 && bias->size(0) == weight.size(0) &&
                          bias->size(1) == weight.size(1),
                      "aspp: bias must have shape [R, K] = [", weight.size(0), ", ",
                      weight.size(1), "], got ", bias->sizes());
  }
}

void check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                         const at::Tensor& weight, at::IntArrayRef rates) {
  check_forward_args(input, weight, std::nullopt, rates);
  TORCH_CHECK_VALUE(grad_output.defined(), "aspp_backward: grad_output must be defined");
  check_same_device_and_dtype(input, grad_output, "grad_output");
  TORCH_CHECK_VALUE(grad_output.dim() == 4 && grad_output.size(0) == input.size(0) &&
                        grad_output.size(1) == weight.size(1) &&
                        grad_output.size(2) == input.size(2) &&
                        grad_output.size(3) == input.size(3),
                    "aspp_backward: grad_output must have shape [N, K, H, W] = [", input.size(0),
                    ", ", weight.size(1), ", ", input.size(2), ", ", input.size(3), "], got ",
                    grad_output.sizes());
}

at::MemoryFormat output_memory_format(const at::Tensor& input) {
  return input.suggest_memory_format();
}

TORCH_LIBRARY_FRAGMENT(deeplabv2_ext, m) {
  m.def("aspp(Tensor input, Tensor weight, Tensor? bias, int[] rates) -> Tensor");
  m.def(
      "aspp_backward(Tensor grad_output, Tensor input, Tensor weight, int[] rates, "
      "bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}

}  // namespace deeplabv2_ext::aspp
