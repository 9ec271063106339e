// Device-side building blocks shared by the ASPP CUDA kernels (torch-free; nvcc, and g++ for the
// CUDA-on-CPU checks).
//
//   * dtype policies (tensor-core WMMA fp16 / bf16 / tf32, exact SIMT fp32 / fp64) and
//     ASPP_POLICY_SWITCH, the launchers' dispatch on them (common/static_switch.h idiom),
//   * the tap numbering used by the packed weights,
//   * global -> register -> shared tile loaders for strided NCHW / channels_last tensors,
//   * the launchers' device limits (problem_ok) and the clamped rates (set_geometry),
//   * double_buffered_mainloop, the pipeline of both implicit GEMMs (forward / dgrad and wgrad),
//   * the fused implicit-GEMM "sum of R dilated 3x3 convolutions" kernel, used by the forward
//     (input -> output) and by dgrad (grad_output -> grad_input, taps mirrored): mainloop in
//     aspp_igemm_kernel, per-policy MMA step and epilogue in IgemmMma.
//
// Tap numbering (shared by all kernels and the weight packing):
//   t = 0             centre tap (ky, kx) = (1, 1). Its input window is the same for every
//                     branch, so the forward / dgrad read it ONCE per channel chunk and multiply it
//                     by the branch-summed centre weight  sum_r weight[r, :, :, 1, 1]  (summed in
//                     fp32 / fp64 while packing). In wgrad its gradient is computed once and
//                     written to every branch.
//   t = 1 + 8 r + j   off-centre tap j (row-major (ky, kx) order, (1, 1) skipped) of branch r.
//   ntaps = 1 + 8 R.  The input window of tap t is shifted by (dy, dx) = sign * ((ky-1) d, (kx-1) d),
//   d = rates[r]; sign = +1 for the forward and wgrad, -1 for dgrad.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../../common/device_portability.cuh"
#include "../../common/static_switch.h"
#include "../../common/workspace.h"
#include "aspp_kernel.cuh"

