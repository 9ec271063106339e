// Torch-free interface between the ASPP CUDA glue (aspp_cuda.cpp) and the CUDA kernels
// (aspp_fwd_kernel.cu, aspp_dgrad_kernel.cu, aspp_wgrad_kernel.cu).
//
// Flash-attention style: plain structs of raw pointers, sizes and element strides, filled by the
// glue and passed to host launchers. Nothing here may include torch / ATen / c10 headers: CI
// compiles the .cu files with plain nvcc against a CPU-only torch.
//
// Conventions
//   * All strides are in elements (not bytes) and 64-bit; tensors may be NCHW, channels_last or
//     arbitrarily strided (stride 0 is fine for reading, e.g. an expanded grad_output).
//   * Shapes: input [N, C, H, W]; weight [R, K, C, 3, 3]; bias [R, K]; output [N, K, H, W].
//   * Branch r is a 3x3 conv with padding = dilation = rates[r]; output = sum_r conv_r + sum_r bias_r.
//   * Every launcher needs a device workspace of aspp_*_workspace_bytes(params) bytes (weight
//     sized: packed / padded weights or fp32 gradient accumulators); the glue allocates it, any
//     256-byte aligned allocation works. The launchers initialise it themselves.
//   * Launchers enqueue on `stream` and return cudaPeekAtLastError() (the sticky error state is
//     left untouched, so C10_CUDA_KERNEL_LAUNCH_CHECK() in the glue also sees launch failures), or
//     cudaErrorInvalidValue for arguments they do not support (bad dtype, too many rates).
//   * N == 0 (no pixels) is handled by the glue: the launchers must not be called then.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../../common/dtype.h"
#include "../aspp_limits.h"  // kAsppMaxRates

namespace deeplabv2_ext {
namespace aspp {

// H and W must be below this (keeps every shifted coordinate inside int32).
constexpr int64_t kAsppMaxSpatial = int64_t(1) << 28;

// What every launcher computes on: sizes, rates, dtype, workspace. The three params structs add
// their tensors; each launcher checks the problem against its device limits with one function
// (problem_ok in aspp_conv_common.cuh).
struct AsppProblem {
  void* workspace = nullptr;  // aspp_*_workspace_bytes() bytes
  int64_t N = 0;
  int C = 0, H = 0, W = 0, K = 0, R = 0;
  int rates[kAsppMaxRates] = {};
  DType dtype = DType::kFloat32;
  bool allow_tf32 = false;  // float32 only: use TF32 tensor cores
};

struct AsppFwdParams : AsppProblem {
  const void* input = nullptr;  // [N, C, H, W]
  int64_t in_stride[4] = {0, 0, 0, 0};
  const void* weight = nullptr;  // [R, K, C, 3, 3]
  int64_t w_stride[5] = {0, 0, 0, 0, 0};
  const void* bias = nullptr;  // [R, K] or nullptr
  int64_t b_stride[2] = {0, 0};
  void* output = nullptr;  // [N, K, H, W]
  int64_t out_stride[4] = {0, 0, 0, 0};
};

// grad_input = sum over taps of the transposed-tap conv of grad_output with weight.
struct AsppDgradParams : AsppProblem {
  const void* grad_output = nullptr;  // [N, K, H, W]
  int64_t go_stride[4] = {0, 0, 0, 0};
  const void* weight = nullptr;  // [R, K, C, 3, 3]
  int64_t w_stride[5] = {0, 0, 0, 0, 0};
  void* grad_input = nullptr;  // [N, C, H, W]
  int64_t gi_stride[4] = {0, 0, 0, 0};
};

// grad_weight (if grad_weight != nullptr) and grad_bias (if grad_bias != nullptr).
struct AsppWgradParams : AsppProblem {
  const void* grad_output = nullptr;  // [N, K, H, W]
  int64_t go_stride[4] = {0, 0, 0, 0};
  const void* input = nullptr;  // [N, C, H, W] (unused when grad_weight == nullptr)
  int64_t in_stride[4] = {0, 0, 0, 0};
  void* grad_weight = nullptr;  // [R, K, C, 3, 3] or nullptr
  int64_t gw_stride[5] = {0, 0, 0, 0, 0};
  void* grad_bias = nullptr;  // [R, K] or nullptr
  int64_t gb_stride[2] = {0, 0};
};

size_t aspp_fwd_workspace_bytes(const AsppFwdParams& p);
size_t aspp_dgrad_workspace_bytes(const AsppDgradParams& p);
size_t aspp_wgrad_workspace_bytes(const AsppWgradParams& p);

cudaError_t launch_aspp_forward(const AsppFwdParams& p, cudaStream_t stream);
cudaError_t launch_aspp_dgrad(const AsppDgradParams& p, cudaStream_t stream);
cudaError_t launch_aspp_wgrad(const AsppWgradParams& p, cudaStream_t stream);

}  // namespace aspp
}  // namespace deeplabv2_ext
