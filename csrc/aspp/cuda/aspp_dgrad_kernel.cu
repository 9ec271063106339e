// Fused ASPP data gradient:
//   grad_input[n, c, y, x] = sum_r sum_{ky,kx} sum_k grad_output[n, k, y - (ky-1) d_r, x - (kx-1) d_r]
//                                                   * weight[r, k, c, ky, kx]
// i.e. the forward's fused implicit GEMM with the taps mirrored (sign = -1) and the weight's
// in/out channels swapped: M = N*H*W pixels, N_gemm = C, K_gemm = (1 + 8R) * K. One launch covers
// all R branches; the centre tap is again shared (branch-summed weight, grad_output window read
// once per chunk). It reuses aspp_igemm_kernel from aspp_conv_common.cuh, so tiles, smem staging,
// tensor-core paths (fp16/bf16 WMMA, tf32 when allowed, exact SIMT fp32/fp64) and the
// FLOP/byte reasoning are as documented in aspp_fwd_kernel.cu. Here the reduction is short
// (K = 21 -> one chunk of 32 channels per tap) and the GEMM N is wide (C = 2048 -> grid.y = 32
// blocks of 64 channels); the grad_output windows those blocks re-read are L2 resident
// (N*K*H*W is ~10x smaller than the input).
//
// Packed weight: Wd[t][k][c] (t < 1 + 8R, k < Kin_pad = roundup(K, CC), c < Cout_pad =
// roundup(C, BK)), zero padded; Wd[0] = sum_r weight[r, :, :, 1, 1] (fp32 / fp64 sum).
// NOTE: written and compile-checked without a GPU; validate against the CPU reference.
#include "aspp_conv_common.cuh"

namespace deeplabv2_ext {
namespace aspp {
namespace detail {
namespace {

struct DgradLayout {
  int CC, BK, Kin_pad, Cout_pad, ntaps;
  size_t total;
};

DgradLayout dgrad_layout(const AsppDgradParams& p) {
  DgradLayout L;
  const int es = element_size(p.dtype);
  L.CC = 64 / es;
  L.BK = pick_block_n(p.C, es);
  L.Kin_pad = static_cast<int>(ceil_div(p.K, L.CC) * L.CC);
  L.Cout_pad = static_cast<int>(ceil_div(p.C, L.BK) * L.BK);
  L.ntaps = num_taps(p.R);
  L.total = align_up(static_cast<size_t>(L.ntaps) * L.Kin_pad * L.Cout_pad * es);
  return L;
}

bool dgrad_params_ok(const AsppDgradParams& p) {
  if (p.grad_output == nullptr || p.weight == nullptr || p.grad_input == nullptr) return false;
  if (p.N < 1 || p.C < 1 || p.H < 1 || p.W < 1 || p.K < 1) return false;
  if (p.N > INT32_MAX) return false;  // pixel_coords() keeps n in an int
  if (p.R < 1 || p.R > kAsppMaxRates) return false;
  if (p.H >= kAsppMaxSpatial || p.W >= kAsppMaxSpatial) return false;
  for (int r = 0; r < p.R; ++r)
    if (p.rates[r] < 1) return false;
  if (static_cast<int64_t>(p.H) * p.W >= (int64_t(1) << 31)) return false;
  const int64_t M = p.N * p.H * p.W;
  // pipeline stage count (channel chunks x taps) must fit in int
  if (ceil_div(p.K, 64 / element_size(p.dtype)) * num_taps(p.R) >= (int64_t(1) << 31)) return false;
  if (ceil_div(M, kIgemmBM) >= (int64_t(1) << 31)) return false;
  if (ceil_div(p.C, pick_block_n(p.C, element_size(p.dtype))) > 65535) return false;
  return true;
}

template <class Pol>
cudaError_t run_dgrad(const AsppDgradParams& p, const DgradLayout& L, cudaStream_t stream) {
  using T = typename Pol::T;
  using Acc = typename Pol::Acc;
  T* wp = static_cast<T*>(p.workspace);
  launch_pack_tap_weight<T, Acc, false>(p.weight, make_strides5(p.w_stride), p.R, p.K, p.C,
                                     L.Kin_pad, L.Cout_pad, L.ntaps, wp, stream);

  IgemmArgs<T, Acc> a;
  a.in = static_cast<const T*>(p.grad_output);
  a.in_s = make_strides4(p.go_stride);
  a.wp = wp;
  a.bias = nullptr;
  a.out = static_cast<T*>(p.grad_input);
  a.out_s = make_strides4(p.gi_stride);
  a.HW = static_cast<int64_t>(p.H) * p.W;
  a.M = p.N * a.HW;
  a.H = p.H;
  a.W = p.W;
  a.Cin = p.K;
  a.Cout = p.C;
  a.Cin_pad = L.Kin_pad;
  a.Cout_pad = L.Cout_pad;
  a.ntaps = L.ntaps;
  a.R = p.R;
  a.sign = -1;
  a.out_chan_fast = channel_fast(a.out_s, p.C);
  for (int r = 0; r < kAsppMaxRates; ++r) a.rates[r] = r < p.R ? clamp_rate(p.rates[r], p.H, p.W) : 0;
  const int mode = pick_load_mode(p.grad_output, static_cast<int>(sizeof(T)), a.in_s, p.K);
  launch_igemm<Pol>(a, L.BK, mode, stream);
  return cudaPeekAtLastError();
}

}  // namespace
}  // namespace detail

size_t aspp_dgrad_workspace_bytes(const AsppDgradParams& p) { return detail::dgrad_layout(p).total; }

cudaError_t launch_aspp_dgrad(const AsppDgradParams& p, cudaStream_t stream) {
  using namespace detail;
  if (!dgrad_params_ok(p) || p.workspace == nullptr) return cudaErrorInvalidValue;
  const DgradLayout L = dgrad_layout(p);
  return dispatch_policy(p.dtype, p.allow_tf32, [&](auto policy) {
    return run_dgrad<typename decltype(policy)::type>(p, L, stream);
  });
}

}  // namespace aspp
}  // namespace deeplabv2_ext