namespace deeplabv2_ext {
namespace aspp {
namespace detail {

#define ASPP_HD __host__ __device__ __forceinline__
#define ASPP_D __device__ __forceinline__

// A y coordinate that is out of bounds after any shift (|shift| <= max(H, W) < 2^28).
constexpr int kInvalidCoord = -(1 << 29);

struct Strides4 {
  int64_t n, c, h, w;
};

inline Strides4 make_strides4(const int64_t* s) { return Strides4{s[0], s[1], s[2], s[3]}; }

ASPP_HD int num_taps(int R) { return 1 + 8 * R; }

// t -> (r, ky, kx). The centre tap t = 0 reports r = 0.
ASPP_HD void tap_decode(int t, int& r, int& ky, int& kx) {
  if (t == 0) {
    r = 0;
    ky = 1;
    kx = 1;
    return;
  }
  r = (t - 1) >> 3;
  const int j = (t - 1) & 7;
  const int q = j + (j >= 4 ? 1 : 0);  // skip the centre (q = 4)
  ky = q / 3;
  kx = q - 3 * ky;
}

// (r, ky, kx) -> t; every branch's centre maps to t = 0.
ASPP_HD int tap_encode(int r, int ky, int kx) {
  const int q = ky * 3 + kx;
  if (q == 4) return 0;
  return 1 + 8 * r + (q < 4 ? q : q - 1);
}

// Spatial shift of tap t's input window. `rates` holds (clamped) dilation rates.
ASPP_HD void tap_shift(int t, const int* rates, int sign, int& dy, int& dx) {
  int r, ky, kx;
  tap_decode(t, r, ky, kx);
  const int d = (t == 0) ? 0 : sign * rates[r];
  dy = (ky - 1) * d;
  dx = (kx - 1) * d;
}

// Linear output pixel m (over N*H*W, row-major n, y, x) -> coordinates.
ASPP_HD void pixel_coords(int64_t m, int64_t HW, int W, int& n, int& y, int& x) {
  const int64_t nn = m / HW;
  const int rem = static_cast<int>(m - nn * HW);
  n = static_cast<int>(nn);
  y = rem / W;
  x = rem - y * W;
}

// Output-channel block of the implicit GEMMs (skinny N: 21 -> 32, 19 -> 32, 1 -> 16, 256 -> 4x64).
// fp64 (gradcheck only) is capped at 32 to stay within the register budget.
inline int pick_block_n(int n, int elem_size) {
  const int cap = elem_size >= 8 ? 32 : 64;
  const int b = n <= 16 ? 16 : (n <= 32 ? 32 : 64);
  return b < cap ? b : cap;
}

// Channels per reduction chunk: 64 bytes of one pixel (32 fp16/bf16, 16 fp32, 8 fp64).
template <typename T>
constexpr int chunk_channels() {
  return static_cast<int>(64 / sizeof(T));
}

// Accumulator size: fp64 accumulates in fp64, everything else in fp32.
inline int acc_size(DType d) { return d == DType::kFloat64 ? 8 : 4; }

struct Strides5 {
  int64_t s0, s1, s2, s3, s4;
};
inline Strides5 make_strides5(const int64_t* s) { return Strides5{s[0], s[1], s[2], s[3], s[4]}; }

inline bool is_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// 16-byte vector loads along channels are legal for every (n, y, x, c0 + multiple of V).
inline bool can_vectorize(const void* ptr, int elem_size, const Strides4& s, int C) {
  const int V = 16 / elem_size;
  return s.c == 1 && C % V == 0 && is_aligned16(ptr) && s.n % V == 0 && s.h % V == 0 &&
         s.w % V == 0;
}

// Channel-fast thread mapping (coalesced for channels_last), else pixel-fast (coalesced for NCHW).
inline bool channel_fast(const Strides4& s, int C) { return s.c == 1 && C > 1; }

// ------------------------------------------------------------------------------------------------
// Type conversions (explicit intrinsics: torch builds with __CUDA_NO_HALF_CONVERSIONS__ etc.)
// ------------------------------------------------------------------------------------------------
ASPP_D float to_acc(__half v) { return __half2float(v); }
ASPP_D float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
ASPP_D float to_acc(float v) { return v; }
ASPP_D double to_acc(double v) { return v; }

template <typename T>
struct Cvt;
template <>
struct Cvt<__half> {
  static ASPP_D __half from(float v) { return __float2half_rn(v); }
};
template <>
struct Cvt<__nv_bfloat16> {
  static ASPP_D __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct Cvt<float> {
  static ASPP_D float from(float v) { return v; }
};
template <>
struct Cvt<double> {
  static ASPP_D double from(double v) { return v; }
};

ASPP_D float mad(float a, float b, float c) { return fmaf(a, b, c); }
ASPP_D double mad(double a, double b, double c) { return fma(a, b, c); }

// ------------------------------------------------------------------------------------------------
// Policies
// ------------------------------------------------------------------------------------------------
struct PolWmmaF16 {
  using T = __half;
  using Acc = float;
  using FragT = __half;
  static constexpr bool kWmma = true;
  static constexpr bool kTf32 = false;
  static constexpr int KS = 16;
};
struct PolWmmaBF16 {
  using T = __nv_bfloat16;
  using Acc = float;
  using FragT = __nv_bfloat16;
  static constexpr bool kWmma = true;
  static constexpr bool kTf32 = false;
  static constexpr int KS = 16;
};
// Fragment tag for tf32: nvcuda::wmma::precision::tf32 (and __float_to_tf32) are only declared by
// mma.h when compiling for sm_80+, so naming them unguarded breaks builds whose arch list includes
// sm_75 / sm_70 (e.g. TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;9.0").
struct Tf32Tag {};
struct PolWmmaTF32 {
  using T = float;
  using Acc = float;
  using FragT = Tf32Tag;
  static constexpr bool kWmma = true;
  static constexpr bool kTf32 = true;
  static constexpr int KS = 8;
};
template <typename TT, typename AA>
struct PolSimt {
  using T = TT;
  using Acc = AA;
  using FragT = TT;
  static constexpr bool kWmma = false;
  static constexpr bool kTf32 = false;
  static constexpr int KS = 1;
};

// nvcuda::wmma exists from sm_70 (mma.h declares nothing below); the WMMA branches of the kernels
// are compiled only where it exists (elsewhere Frags<>::kOk is false and the kernels trap).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
#define ASPP_WMMA_AVAILABLE 1
#else
#define ASPP_WMMA_AVAILABLE 0
#endif

// WMMA fragment types; kOk is false where the architecture lacks them (the kernels then compile to
// a __trap(); the launchers never select such a kernel on such a device).
template <typename FragT>
struct Frags {
  static constexpr bool kOk = false;
  using ARow = int;
  using ACol = int;
  using BRow = int;
  using Acc = int;
};
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
template <>
struct Frags<__half> {
  static constexpr bool kOk = true;
  using ARow = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major>;
  using ACol = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::col_major>;
  using BRow = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __half, nvcuda::wmma::row_major>;
  using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
};
#endif
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <>
struct Frags<__nv_bfloat16> {
  static constexpr bool kOk = true;
  using ARow = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major>;
  using ACol = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::col_major>;
  using BRow = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major>;
  using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
};
template <>
struct Frags<Tf32Tag> {
  static constexpr bool kOk = true;
  using ARow = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, nvcuda::wmma::precision::tf32, nvcuda::wmma::row_major>;
  using ACol = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, nvcuda::wmma::precision::tf32, nvcuda::wmma::col_major>;
  using BRow = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 8, nvcuda::wmma::precision::tf32, nvcuda::wmma::row_major>;
  using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float>;
};
#endif

// Round a freshly loaded fp32 fragment to tf32 (no-op for 16-bit fragments).
template <bool kTf32, typename Frag>
ASPP_D void maybe_to_tf32(Frag& f) {
  if constexpr (kTf32) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#pragma unroll
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = nvcuda::wmma::__float_to_tf32(f.x[i]);
#endif
  }
}

#if ASPP_WMMA_AVAILABLE
// A fragment loaded from shared memory, rounded to tf32 for the tf32 policy.
template <bool kTf32, typename Frag, typename T>
ASPP_D void load_fragment(Frag& f, const T* src, int ld) {
  nvcuda::wmma::load_matrix_sync(f, src, ld);
  maybe_to_tf32<kTf32>(f);
}

// One WMMA k-step of a warp whose N accumulator fragments share one operand: acc[f] +=
// shared * other_f (kSharedIsA) or other_f * shared, with other_f (an OtherFrag) loaded from
// other + 16 f (leading dimension ld). IgemmMma shares A (its pixel strip), WgradMma B (its
// input-channel strip).
template <bool kSharedIsA, bool kTf32, typename OtherFrag, int N, typename AccFrag, typename SharedFrag,
          typename T>
ASPP_D void mma_shared_operand(AccFrag (&acc)[N], const SharedFrag& shared, const T* other, int ld) {
#pragma unroll
  for (int f = 0; f < N; ++f) {
    OtherFrag fo;
    load_fragment<kTf32>(fo, other + f * 16, ld);
    if constexpr (kSharedIsA)
      nvcuda::wmma::mma_sync(acc[f], shared, fo, acc[f]);
    else
      nvcuda::wmma::mma_sync(acc[f], fo, shared, acc[f]);
  }
}

// A warp's N accumulator fragments -> the CTA's fp32 tile at smem (row major, leading dimension
// ld), fragment f at float offset first + f * frag_stride; then a barrier, so that every warp's
// part is visible. Returns the tile.
template <int N, typename AccFrag>
ASPP_D const float* store_accumulators(unsigned char* smem, int first, int frag_stride, int ld,
                                       const AccFrag (&acc)[N]) {
  float* const tile = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int f = 0; f < N; ++f)
    nvcuda::wmma::store_matrix_sync(tile + first + f * frag_stride, acc[f], ld, nvcuda::wmma::mem_row_major);
  __syncthreads();
  return tile;
}
#endif  // ASPP_WMMA_AVAILABLE

// ------------------------------------------------------------------------------------------------
// Activation tile loader: tile[ROWS pixels][COLS channels] <- tensor[n, c0 + col, y + dy, x + dx]
// for the pixels (n, y, x) listed in shared-memory tables; zero outside the map or for c >= C.
// Loads go to registers first (issued before the MMAs of the previous stage), then to smem.
// ------------------------------------------------------------------------------------------------
// Thread -> element mappings of the activation tile loaders.
enum LoadMode : int {
  kLoadPixelFast = 0,  // scalar; consecutive threads walk pixels (coalesced for NCHW)
  kLoadChanFast = 1,   // scalar; consecutive threads walk channels (coalesced for channels_last)
  kLoadVec = 2,        // 16-byte vectors along channels (channels_last, aligned, C % V == 0)
};

// Runtime choice of the load mode for one tensor.
inline int pick_load_mode(const void* ptr, int elem_size, const Strides4& s, int C) {
  if (can_vectorize(ptr, elem_size, s, C)) return kLoadVec;
  return channel_fast(s, C) ? kLoadChanFast : kLoadPixelFast;
}

// (y, x) lies inside the H x W map (shifted coordinates may be negative or past the edge).
ASPP_D bool in_map(int y, int x, int H, int W) {
  return static_cast<unsigned>(y) < static_cast<unsigned>(H) &&
         static_cast<unsigned>(x) < static_cast<unsigned>(W);
}

// Element offset of pixel (n, y, x), channel 0.
ASPP_D int64_t pixel_offset(const Strides4& s, int n, int y, int x) {
  return static_cast<int64_t>(n) * s.n + static_cast<int64_t>(y) * s.h + static_cast<int64_t>(x) * s.w;
}

template <typename T, int ROWS, int COLS, int NT, int MODE>
struct TileLoader;

// Scalar, pixel-fast: each thread owns one pixel row (tid % ROWS) and NE channels.
template <typename T, int ROWS, int COLS, int NT>
struct TileLoader<T, ROWS, COLS, NT, kLoadPixelFast> {
  static_assert(NT % ROWS == 0 && (ROWS * COLS) % NT == 0, "pixel-fast mapping");
  static constexpr int NE = ROWS * COLS / NT;
  static constexpr int CSTEP = NT / ROWS;
  T r[NE];

