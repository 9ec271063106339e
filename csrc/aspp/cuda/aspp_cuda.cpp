// CUDA implementation of deeplabv2_ext::aspp / aspp_backward (torch-facing glue).
//
// Checks the arguments (the op's checks, then the CUDA limits), allocates the outputs (output /
// grad_input in output_memory_format(input)), a weight-sized workspace (packed weights or fp32 /
// fp64 gradient accumulators) and fills the torch-free parameter structs of aspp_kernel.cuh. The
// kernels read every tensor through its strides (NCHW, channels_last or arbitrary), so no
// activation-sized copy is ever made. float32 uses TF32 tensor cores iff cuDNN convolutions may
// (at::globalContext().allowTF32CuDNN(at::Float32Op::CONV), as conv2d asks).
#include "../aspp.h"
#include "aspp_kernel.cuh"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

namespace deeplabv2_ext::aspp {
namespace {

DType to_aspp_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kDouble:
      return DType::kFloat64;
    default:
      TORCH_CHECK(false, "aspp (CUDA): unsupported dtype ", t,
                  "; expected float32, float16, bfloat16 or float64");
  }
  return DType::kFloat32;  // unreachable
}

template <size_t D>
void copy_strides(int64_t (&dst)[D], const at::Tensor& t) {
  TORCH_INTERNAL_ASSERT(static_cast<size_t>(t.dim()) == D);
  for (size_t i = 0; i < D; ++i) dst[i] = t.stride(static_cast<int64_t>(i));
}

struct Sizes {
  int64_t N;
  int C, H, W, K, R;
};

// The CUDA kernels' own limits, on top of check_forward_args / check_backward_args (which put
// every tensor on input's device and check shapes and rates): the tensors are on a CUDA device,
// and the sizes are those the launchers take (they return cudaErrorInvalidValue otherwise).
// Returns the sizes as the params structs hold them.
Sizes checked_cuda_sizes(const at::Tensor& input, const at::Tensor& weight,
                         at::IntArrayRef rates) {
  TORCH_CHECK(input.is_cuda(), "aspp (CUDA): input must be a CUDA tensor, got one on ",
              input.device());
  TORCH_CHECK_VALUE(static_cast<int64_t>(rates.size()) <= kAsppMaxRates,
                    "aspp (CUDA): one call of the op takes 1 to ", kAsppMaxRates,
                    " rates (branches), got ", rates.size(),
                    "; deeplabv2_ext.aspp() splits more rates into several calls");
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t K = weight.size(1);
  TORCH_CHECK(N <= kIntMax, "aspp (CUDA): the batch size N must fit in int32, got ", N);
  // Channel blocks of >= 32 per grid row, and gridDim.y <= 65535 (fp64 uses blocks of 32).
  constexpr int64_t kMaxChannels = int64_t(65535) * 32;
  TORCH_CHECK(C <= kMaxChannels && K <= kMaxChannels, "aspp (CUDA): C and K must be at most ",
              kMaxChannels, ", got C = ", C, " and K = ", K);
  TORCH_CHECK(H < kAsppMaxSpatial && W < kAsppMaxSpatial, "aspp (CUDA): H and W must be < ",
              kAsppMaxSpatial, ", got ", H, " x ", W);
  TORCH_CHECK(H * W <= kIntMax, "aspp (CUDA): H * W must fit in int32, got ", H, " x ", W);
  return Sizes{N, static_cast<int>(C), static_cast<int>(H), static_cast<int>(W),
               static_cast<int>(K), static_cast<int>(rates.size())};
}

// The fields every params struct shares: sizes, rates, dtype and the TF32 switch (float32 uses
// TF32 tensor cores iff cuDNN convolutions may, like conv2d). The switch is asked for CONV, as
// conv2d does: without an op, torch raises once the conv and rnn precisions of the
// fp32_precision API differ.
template <typename Params>
void set_problem(Params& p, const Sizes& s, at::IntArrayRef rates, DType dtype) {
  p.N = s.N;
  p.C = s.C;
  p.H = s.H;
  p.W = s.W;
  p.K = s.K;
  p.R = s.R;
  // As given (checked to fit in int): the launchers clamp rates to the map themselves.
  for (int r = 0; r < s.R; ++r) p.rates[r] = static_cast<int>(rates[r]);
  p.dtype = dtype;
  p.allow_tf32 =
      dtype == DType::kFloat32 && at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
}

at::Tensor make_workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

