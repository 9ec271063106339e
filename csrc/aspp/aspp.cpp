// The ASPP op's schema and its argument checks (see aspp.h), shared by the CPU and CUDA kernels
// and, through the op aspp_check_args, by the Python wrapper and fake kernels.
#include "aspp.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

namespace deeplabv2_ext::aspp {
namespace {

// The largest rate: keeps every shifted coordinate (up to 2 * rate past the map) inside int32.
constexpr int64_t kMaxRate = std::numeric_limits<int32_t>::max() / 4;

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
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

bool has_value(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// What Python calls: every check that the given arguments allow, the same functions the kernels
// run. rates alone: check_rates; with weight (and bias): check_branches; with input too:
// check_forward_args; with grad_output too: check_backward_args (bias must then be None).
void check_args(at::IntArrayRef rates, const std::optional<at::Tensor>& weight,
                const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& input,
                const std::optional<at::Tensor>& grad_output) {
  TORCH_CHECK(has_value(weight) || !(has_value(bias) || has_value(input) || has_value(grad_output)),
              "aspp_check_args: bias, input and grad_output need weight");
  TORCH_CHECK(has_value(input) || !has_value(grad_output),
              "aspp_check_args: grad_output needs input");
  TORCH_CHECK(!(has_value(grad_output) && has_value(bias)),
              "aspp_check_args: the backward takes no bias");
  if (has_value(grad_output)) {
    check_backward_args(*grad_output, *input, *weight, rates);
  } else if (has_value(input)) {
    check_forward_args(*input, *weight, bias, rates);
  } else if (has_value(weight)) {
    check_branches(*weight, bias, rates);
  } else {
    check_rates(rates);
  }
}

}  // namespace

void check_rates(at::IntArrayRef rates) {
  TORCH_CHECK_VALUE(!rates.empty(), "aspp: rates must be a non-empty list of positive integers, "
                    "got ", rates);
  for (const int64_t rate : rates) {
    TORCH_CHECK_VALUE(rate >= 1, "aspp: rates must be positive integers, got ", rates);
    TORCH_CHECK_VALUE(rate <= kMaxRate, "aspp: rate ", rate, " is too large (at most ", kMaxRate,
                      ")");
  }
}

void check_branches(const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    at::IntArrayRef rates) {
  TORCH_CHECK_VALUE(weight.defined(), "aspp: weight must be defined");
  TORCH_CHECK_VALUE(weight.layout() == at::kStrided, "aspp: sparse tensors are not supported");
  TORCH_CHECK_VALUE(weight.dim() == 5, "aspp: weight must be 5-D [R, K, C, 3, 3], got a ",
                    weight.dim(), "-D tensor of shape ", weight.sym_sizes());
  TORCH_CHECK_VALUE(weight.sym_size(3) == 3 && weight.sym_size(4) == 3,
                    "aspp: weight must have 3x3 kernels, i.e. shape [R, K, C, 3, 3], got ",
                    weight.sym_sizes());
  const c10::SymInt& num_branches = weight.sym_size(0);
  TORCH_CHECK_VALUE(num_branches == static_cast<int64_t>(rates.size()),
                    "aspp: len(rates) must equal the number of branches R = weight.size(0) = ",
                    num_branches, ", got ", rates.size(), " rates ", rates);
  check_rates(rates);
  if (has_value(bias)) {
    TORCH_CHECK_VALUE(bias->layout() == at::kStrided, "aspp: sparse bias is not supported");
    TORCH_CHECK_VALUE(bias->dim() == 2 && bias->sym_size(0) == num_branches &&
                          bias->sym_size(1) == weight.sym_size(1),
                      "aspp: bias must have shape [R, K] = [", num_branches, ", ",
                      weight.sym_size(1), "], got ", bias->sym_sizes());
  }
}

void check_forward_args(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef rates) {
  TORCH_CHECK_VALUE(input.defined(), "aspp: input must be defined");
  TORCH_CHECK_VALUE(input.layout() == at::kStrided, "aspp: sparse tensors are not supported");
  TORCH_CHECK_VALUE(input.dim() == 4, "aspp: input must be 4-D [N, C, H, W], got a ",
                    input.dim(), "-D tensor of shape ", input.sym_sizes());
  check_branches(weight, bias, rates);
  TORCH_CHECK_TYPE(is_supported_dtype(input.scalar_type()),
                   "aspp: input must be a floating point tensor (float32, float16, bfloat16 or "
                   "float64), got ", input.scalar_type());
  check_same_device_and_dtype(input, weight, "weight");
  if (has_value(bias)) check_same_device_and_dtype(input, *bias, "bias");
  TORCH_CHECK_VALUE(input.sym_size(1) >= 1 && weight.sym_size(1) >= 1,
                    "aspp: the channel counts C and K must be at least 1, got input ",
                    input.sym_sizes(), " and weight ", weight.sym_sizes());
  TORCH_CHECK_VALUE(input.sym_size(1) == weight.sym_size(2), "aspp: input has C = ",
                    input.sym_size(1), " channels but weight [R, K, C, 3, 3] expects C = ",
                    weight.sym_size(2), " channels");
  TORCH_CHECK_VALUE(input.sym_size(2) >= 1 && input.sym_size(3) >= 1,
                    "aspp: input height and width must be at least 1, got ", input.sym_sizes());
}

void check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                         const at::Tensor& weight, at::IntArrayRef rates) {
  check_forward_args(input, weight, std::nullopt, rates);
  TORCH_CHECK_VALUE(grad_output.defined(), "aspp_backward: grad_output must be defined");
  check_same_device_and_dtype(input, grad_output, "grad_output");
  TORCH_CHECK_VALUE(grad_output.dim() == 4 && grad_output.sym_size(0) == input.sym_size(0) &&
                        grad_output.sym_size(1) == weight.sym_size(1) &&
                        grad_output.sym_size(2) == input.sym_size(2) &&
                        grad_output.sym_size(3) == input.sym_size(3),
                    "aspp_backward: grad_output must have shape [N, K, H, W] = [",
                    input.sym_size(0), ", ", weight.sym_size(1), ", ", input.sym_size(2), ", ",
                    input.sym_size(3), "], got ", grad_output.sym_sizes());
}

at::MemoryFormat output_memory_format(const at::Tensor& input) {
  return input.suggest_memory_format();
}

TORCH_LIBRARY_FRAGMENT(deeplabv2_ext, m) {
  m.def("aspp(Tensor input, Tensor weight, Tensor? bias, int[] rates) -> Tensor");
  m.def(
      "aspp_backward(Tensor grad_output, Tensor input, Tensor weight, int[] rates, "
      "bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // Raises what the op would raise for these arguments; returns nothing. A composite op (no
  // device kernel): it runs the checks above directly on real, meta or fake tensors.
  m.def(
      "aspp_check_args(int[] rates, Tensor? weight=None, Tensor? bias=None, "
      "Tensor? input=None, Tensor? grad_output=None) -> ()",
      &check_args);
}

// Under torch.vmap the checks see each sample's shapes (a batched tensor's sizes are its
// logical ones), as the op calls do through vmap's fallback, which cannot run an op that
// returns nothing: aspp() checks the whole call of more than kAsppMaxRates rates this way.
TORCH_LIBRARY_IMPL(deeplabv2_ext, FuncTorchBatched, m) {
  m.impl("aspp_check_args", &check_args);
}

}  // namespace deeplabv2_ext::aspp