  ASPP_D void load(const T* __restrict__ base, const Strides4& s, const int* s_n, const int* s_y,
                   const int* s_x, int dy, int dx, int c0, int C, int H, int W, int tid) {
    const int row = tid % ROWS;
    const int y = s_y[row] + dy;
    const int x = s_x[row] + dx;
    const bool inb = in_map(y, x, H, W);
    const T* p = base;
    if (inb) p += pixel_offset(s, s_n[row], y, x);
    const int cb = c0 + tid / ROWS;
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int c = cb + i * CSTEP;
      T v = Cvt<T>::from(0.0f);
      if (inb && c < C) v = p[static_cast<int64_t>(c) * s.c];
      r[i] = v;
    }
  }

  template <int LD>
  ASPP_D void store(T* dst, int tid) const {
    T* d = dst + (tid % ROWS) * LD + tid / ROWS;
#pragma unroll
    for (int i = 0; i < NE; ++i) d[i * CSTEP] = r[i];
  }
};

// Scalar, channel-fast: each thread owns one channel column (tid % COLS) and NE pixel rows.
template <typename T, int ROWS, int COLS, int NT>
struct TileLoader<T, ROWS, COLS, NT, kLoadChanFast> {
  static_assert(NT % COLS == 0 && (ROWS * COLS) % NT == 0, "channel-fast mapping");
  static constexpr int NE = ROWS * COLS / NT;
  static constexpr int RSTEP = NT / COLS;
  T r[NE];

  ASPP_D void load(const T* __restrict__ base, const Strides4& s, const int* s_n, const int* s_y,
                   const int* s_x, int dy, int dx, int c0, int C, int H, int W, int tid) {
    const int c = c0 + tid % COLS;
    const bool cok = c < C;
    const T* p = base + static_cast<int64_t>(c) * s.c;
    const int rb = tid / COLS;
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int row = rb + i * RSTEP;
      const int y = s_y[row] + dy;
      const int x = s_x[row] + dx;
      T v = Cvt<T>::from(0.0f);
      if (cok && in_map(y, x, H, W)) v = p[pixel_offset(s, s_n[row], y, x)];
      r[i] = v;
    }
  }

  template <int LD>
  ASPP_D void store(T* dst, int tid) const {
    T* d = dst + (tid / COLS) * LD + tid % COLS;
#pragma unroll
    for (int i = 0; i < NE; ++i) d[i * RSTEP * LD] = r[i];
  }
};