at::Tensor aspp_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef rates) {
  check_forward_args(input, weight, bias, rates);
  const Sizes s = checked_cuda_sizes(input, weight, rates);
  const bool has_bias = bias.has_value() && bias->defined();

  c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output =
      at::empty({s.N, s.K, s.H, s.W}, input.options().memory_format(output_memory_format(input)));
  if (output.numel() == 0) return output;

  AsppFwdParams p;
  p.input = input.data_ptr();
  copy_strides(p.in_stride, input);
  p.weight = weight.data_ptr();
  copy_strides(p.w_stride, weight);
  if (has_bias) {
    p.bias = bias->data_ptr();
    copy_strides(p.b_stride, *bias);
  }
  p.output = output.data_ptr();
  copy_strides(p.out_stride, output);
  set_problem(p, s, rates, to_aspp_dtype(input.scalar_type()));

  at::Tensor workspace = make_workspace(aspp_fwd_workspace_bytes(p), input);
  p.workspace = workspace.data_ptr();
  C10_CUDA_CHECK(launch_aspp_forward(p, c10::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> aspp_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef rates, std::array<bool, 3> output_mask) {
  check_backward_args(grad_output, input, weight, rates);
  const Sizes s = checked_cuda_sizes(input, weight, rates);

  c10::cuda::CUDAGuard guard(input.device());
  const bool need_input = output_mask[0];
  const bool need_weight = output_mask[1];
  const bool need_bias = output_mask[2];
  const bool empty = s.N == 0;  // H, W, C, K >= 1 (checked by check_backward_args)

  at::Tensor grad_input =
      need_input ? at::empty({s.N, s.C, s.H, s.W},
                             input.options().memory_format(output_memory_format(input)))
                 : at::empty({0}, input.options());
  const auto wopts = weight.options().memory_format(at::MemoryFormat::Contiguous);
  // An empty batch contributes nothing: the parameter gradients are zeros.
  at::Tensor grad_weight = need_weight ? (empty ? at::zeros(weight.sizes(), wopts)
                                                : at::empty(weight.sizes(), wopts))
                                       : at::empty({0}, input.options());
  at::Tensor grad_bias = need_bias ? (empty ? at::zeros({s.R, s.K}, wopts)
                                            : at::empty({s.R, s.K}, wopts))
                                   : at::empty({0}, input.options());
  if (empty) return std::make_tuple(grad_input, grad_weight, grad_bias);

  const DType dtype = to_aspp_dtype(input.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  if (need_input) {
    AsppDgradParams p;
    p.grad_output = grad_output.data_ptr();
    copy_strides(p.go_stride, grad_output);
    p.weight = weight.data_ptr();
    copy_strides(p.w_stride, weight);
    p.grad_input = grad_input.data_ptr();
    copy_strides(p.gi_stride, grad_input);
    set_problem(p, s, rates, dtype);
    at::Tensor workspace = make_workspace(aspp_dgrad_workspace_bytes(p), input);
    p.workspace = workspace.data_ptr();
    C10_CUDA_CHECK(launch_aspp_dgrad(p, stream));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  if (need_weight || need_bias) {
    // The weight and bias gradients are sums of fp32 / fp64 atomicAdds, in an order that changes
    // from run to run (seen on the CUDA-on-CPU layer with shuffled block orders).
    at::globalContext().alertNotDeterministic("aspp_backward (CUDA): grad_weight / grad_bias");
    AsppWgradParams p;
    p.grad_output = grad_output.data_ptr();
    copy_strides(p.go_stride, grad_output);
    p.input = input.data_ptr();
    copy_strides(p.in_stride, input);
    if (need_weight) {
      p.grad_weight = grad_weight.data_ptr();
      copy_strides(p.gw_stride, grad_weight);
    }
    if (need_bias) {
      p.grad_bias = grad_bias.data_ptr();
      copy_strides(p.gb_stride, grad_bias);
    }
    set_problem(p, s, rates, dtype);
    at::Tensor workspace = make_workspace(aspp_wgrad_workspace_bytes(p), input);
    p.workspace = workspace.data_ptr();
    C10_CUDA_CHECK(launch_aspp_wgrad(p, stream));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return std::make_tuple(grad_input, grad_weight, grad_bias);
}

}  // namespace
}  // namespace deeplabv2_ext::aspp

TORCH_LIBRARY_IMPL(deeplabv2_ext, CUDA, m) {
  m.impl("aspp", &deeplabv2_ext::aspp::aspp_forward_cuda);
  m.impl("aspp_backward", &deeplabv2_ext::aspp::aspp_backward_cuda);
}
