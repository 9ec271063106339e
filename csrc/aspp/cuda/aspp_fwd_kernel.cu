// Fused ASPP forward: output = sum_r conv3x3(input, weight[r], dilation = padding = rates[r]) + sum_r bias[r]
// in ONE implicit-GEMM kernel launch (plus a weight-packing and a bias-summing kernel).
//
// GEMM view:  M = N*H*W output pixels,  N_gemm = K output channels,  K_gemm = (1 + 8R) * C.
//   The centre tap (ky, kx) = (1, 1) reads the same input window for every branch, so it is one
//   GEMM "tap" whose weight is sum_r weight[r, :, :, 1, 1] (summed in fp32/fp64 when packing):
//   its input tile is read once per channel chunk instead of R times, and R-1 MMAs per chunk are
//   saved. The 8R off-centre taps each read their own shifted window. No per-branch outputs, no
//   im2col buffer: the only extra memory is the packed weight (weight sized) in the workspace.
//
// The kernel (aspp_igemm_kernel in aspp_conv_common.cuh, shared with dgrad):
//   CTA tile: 128 output pixels (linear over N*H*W, so odd H, W waste nothing) x BlockOutCh output
//     channels, BlockOutCh = 16 / 32 / 64 picked from K (21 -> 32: 2 WMMA n-fragments, masked
//     store; 256 -> grid.y = 4 blocks of 64). 256 threads = 8 warps.
//   Mainloop: one stage = (channel chunk, tap), chunk-major; a chunk is 64 bytes of channels per
//     pixel (32 fp16/bf16, 16 fp32, 8 fp64). Per stage the CTA stages in shared memory
//       A: [128 px][chunk] input window of that tap (zero-filled outside the map / past C),
//       B: [chunk][BlockOutCh] packed weight slice (zero padded, so never masked),
//     double buffered through registers (double_buffered_mainloop). The 1 + 8R windows of a chunk
//     are read back to back, so windows of small rates overlap in L1/L2. Global reads use 16-byte
//     vectors along channels when the input is channels_last-like and 16-byte aligned (checked at
//     runtime), otherwise scalar loads with a coalescing-aware thread mapping, any strides.
//   MMA step (IgemmMma): fp16 / bf16 -> WMMA m16n16k16, fp32 accumulate, warp w owns pixel rows
//     16w..16w+15; fp32 with allow_tf32 -> WMMA m16n16k8 tf32; fp32 otherwise and fp64 -> exact
//     SIMT FMA, 4 x BlockOutCh/8 register micro-tile per thread (fp64 accumulates in fp64).
//   Epilogue: + summed bias, convert, masked store with the output's strides (NCHW or
//     channels_last); WMMA goes through fp32 smem that aliases the pipeline buffers.
//   Smem: <= 37 KiB static per CTA (2 CTAs/SM guaranteed by __launch_bounds__).
// Whether the kernel is bound by L2 -> SM traffic or by the tensor cores has not been measured;
// the arithmetic behind both predictions is in benchmarks/NOTES.md (issue 19 section).
//
// Limits: R <= kAsppMaxRates (64); H, W < 2^28; ceil(N*H*W / 128) < 2^31 (problem_ok).
// NOTE: written and compile-checked without a GPU; validate against the CPU reference.
#include "aspp_conv_common.cuh"

namespace deeplabv2_ext {
namespace aspp {
namespace detail {
namespace {

// out[k] = sum_r bias[r, k] for k < K, 0 for K <= k < out_channels_pad.
template <typename T, typename Acc>
__global__ void aspp_sum_bias_kernel(const T* __restrict__ b, int64_t s0, int64_t s1, int R, int K,
                                     int out_channels_pad, Acc* __restrict__ out) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= out_channels_pad) return;
  Acc v = Acc(0);
  if (k < K)
    for (int r = 0; r < R; ++r) v += to_acc(b[static_cast<int64_t>(r) * s0 + static_cast<int64_t>(k) * s1]);
  out[k] = v;
}

// Workspace: the packed weight [ntaps][C_pad][K_pad], then the branch-summed bias [K_pad] (Acc).
struct FwdLayout {
  IgemmLayout igemm;
  size_t bias_offset, total;
};

FwdLayout fwd_layout(const AsppFwdParams& p) {
  FwdLayout L;
  L.igemm = igemm_layout(p.dtype, p.R, /*in_channels=*/p.C, /*out_channels=*/p.K);
  L.bias_offset = L.igemm.packed_weight_bytes;
  L.total = L.bias_offset + align_up(static_cast<size_t>(L.igemm.out_channels_pad) * acc_size(p.dtype));
  return L;
}

bool fwd_params_ok(const AsppFwdParams& p) {
  if (p.input == nullptr || p.weight == nullptr || p.output == nullptr) return false;
  return igemm_problem_ok(p, /*in_channels=*/p.C, /*out_channels=*/p.K);
}

template <class Pol>
cudaError_t run_forward(const AsppFwdParams& p, cudaStream_t stream) {
  using T = typename Pol::T;
  using Acc = typename Pol::Acc;
  const FwdLayout L = fwd_layout(p);
  T* packed_weight = static_cast<T*>(p.workspace);
  Acc* bias = nullptr;

  launch_pack_tap_weight<T, Acc, true>(p.weight, make_strides5(p.w_stride), p.R, p.K, p.C,
                                       L.igemm.in_channels_pad, L.igemm.out_channels_pad,
                                       L.igemm.ntaps, packed_weight, stream);
  if (p.bias != nullptr) {
    bias = reinterpret_cast<Acc*>(static_cast<unsigned char*>(p.workspace) + L.bias_offset);
    launch_kernel<aspp_sum_bias_kernel<T, Acc>>(
        static_cast<unsigned>(ceil_div(L.igemm.out_channels_pad, 256)), 256, 0, stream,
        static_cast<const T*>(p.bias), p.b_stride[0], p.b_stride[1], p.R, p.K,
        L.igemm.out_channels_pad, bias);
  }
  launch_igemm<Pol>(p, IgemmInput{p.input, p.in_stride, p.C}, IgemmOutput{p.output, p.out_stride, p.K},
                    packed_weight, bias, L.igemm, /*sign=*/1, stream);
  return cudaPeekAtLastError();
}

}  // namespace
}  // namespace detail

size_t aspp_fwd_workspace_bytes(const AsppFwdParams& p) { return detail::fwd_layout(p).total; }

cudaError_t launch_aspp_forward(const AsppFwdParams& p, cudaStream_t stream) {
  using namespace detail;
  if (!fwd_params_ok(p)) return cudaErrorInvalidValue;
  return ASPP_POLICY_SWITCH(p.dtype, p.allow_tf32, Pol, [&] { return run_forward<Pol>(p, stream); });
}

}  // namespace aspp
}  // namespace deeplabv2_ext