// 16-byte vectors along channels (requires can_vectorize(): s.c == 1, C % V == 0, aligned).
template <typename T, int ROWS, int COLS, int NT>
struct TileLoader<T, ROWS, COLS, NT, kLoadVec> {
  static constexpr int V = static_cast<int>(16 / sizeof(T));
  static_assert(COLS % V == 0, "tile width must be a multiple of the vector width");
  static constexpr int VPR = COLS / V;
  static constexpr int TOTAL = ROWS * VPR;
  static constexpr int NE = (TOTAL + NT - 1) / NT;
  uint4 r[NE];

  ASPP_D void load(const T* __restrict__ base, const Strides4& s, const int* s_n, const int* s_y,
                   const int* s_x, int dy, int dx, int c0, int C, int H, int W, int tid) {
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int e = tid + i * NT;
      if (TOTAL % NT == 0 || e < TOTAL) {
        const int row = e / VPR;
        const int c = c0 + (e % VPR) * V;
        const int y = s_y[row] + dy;
        const int x = s_x[row] + dx;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (c < C && in_map(y, x, H, W)) {
          v = __ldg(reinterpret_cast<const uint4*>(
              base + (static_cast<int64_t>(s_n[row]) * s.n + static_cast<int64_t>(c) +
                      static_cast<int64_t>(y) * s.h + static_cast<int64_t>(x) * s.w)));
        }
        r[i] = v;
      }
    }
  }

  template <int LD>
  ASPP_D void store(T* dst, int tid) const {
    static_assert((LD * sizeof(T)) % 16 == 0, "smem rows must keep 16-byte alignment");
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int e = tid + i * NT;
      if (TOTAL % NT == 0 || e < TOTAL) {
        const int row = e / VPR;
        const int col = (e % VPR) * V;
        *reinterpret_cast<uint4*>(dst + row * LD + col) = r[i];
      }
    }
  }
};

// Packed (padded, 16-byte aligned, always in bounds) weight tile [ROWS][COLS], row stride ld.
template <typename T, int ROWS, int COLS, int NT>
struct PackedTileLoader {
  static constexpr int V = static_cast<int>(16 / sizeof(T));
  static_assert(COLS % V == 0, "tile width must be a multiple of the vector width");
  static constexpr int VPR = COLS / V;
  static constexpr int TOTAL = ROWS * VPR;
  static constexpr int NE = (TOTAL + NT - 1) / NT;
  uint4 r[NE];

  ASPP_D void load(const T* __restrict__ src, int64_t ld, int tid) {
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int e = tid + i * NT;
      if (TOTAL % NT == 0 || e < TOTAL) {
        const int row = e / VPR;
        const int col = (e % VPR) * V;
        r[i] = __ldg(reinterpret_cast<const uint4*>(src + row * ld + col));
      }
    }
  }

  template <int LD>
  ASPP_D void store(T* dst, int tid) const {
    static_assert((LD * sizeof(T)) % 16 == 0, "smem rows must keep 16-byte alignment");
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int e = tid + i * NT;
      if (TOTAL % NT == 0 || e < TOTAL) {
        const int row = e / VPR;
        const int col = (e % VPR) * V;
        *reinterpret_cast<uint4*>(dst + row * LD + col) = r[i];
      }
    }
  }
};

// ------------------------------------------------------------------------------------------------
// Device limits of the launchers (the op checked the arguments; these guard the int32 index math
// and the grid sizes) and the rates as the kernels see them.
// ------------------------------------------------------------------------------------------------

// The limits all three launchers share.
inline bool problem_ok(const AsppProblem& p) {
  if (p.workspace == nullptr) return false;
  if (p.N < 1 || p.C < 1 || p.H < 1 || p.W < 1 || p.K < 1) return false;
  if (p.N > INT32_MAX) return false;  // pixel_coords() keeps n in an int
  if (p.R < 1 || p.R > kAsppMaxRates) return false;
  if (p.H >= kAsppMaxSpatial || p.W >= kAsppMaxSpatial) return false;
  if (static_cast<int64_t>(p.H) * p.W >= (int64_t(1) << 31)) return false;
  for (int r = 0; r < p.R; ++r)
    if (p.rates[r] < 1) return false;
  return true;
}

// grid.y of the blocks of `out_channels` (pick_block_n wide) fits the launch limit.
inline bool out_channel_blocks_ok(int out_channels, DType dtype) {
  return ceil_div(out_channels, pick_block_n(out_channels, element_size(dtype))) <= 65535;
}

// The geometry every kernel argument struct carries: pixel counts, map size, clamped rates.
// A rate >= max(H, W) behaves exactly like max(H, W) (its off-centre taps are fully outside the
// map); clamping keeps all shifted coordinates far from int32 overflow.
template <typename Args>
void set_geometry(Args& a, const AsppProblem& p) {
  a.HW = static_cast<int64_t>(p.H) * p.W;
  a.M = p.N * a.HW;
  a.H = p.H;
  a.W = p.W;
  a.R = p.R;
  const int max_rate = p.H > p.W ? p.H : p.W;
  for (int r = 0; r < kAsppMaxRates; ++r)
    a.rates[r] = r < p.R ? (p.rates[r] < max_rate ? p.rates[r] : max_rate) : 0;
}

// ------------------------------------------------------------------------------------------------
// The mainloop both implicit GEMMs share (double buffered through registers): the global loads of
// stage s + 1 go to registers before the MMAs of stage s and to the other shared-memory buffer
// after them, so one barrier per stage separates reading a buffer from overwriting it. The caller
// has staged stage 0 in buffer 0 (and synchronised); end_stage(s) runs before each barrier.
// ------------------------------------------------------------------------------------------------
template <typename Index, typename LoadStage, typename Compute, typename StoreStage, typename EndStage>
ASPP_D void double_buffered_mainloop(Index stages, LoadStage&& load_stage, Compute&& compute,
                                     StoreStage&& store_stage, EndStage&& end_stage) {
  for (Index s = 0; s < stages; ++s) {
    const int buf = static_cast<int>(s & 1);
    if (s + 1 < stages) load_stage(s + 1);
    compute(buf);
    if (s + 1 < stages) store_stage(buf ^ 1);
    end_stage(s);
    __syncthreads();
  }
}

