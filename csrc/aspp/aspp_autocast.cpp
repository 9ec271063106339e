// Autocast kernels of the ASPP op: like conv2d, it runs in the autocast dtype (float16 or
// bfloat16). The casts happen above the autograd kernel, so gradients flow back to the
// original dtype.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>

namespace deeplabv2_ext::aspp {
namespace {

template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor aspp_autocast(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef rates) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("deeplabv2_ext::aspp", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&,
                                               at::IntArrayRef)>();
  const auto dtype = at::autocast::get_autocast_dtype(device_type);
  const auto cast = [&](const at::Tensor& t) {
    return at::autocast::cached_cast(dtype, t, device_type);
  };
  std::optional<at::Tensor> cast_bias;
  if (bias.has_value() && bias->defined()) cast_bias = cast(*bias);
  return op.call(cast(input), cast(weight), cast_bias, rates);
}

}  // namespace

TORCH_LIBRARY_IMPL(deeplabv2_ext, AutocastCPU, m) {
  m.impl("aspp", &aspp_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(deeplabv2_ext, AutocastCUDA, m) {
  m.impl("aspp", &aspp_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

}  // namespace deeplabv2_ext::aspp
