// Fused ASPP data gradient:
//   grad_input[n, c, y, x] = sum_r sum_{ky,kx} sum_k grad_output[n, k, y - (ky-1) d_r, x - (kx-1) d_r]
//                                                   * weight[r, k, c, ky, kx]
// i.e. the forward's fused implicit GEMM on the transposed problem: grad_output (K channels) is its
// input, grad_input (C channels) its output, the taps mirrored (sign = -1): M = N*H*W pixels,
// N_gemm = C, K_gemm = (1 + 8R) * K. One launch covers all R branches; the centre tap is again
// shared (branch-summed weight, grad_output window read once per chunk). Tiles, smem staging and
// tensor-core paths are those of aspp_igemm_kernel (aspp_conv_common.cuh, documented in
// aspp_fwd_kernel.cu). Here the reduction is short (K = 21 -> one chunk of 32 channels per tap)
// and the GEMM N is wide (C = 2048 -> grid.y = 32 blocks of 64 channels).
//
// Packed weight: Wd[t][k][c] (t < 1 + 8R, k < roundup(K, chunk), c < roundup(C, BlockOutCh)), zero
// padded; Wd[0] = sum_r weight[r, :, :, 1, 1] (fp32 / fp64 sum).
// NOTE: written and compile-checked without a GPU; validate against the CPU reference.
#include "aspp_conv_common.cuh"

namespace deeplabv2_ext {
namespace aspp {
namespace detail {
namespace {

// dgrad is the forward's implicit GEMM on the transposed problem: grad_output (K channels) is
// its input, grad_input (C channels) its output, the taps mirrored.
IgemmLayout dgrad_layout(const AsppDgradParams& p) {
  return igemm_layout(p.dtype, p.R, /*in_channels=*/p.K, /*out_channels=*/p.C);
}

bool dgrad_params_ok(const AsppDgradParams& p) {
  if (p.grad_output == nullptr || p.weight == nullptr || p.grad_input == nullptr) return false;
  return igemm_problem_ok(p, /*in_channels=*/p.K, /*out_channels=*/p.C);
}

template <class Pol>
cudaError_t run_dgrad(const AsppDgradParams& p, cudaStream_t stream) {
  using T = typename Pol::T;
  const IgemmLayout L = dgrad_layout(p);
  T* packed_weight = static_cast<T*>(p.workspace);
  launch_pack_tap_weight<T, typename Pol::Acc, false>(p.weight, make_strides5(p.w_stride), p.R, p.K,
                                                      p.C, L.in_channels_pad, L.out_channels_pad,
                                                      L.ntaps, packed_weight, stream);
  const IgemmInput transposed_in{p.grad_output, p.go_stride, p.K};
  const IgemmOutput transposed_out{p.grad_input, p.gi_stride, p.C};
  launch_igemm<Pol>(p, transposed_in, transposed_out, packed_weight, /*bias=*/nullptr, L,
                    /*sign=*/-1, stream);
  return cudaPeekAtLastError();
}

}  // namespace
}  // namespace detail

size_t aspp_dgrad_workspace_bytes(const AsppDgradParams& p) {
  return detail::dgrad_layout(p).packed_weight_bytes;
}

cudaError_t launch_aspp_dgrad(const AsppDgradParams& p, cudaStream_t stream) {
  using namespace detail;
  if (!dgrad_params_ok(p)) return cudaErrorInvalidValue;
  return ASPP_POLICY_SWITCH(p.dtype, p.allow_tf32, Pol, [&] { return run_dgrad<Pol>(p, stream); });
}

}  // namespace aspp
}  // namespace deeplabv2_ext