// ------------------------------------------------------------------------------------------------
// Fused implicit-GEMM kernel: out[m, k] = bias[k] + sum_t sum_c A_t[m, c] * Wp[t, c, k]
//   m over N*H*W output pixels, A_t[m, c] = in[n, c, y + dy_t, x + dx_t] (0 outside),
//   Wp packed [ntaps][Cin_pad][Cout_pad] (zero padded, centre summed over branches).
// The forward solves it for input (C channels) -> output (K); dgrad for the transposed problem
// grad_output (K channels) -> grad_input (C), taps mirrored (sign = -1).
// ------------------------------------------------------------------------------------------------
template <typename T, typename Acc>
struct IgemmArgs {
  const T* in;
  Strides4 in_s;
  const T* wp;
  const Acc* bias;  // [Cout_pad] (already summed over branches) or nullptr
  T* out;
  Strides4 out_s;
  int64_t M;   // N * H * W
  int64_t HW;  // H * W
  int H, W;
  int Cin, Cout;
  int Cin_pad;   // multiple of chunk_channels<T>()
  int Cout_pad;  // multiple of the CTA's output-channel block
  int ntaps, R, sign;
  bool out_chan_fast;
  int rates[kAsppMaxRates];  // clamped
};

constexpr int kIgemmThreads = 256;
constexpr int kIgemmBM = 128;  // output pixels per CTA

template <typename T, int BlockOutCh, bool WMMA>
struct IgemmSmem {
  static constexpr int CC = chunk_channels<T>();
  static constexpr int PADE = static_cast<int>(16 / sizeof(T));
  static constexpr int LDA = CC + PADE;  // 80-byte rows
  static constexpr int LDB = BlockOutCh + PADE;
  static constexpr int LDC = BlockOutCh + 4;  // fp32 epilogue staging
  static constexpr int A_ELEMS = kIgemmBM * LDA;
  static constexpr int B_ELEMS = CC * LDB;
  static constexpr int PIPE_BYTES = static_cast<int>(2 * (A_ELEMS + B_ELEMS) * sizeof(T));
  static constexpr int EPI_BYTES = WMMA ? kIgemmBM * LDC * 4 : 0;
  static constexpr int BYTES = PIPE_BYTES > EPI_BYTES ? PIPE_BYTES : EPI_BYTES;
  static_assert((A_ELEMS * sizeof(T)) % 128 == 0, "A buffers must stay 128-byte aligned");
  static_assert((B_ELEMS * sizeof(T)) % 32 == 0, "B buffers must stay 32-byte aligned");
};

// The CTA's output tile: pixels m0 .. m0 + 127 (coordinates in the smem tables s_n, s_y, s_x),
// output channels k0 .. k0 + BlockOutCh - 1.
struct IgemmTile {
  int64_t m0;
  int k0;
  const int* s_n;
  const int* s_y;
  const int* s_x;
};

// out[pixel + k] = convert(v + bias[k]) for one output element.
template <typename T, typename Acc, typename V>
ASPP_D void store_output(const IgemmArgs<T, Acc>& a, const IgemmTile& tile, int row, int k, V v) {
  if (a.bias != nullptr) v += a.bias[k];
  a.out[static_cast<int64_t>(tile.s_n[row]) * a.out_s.n + static_cast<int64_t>(k) * a.out_s.c +
        static_cast<int64_t>(tile.s_y[row]) * a.out_s.h +
        static_cast<int64_t>(tile.s_x[row]) * a.out_s.w] = Cvt<T>::from(v);
}

// acc[i][j] += a[i * kStrideA] * b[j * kStrideB] in Acc: one rank-1 update of a SIMT thread's
// register tile (the inner step of both SIMT MMA steps, IgemmMma and WgradMma).
template <int kStrideA, int kStrideB, typename Acc, int I, int J, typename T>
ASPP_D void fma_outer_product(Acc (&acc)[I][J], const T* a, const T* b) {
  Acc av[I], bv[J];
#pragma unroll
  for (int i = 0; i < I; ++i) av[i] = to_acc(a[i * kStrideA]);
#pragma unroll
  for (int j = 0; j < J; ++j) bv[j] = to_acc(b[j * kStrideB]);
#pragma unroll
  for (int i = 0; i < I; ++i)
#pragma unroll
    for (int j = 0; j < J; ++j) acc[i][j] = mad(av[i], bv[j], acc[i][j]);
}

// The per-stage MMA and the epilogue of the implicit GEMM, per math policy.
template <class Pol, int BlockOutCh, bool kTensorCores = Pol::kWmma>
struct IgemmMma;

// Exact SIMT FMA in Acc: thread (tx, ty) owns pixels ty + 32 i (i < 4) and output channels
// tx + 8 j (j < BlockOutCh / 8).
template <class Pol, int BlockOutCh>
struct IgemmMma<Pol, BlockOutCh, false> {
  using T = typename Pol::T;
  using Acc = typename Pol::Acc;
  using Smem = IgemmSmem<T, BlockOutCh, false>;
  static constexpr int kThreadPixels = 4;
  static constexpr int kThreadOutCh = BlockOutCh / 8;
  static_assert(kIgemmBM == 32 * kThreadPixels && kIgemmThreads == 32 * 8, "SIMT micro-tile mapping");

  int tx, ty;
  Acc acc[kThreadPixels][kThreadOutCh];

  ASPP_D explicit IgemmMma(int tid) : tx(tid & 7), ty(tid >> 3) {
#pragma unroll
    for (int i = 0; i < kThreadPixels; ++i)
#pragma unroll
      for (int j = 0; j < kThreadOutCh; ++j) acc[i][j] = Acc(0);
  }

  // acc += A_stage[pixels][CC] * B_stage[CC][BlockOutCh].
  ASPP_D void step(const T* As, const T* Bs) {
#pragma unroll 4
    for (int kk = 0; kk < Smem::CC; ++kk)
      fma_outer_product<32 * Smem::LDA, 8>(acc, As + ty * Smem::LDA + kk, Bs + kk * Smem::LDB + tx);
  }

  // Straight from the registers: + bias, convert, masked strided store.
  ASPP_D void epilogue(const IgemmArgs<T, Acc>& a, const IgemmTile& tile, unsigned char*, int) const {
#pragma unroll
    for (int i = 0; i < kThreadPixels; ++i) {
      const int row = ty + 32 * i;
      if (tile.m0 + row >= a.M) continue;
#pragma unroll
      for (int j = 0; j < kThreadOutCh; ++j) {
        const int k = tile.k0 + tx + 8 * j;
        if (k < a.Cout) store_output(a, tile, row, k, acc[i][j]);
      }
    }
  }
};

#if ASPP_WMMA_AVAILABLE
// Tensor cores (WMMA, fp32 accumulate): warp w owns pixel rows 16w .. 16w + 15 and all
// BlockOutCh columns (BlockOutCh / 16 accumulator fragments).
template <class Pol, int BlockOutCh>
struct IgemmMma<Pol, BlockOutCh, true> {
  using T = typename Pol::T;
  using Acc = typename Pol::Acc;
  using F = Frags<typename Pol::FragT>;
  using Smem = IgemmSmem<T, BlockOutCh, true>;
  static constexpr int kFragsPerWarp = BlockOutCh / 16;
  static_assert(kIgemmBM == 16 * (kIgemmThreads / 32), "one 16-row WMMA strip per warp");

  int warp;
  typename F::Acc acc[kFragsPerWarp];

  ASPP_D explicit IgemmMma(int tid) : warp(tid >> 5) {
#pragma unroll
    for (int f = 0; f < kFragsPerWarp; ++f) nvcuda::wmma::fill_fragment(acc[f], 0.0f);
  }

  ASPP_D void step(const T* As, const T* Bs) {
    As += warp * 16 * Smem::LDA;
#pragma unroll
    for (int kk = 0; kk < Smem::CC / Pol::KS; ++kk) {
      typename F::ARow fa;
      load_fragment<Pol::kTf32>(fa, As + kk * Pol::KS, Smem::LDA);
      mma_shared_operand</*kSharedIsA=*/true, Pol::kTf32, typename F::BRow>(
          acc, fa, Bs + kk * Pol::KS * Smem::LDB, Smem::LDB);
    }
  }

  // Fragments -> fp32 smem (aliases the pipeline buffers; the mainloop ended with a barrier) ->
  // + bias, convert, masked strided store with a coalescing-aware thread mapping.
  ASPP_D void epilogue(const IgemmArgs<T, Acc>& a, const IgemmTile& tile, unsigned char* smem,
                       int tid) const {
    constexpr int LDC = Smem::LDC;
    const float* Cs = store_accumulators(smem, warp * 16 * LDC, 16, LDC, acc);
    for (int e = tid; e < kIgemmBM * BlockOutCh; e += kIgemmThreads) {
      int row, col;
      if (a.out_chan_fast) {
        col = e % BlockOutCh;
        row = e / BlockOutCh;
      } else {
        row = e % kIgemmBM;
        col = e / kIgemmBM;
      }
      const int k = tile.k0 + col;
      if (tile.m0 + row < a.M && k < a.Cout) store_output(a, tile, row, k, Cs[row * LDC + col]);
    }
  }
};
#endif  // ASPP_WMMA_AVAILABLE

namespace {  // internal linkage: fwd and dgrad TUs each get their own kernel instances

template <class Pol, int BlockOutCh, int LoadMode>
__global__ void __launch_bounds__(kIgemmThreads, 2)
    aspp_igemm_kernel(const __grid_constant__ IgemmArgs<typename Pol::T, typename Pol::Acc> a) {
  using T = typename Pol::T;
  using Smem = IgemmSmem<T, BlockOutCh, Pol::kWmma>;
  constexpr int BM = kIgemmBM;
  constexpr int CC = Smem::CC;

  if constexpr (Pol::kWmma && !Frags<typename Pol::FragT>::kOk) {
    // Architecture without these tensor-core fragments. The launchers never select such a kernel
    // on such a device, but a PTX-JIT build (e.g. arch list "7.5+PTX" run on sm_80+) would land
    // here: fail loudly instead of silently leaving the output unwritten.
    __trap();
  } else {
    DLV2_SHARED_ALIGNED(128, unsigned char[Smem::BYTES], smem);
    DLV2_SHARED(int[BM], s_n);
    DLV2_SHARED(int[BM], s_y);
    DLV2_SHARED(int[BM], s_x);
    DLV2_SHARED(int[kAsppMaxRates], s_rates);

    T* const A0 = reinterpret_cast<T*>(smem);
    T* const B0 = A0 + 2 * Smem::A_ELEMS;

    const int tid = threadIdx.x;
    const IgemmTile tile{static_cast<int64_t>(blockIdx.x) * BM, static_cast<int>(blockIdx.y) * BlockOutCh,
                         s_n, s_y, s_x};

    if (tid < BM) {
      const int64_t m = tile.m0 + tid;
      int n = 0, y = kInvalidCoord, x = 0;
      if (m < a.M) pixel_coords(m, a.HW, a.W, n, y, x);
      s_n[tid] = n;
      s_y[tid] = y;
      s_x[tid] = x;
    }
    if (tid < a.R) s_rates[tid] = a.rates[tid];
    __syncthreads();

    TileLoader<T, BM, CC, kIgemmThreads, LoadMode> load_a;
    PackedTileLoader<T, CC, BlockOutCh, kIgemmThreads> load_b;
    const int stages = (a.Cin_pad / CC) * a.ntaps;

    // Stage s -> (chunk, tap): chunk-major so that the 1 + 8R shifted windows of one channel chunk
    // are read back to back (overlapping windows of small rates then hit L1/L2).
    auto load_stage = [&](int s) {
      const int chunk = s / a.ntaps;
      const int t = s - chunk * a.ntaps;
      int dy, dx;
      tap_shift(t, s_rates, a.sign, dy, dx);
      load_a.load(a.in, a.in_s, s_n, s_y, s_x, dy, dx, chunk * CC, a.Cin, a.H, a.W, tid);
      load_b.load(a.wp + (static_cast<int64_t>(t) * a.Cin_pad + chunk * CC) * a.Cout_pad + tile.k0,
                  a.Cout_pad, tid);
    };
    auto store_stage = [&](int buf) {
      load_a.template store<Smem::LDA>(A0 + buf * Smem::A_ELEMS, tid);
      load_b.template store<Smem::LDB>(B0 + buf * Smem::B_ELEMS, tid);
    };

    load_stage(0);
    store_stage(0);
    __syncthreads();

    IgemmMma<Pol, BlockOutCh> mma(tid);
    double_buffered_mainloop(
        stages, load_stage,
        [&](int buf) { mma.step(A0 + buf * Smem::A_ELEMS, B0 + buf * Smem::B_ELEMS); },
        store_stage, [](int) {});
    mma.epilogue(a, tile, smem, tid);
  }
}

}  // namespace

// The input and the output tensor of one implicit-GEMM launch, in the GEMM's own terms.
struct IgemmInput {
  const void* data;
  const int64_t* stride;  // 4 element strides
  int channels;
};
struct IgemmOutput {
  void* data;
  const int64_t* stride;  // 4 element strides
  int channels;
};

// Layout of the packed weight [ntaps][in_channels_pad][out_channels_pad] for one launch.
struct IgemmLayout {
  int block_out_ch;  // output channels per CTA (grid.y = out_channels_pad / block_out_ch)
  int in_channels_pad, out_channels_pad, ntaps;
  size_t packed_weight_bytes;  // 256-aligned
};

inline IgemmLayout igemm_layout(DType dtype, int R, int in_channels, int out_channels) {
  IgemmLayout L;
  const int es = element_size(dtype);
  const int chunk = 64 / es;
  L.block_out_ch = pick_block_n(out_channels, es);
  L.in_channels_pad = static_cast<int>(ceil_div(in_channels, chunk) * chunk);
  L.out_channels_pad = static_cast<int>(ceil_div(out_channels, L.block_out_ch) * L.block_out_ch);
  L.ntaps = num_taps(R);
  L.packed_weight_bytes = align_up(static_cast<size_t>(L.ntaps) * L.in_channels_pad * L.out_channels_pad * es);
  return L;
}

// The device limits of an implicit-GEMM launch on top of problem_ok().
inline bool igemm_problem_ok(const AsppProblem& p, int in_channels, int out_channels) {
  if (!problem_ok(p)) return false;
  // pipeline stage count (channel chunks x taps) must fit in int
  if (ceil_div(in_channels, 64 / element_size(p.dtype)) * num_taps(p.R) >= (int64_t(1) << 31)) return false;
  if (ceil_div(p.N * p.H * p.W, kIgemmBM) >= (int64_t(1) << 31)) return false;
  return out_channel_blocks_ok(out_channels, p.dtype);
}

// Host: fills the kernel arguments of in -> out (sign +1: forward taps, -1: mirrored) and launches
// the kernel instance of the layout's output-channel block and the input's load mode.
template <class Pol>
void launch_igemm(const AsppProblem& p, const IgemmInput& in, const IgemmOutput& out,
                  const typename Pol::T* packed_weight, const typename Pol::Acc* bias,
                  const IgemmLayout& L, int sign, cudaStream_t stream) {
  using T = typename Pol::T;
  IgemmArgs<T, typename Pol::Acc> a;
  a.in = static_cast<const T*>(in.data);
  a.in_s = make_strides4(in.stride);
  a.wp = packed_weight;
  a.bias = bias;
  a.out = static_cast<T*>(out.data);
  a.out_s = make_strides4(out.stride);
  set_geometry(a, p);
  a.Cin = in.channels;
  a.Cout = out.channels;
  a.Cin_pad = L.in_channels_pad;
  a.Cout_pad = L.out_channels_pad;
  a.ntaps = L.ntaps;
  a.sign = sign;
  a.out_chan_fast = channel_fast(a.out_s, out.channels);
  const int load_mode = pick_load_mode(in.data, static_cast<int>(sizeof(T)), a.in_s, in.channels);

  const dim3 grid(static_cast<unsigned>(ceil_div(a.M, kIgemmBM)),
                  static_cast<unsigned>(L.out_channels_pad / L.block_out_ch));
  DLV2_INT_SWITCH3(L.block_out_ch, kBlockOutCh, 16, 32, 64, [&] {
    if constexpr (sizeof(T) <= 4 || kBlockOutCh <= 32) {  // fp64 is capped at 32 (registers)
      DLV2_INT_SWITCH3(load_mode, kLoadMode, kLoadPixelFast, kLoadChanFast, kLoadVec, [&] {
        launch_kernel<aspp_igemm_kernel<Pol, kBlockOutCh, kLoadMode>>(grid, dim3(kIgemmThreads), 0,
                                                                      stream, a);
      });
    }
  });
}

// Packs the branch weights [R, K, C, 3, 3] (strides ws) tap by tap into out[t][row][col]
// (rows_pad x cols_pad per tap, zero padded), with the centre tap t = 0 summed over the branches
// in Acc. kOutputChannelsInner: row = input channel c, col = output channel k (the forward's layout);
// otherwise row = k, col = c (dgrad's layout).
template <typename T, typename Acc, bool kOutputChannelsInner>
__global__ void aspp_pack_tap_weight_kernel(const T* __restrict__ w, Strides5 ws, int R, int K,
                                            int C, int rows_pad, int cols_pad, int ntaps,
                                            T* __restrict__ out) {
  const int64_t total = static_cast<int64_t>(ntaps) * rows_pad * cols_pad;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int col = static_cast<int>(idx % cols_pad);
    const int64_t rest = idx / cols_pad;
    const int row = static_cast<int>(rest % rows_pad);
    const int t = static_cast<int>(rest / rows_pad);
    const int k = kOutputChannelsInner ? col : row;
    const int c = kOutputChannelsInner ? row : col;
    Acc v = Acc(0);
    if (k < K && c < C) {
      const int64_t kc = static_cast<int64_t>(k) * ws.s1 + static_cast<int64_t>(c) * ws.s2;
      if (t == 0) {
        for (int r = 0; r < R; ++r) v += to_acc(w[static_cast<int64_t>(r) * ws.s0 + kc + ws.s3 + ws.s4]);
      } else {
        int r, ky, kx;
        tap_decode(t, r, ky, kx);
        v = to_acc(w[static_cast<int64_t>(r) * ws.s0 + kc + ky * ws.s3 + kx * ws.s4]);
      }
    }
    out[idx] = Cvt<T>::from(v);
  }
}

template <typename T, typename Acc, bool kOutputChannelsInner>
void launch_pack_tap_weight(const void* weight, const Strides5& ws, int R, int K, int C,
                            int rows_pad, int cols_pad, int ntaps, T* out, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(ntaps) * rows_pad * cols_pad;
  const int64_t blocks = ceil_div(total, 256) < 8192 ? ceil_div(total, 256) : 8192;
  launch_kernel<aspp_pack_tap_weight_kernel<T, Acc, kOutputChannelsInner>>(
      static_cast<unsigned>(blocks), 256, 0, stream, static_cast<const T*>(weight), ws, R, K, C,
      rows_pad, cols_pad, ntaps, out);
}

// Device properties of the current device (cheap attribute queries).
inline int current_sm_major() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return 0;
  return major;
}
inline int current_sm_count() {
  int dev = 0, count = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 1;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 1;
  return count > 0 ? count : 1;
}

// Whether the current device runs `dtype`'s policy (fp16 tensor cores need sm_70, bf16 sm_80;
// TF32 is used only where allowed and on sm_80+, else float32 takes the exact SIMT path).
inline cudaError_t device_policy(DType dtype, bool allow_tf32, bool& use_tf32) {
  const int sm = current_sm_major();
  use_tf32 = false;
  switch (dtype) {
    case DType::kFloat16:
      return sm < 7 ? cudaErrorNotSupported : cudaSuccess;
    case DType::kBFloat16:
      return sm < 8 ? cudaErrorNotSupported : cudaSuccess;
    case DType::kFloat32:
      use_tf32 = allow_tf32 && sm >= 8;
      return cudaSuccess;
    case DType::kFloat64:
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

// DLV2_*_SWITCH (common/static_switch.h) over the math policy of DTYPE: POLICY names the policy
// type in the body, which returns a cudaError_t; the switch returns device_policy()'s error where
// the current device cannot run DTYPE.
#define ASPP_POLICY_SWITCH(DTYPE, ALLOW_TF32, POLICY, ...)                               \
  [&]() -> cudaError_t {                                                                \
    const DType dtype_ = (DTYPE);                                                       \
    bool use_tf32_ = false;                                                             \
    const cudaError_t supported_ = device_policy(dtype_, (ALLOW_TF32), use_tf32_);      \
    if (supported_ != cudaSuccess) return supported_;                                   \
    switch (dtype_) {                                                                   \
      case DType::kFloat16: {                                                           \
        using POLICY = PolWmmaF16;                                                      \
        return __VA_ARGS__();                                                           \
      }                                                                                 \
      case DType::kBFloat16: {                                                          \
        using POLICY = PolWmmaBF16;                                                     \
        return __VA_ARGS__();                                                           \
      }                                                                                 \
      case DType::kFloat64: {                                                           \
        using POLICY = PolSimt<double, double>;                                         \
        return __VA_ARGS__();                                                           \
      }                                                                                 \
      default:                                                                          \
        break;                                                                          \
    }                                                                                   \
    if (use_tf32_) {                                                                    \
      using POLICY = PolWmmaTF32;                                                       \
      return __VA_ARGS__();                                                             \
    }                                                                                   \
    using POLICY = PolSimt<float, float>;                                               \
    return __VA_ARGS__();                                                               \
  }()

}  // namespace detail
}  // namespace aspp
}  // namespace deeplabv2_ext
