// Device-side building blocks shared by the ASPP CUDA kernels (torch-free; nvcc only).
//
//   * dtype policies (tensor-core WMMA fp16 / bf16 / tf32, exact SIMT fp32 / fp64),
//   * the tap numbering used by the packed weights,
//   * global -> register -> shared tile loaders for strided NCHW / channels_last tensors,
//   * the fused implicit-GEMM "sum of R dilated 3x3 convolutions" kernel, used by the forward
//     (input -> output) and by dgrad (grad_output -> grad_input, taps mirrored).
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

// A rate >= max(H, W) behaves exactly like max(H, W) (its off-centre taps are fully outside the
// map); clamping keeps all shifted coordinates far from int32 overflow.
inline int clamp_rate(int rate, int H, int W) {
  const int m = H > W ? H : W;
  return rate < m ? rate : m;
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
    const bool inb = static_cast<unsigned>(y) < static_cast<unsigned>(H) &&
                     static_cast<unsigned>(x) < static_cast<unsigned>(W);
    const T* p = base;
    if (inb) p += static_cast<int64_t>(s_n[row]) * s.n + static_cast<int64_t>(y) * s.h +
                  static_cast<int64_t>(x) * s.w;
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
      if (cok && static_cast<unsigned>(y) < static_cast<unsigned>(H) &&
          static_cast<unsigned>(x) < static_cast<unsigned>(W)) {
        v = p[static_cast<int64_t>(s_n[row]) * s.n + static_cast<int64_t>(y) * s.h +
              static_cast<int64_t>(x) * s.w];
      }
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
        if (c < C && static_cast<unsigned>(y) < static_cast<unsigned>(H) &&
            static_cast<unsigned>(x) < static_cast<unsigned>(W)) {
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
// Fused implicit-GEMM kernel: out[m, k] = bias[k] + sum_t sum_c A_t[m, c] * Wp[t, c, k]
//   m over N*H*W output pixels, A_t[m, c] = in[n, c, y + dy_t, x + dx_t] (0 outside),
//   Wp packed [ntaps][Cin_pad][Cout_pad] (zero padded, centre summed over branches).
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
  int Cout_pad;  // multiple of BK
  int ntaps, R, sign;
  bool out_chan_fast;
  int rates[kAsppMaxRates];  // clamped
};

constexpr int kIgemmThreads = 256;
constexpr int kIgemmBM = 128;

template <typename T, int BK, bool WMMA>
struct IgemmSmem {
  static constexpr int CC = chunk_channels<T>();
  static constexpr int PADE = static_cast<int>(16 / sizeof(T));
  static constexpr int LDA = CC + PADE;  // 80-byte rows
  static constexpr int LDB = BK + PADE;
  static constexpr int LDC = BK + 4;  // fp32 epilogue staging
  static constexpr int A_ELEMS = kIgemmBM * LDA;
  static constexpr int B_ELEMS = CC * LDB;
  static constexpr int PIPE_BYTES = static_cast<int>(2 * (A_ELEMS + B_ELEMS) * sizeof(T));
  static constexpr int EPI_BYTES = WMMA ? kIgemmBM * LDC * 4 : 0;
  static constexpr int BYTES = PIPE_BYTES > EPI_BYTES ? PIPE_BYTES : EPI_BYTES;
  static_assert((A_ELEMS * sizeof(T)) % 128 == 0, "A buffers must stay 128-byte aligned");
  static_assert((B_ELEMS * sizeof(T)) % 32 == 0, "B buffers must stay 32-byte aligned");
};

namespace {  // internal linkage: fwd and dgrad TUs each get their own kernel instances

template <class Pol, int BK, int MODE>
__global__ void __launch_bounds__(kIgemmThreads, 2)
    aspp_igemm_kernel(const __grid_constant__ IgemmArgs<typename Pol::T, typename Pol::Acc> a) {
  using T = typename Pol::T;
  using Acc = typename Pol::Acc;
  using F = Frags<typename Pol::FragT>;
  using L = IgemmSmem<T, BK, Pol::kWmma>;
  constexpr int NT = kIgemmThreads;
  constexpr int BM = kIgemmBM;
  constexpr int CC = L::CC;
  constexpr int LDA = L::LDA;
  constexpr int LDB = L::LDB;
  constexpr int LDC = L::LDC;
  constexpr int NF = BK / 16;  // WMMA n-fragments per warp
  constexpr int TN = BK / 8;   // SIMT columns per thread
  constexpr int TM = 4;        // SIMT rows per thread
  static_assert(BM == 16 * (NT / 32), "one 16-row WMMA strip per warp");
  static_assert(BM == 32 * TM && BK == 8 * TN, "SIMT micro-tile mapping");

  if constexpr (Pol::kWmma && !F::kOk) {
    // Architecture without these tensor-core fragments. The launchers never select such a kernel
    // on such a device, but a PTX-JIT build (e.g. arch list "7.5+PTX" run on sm_80+) would land
    // here: fail loudly instead of silently leaving the output unwritten.
    __trap();
  } else {
    DLV2_SHARED_ALIGNED(128, unsigned char[L::BYTES], smem);
    DLV2_SHARED(int[BM], s_n);
    DLV2_SHARED(int[BM], s_y);
    DLV2_SHARED(int[BM], s_x);
    DLV2_SHARED(int[kAsppMaxRates], s_rates);

    T* const A0 = reinterpret_cast<T*>(smem);
    T* const B0 = A0 + 2 * L::A_ELEMS;

    const int tid = threadIdx.x;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
    const int k0 = blockIdx.y * BK;

    if (tid < BM) {
      const int64_t m = m0 + tid;
      int n = 0, y = kInvalidCoord, x = 0;
      if (m < a.M) pixel_coords(m, a.HW, a.W, n, y, x);
      s_n[tid] = n;
      s_y[tid] = y;
      s_x[tid] = x;
    }
    if (tid < a.R) s_rates[tid] = a.rates[tid];
    __syncthreads();

    TileLoader<T, BM, CC, NT, MODE> la;
    PackedTileLoader<T, CC, BK, NT> lb;
    const int S = (a.Cin_pad / CC) * a.ntaps;  // pipeline stages: (chunk, tap)

    // Stage s -> (chunk, tap): chunk-major so that the 1 + 8R shifted windows of one channel chunk
    // are read back to back (overlapping windows of small rates then hit L1/L2).
#define ASPP_IGEMM_LOAD(s_)                                                                    \
  do {                                                                                         \
    const int chunk_ = (s_) / a.ntaps;                                                         \
    const int t_ = (s_)-chunk_ * a.ntaps;                                                      \
    int dy_, dx_;                                                                              \
    tap_shift(t_, s_rates, a.sign, dy_, dx_);                                                  \
    la.load(a.in, a.in_s, s_n, s_y, s_x, dy_, dx_, chunk_ * CC, a.Cin, a.H, a.W, tid);         \
    lb.load(a.wp + (static_cast<int64_t>(t_) * a.Cin_pad + chunk_ * CC) * a.Cout_pad + k0,     \
            a.Cout_pad, tid);                                                                  \
  } while (0)

    ASPP_IGEMM_LOAD(0);
    la.template store<LDA>(A0, tid);
    lb.template store<LDB>(B0, tid);
    __syncthreads();

    if constexpr (Pol::kWmma) {
#if ASPP_WMMA_AVAILABLE
      namespace wmma = nvcuda::wmma;
      const int warp = tid >> 5;
      typename F::Acc acc[NF];
#pragma unroll
      for (int f = 0; f < NF; ++f) wmma::fill_fragment(acc[f], 0.0f);

      for (int s = 0; s < S; ++s) {
        const int buf = s & 1;
        if (s + 1 < S) ASPP_IGEMM_LOAD(s + 1);
        const T* As = A0 + buf * L::A_ELEMS + warp * 16 * LDA;
        const T* Bs = B0 + buf * L::B_ELEMS;
#pragma unroll
        for (int kk = 0; kk < CC / Pol::KS; ++kk) {
          typename F::ARow fa;
          wmma::load_matrix_sync(fa, As + kk * Pol::KS, LDA);
          maybe_to_tf32<Pol::kTf32>(fa);
#pragma unroll
          for (int f = 0; f < NF; ++f) {
            typename F::BRow fb;
            wmma::load_matrix_sync(fb, Bs + kk * Pol::KS * LDB + f * 16, LDB);
            maybe_to_tf32<Pol::kTf32>(fb);
            wmma::mma_sync(acc[f], fa, fb, acc[f]);
          }
        }
        if (s + 1 < S) {
          la.template store<LDA>(A0 + (buf ^ 1) * L::A_ELEMS, tid);
          lb.template store<LDB>(B0 + (buf ^ 1) * L::B_ELEMS, tid);
        }
        __syncthreads();
      }

      // Epilogue: fragments -> fp32 smem (aliases the pipeline buffers; the loop ended with a
      // barrier) -> bias add, dtype conversion, masked strided store.
      float* Cs = reinterpret_cast<float*>(smem);
#pragma unroll
      for (int f = 0; f < NF; ++f)
        wmma::store_matrix_sync(Cs + warp * 16 * LDC + f * 16, acc[f], LDC, wmma::mem_row_major);
      __syncthreads();
      for (int e = tid; e < BM * BK; e += NT) {
        int row, col;
        if (a.out_chan_fast) {
          col = e % BK;
          row = e / BK;
        } else {
          row = e % BM;
          col = e / BM;
        }
        const int k = k0 + col;
        if (m0 + row < a.M && k < a.Cout) {
          float v = Cs[row * LDC + col];
          if (a.bias != nullptr) v += a.bias[k];
          a.out[static_cast<int64_t>(s_n[row]) * a.out_s.n + static_cast<int64_t>(k) * a.out_s.c +
                static_cast<int64_t>(s_y[row]) * a.out_s.h +
                static_cast<int64_t>(s_x[row]) * a.out_s.w] = Cvt<T>::from(v);
        }
      }
#endif  // ASPP_WMMA_AVAILABLE
    } else {
      // Exact SIMT path: thread (tx, ty) owns pixels ty + 32 i (i < 4), channels tx + 8 j (j < TN).
      const int tx = tid & 7;
      const int ty = tid >> 3;
      Acc acc[TM][TN];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = Acc(0);

      for (int s = 0; s < S; ++s) {
        const int buf = s & 1;
        if (s + 1 < S) ASPP_IGEMM_LOAD(s + 1);
        const T* As = A0 + buf * L::A_ELEMS;
        const T* Bs = B0 + buf * L::B_ELEMS;
#pragma unroll 4
        for (int kk = 0; kk < CC; ++kk) {
          Acc av[TM], bv[TN];
#pragma unroll
          for (int i = 0; i < TM; ++i) av[i] = to_acc(As[(ty + 32 * i) * LDA + kk]);
#pragma unroll
          for (int j = 0; j < TN; ++j) bv[j] = to_acc(Bs[kk * LDB + tx + 8 * j]);
#pragma unroll
          for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = mad(av[i], bv[j], acc[i][j]);
        }
        if (s + 1 < S) {
          la.template store<LDA>(A0 + (buf ^ 1) * L::A_ELEMS, tid);
          lb.template store<LDB>(B0 + (buf ^ 1) * L::B_ELEMS, tid);
        }
        __syncthreads();
      }

#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int row = ty + 32 * i;
        if (m0 + row >= a.M) continue;
        const int64_t pix = static_cast<int64_t>(s_n[row]) * a.out_s.n +
                            static_cast<int64_t>(s_y[row]) * a.out_s.h +
                            static_cast<int64_t>(s_x[row]) * a.out_s.w;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const int k = k0 + tx + 8 * j;
          if (k < a.Cout) {
            Acc v = acc[i][j];
            if (a.bias != nullptr) v += a.bias[k];
            a.out[pix + static_cast<int64_t>(k) * a.out_s.c] = Cvt<T>::from(v);
          }
        }
      }
    }
#undef ASPP_IGEMM_LOAD
  }
}

}  // namespace

// Host: launch the implicit GEMM for one policy; BK in {16, 32, 64}, mode a LoadMode.
template <class Pol>
void launch_igemm(const IgemmArgs<typename Pol::T, typename Pol::Acc>& a, int BK, int mode,
                  cudaStream_t stream) {
  const dim3 block(kIgemmThreads);
  const dim3 grid(static_cast<unsigned>(ceil_div(a.M, kIgemmBM)),
                  static_cast<unsigned>(a.Cout_pad / BK));
#define ASPP_IGEMM_CASE(BK_, MODE_)                                                 \
  if (BK == BK_ && mode == MODE_) {                                                 \
    launch_kernel<aspp_igemm_kernel<Pol, BK_, MODE_>>(grid, block, 0, stream, a);   \
    return;                                                                         \
  }
#define ASPP_IGEMM_CASES(BK_)              \
  ASPP_IGEMM_CASE(BK_, kLoadPixelFast)     \
  ASPP_IGEMM_CASE(BK_, kLoadChanFast)      \
  ASPP_IGEMM_CASE(BK_, kLoadVec)
  ASPP_IGEMM_CASES(16)
  ASPP_IGEMM_CASES(32)
  if constexpr (sizeof(typename Pol::T) <= 4) {  // fp64 is capped at BK = 32 (registers)
    ASPP_IGEMM_CASES(64)
  }
#undef ASPP_IGEMM_CASES
#undef ASPP_IGEMM_CASE
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

template <typename Pol>
struct PolicyTag {
  using type = Pol;
};

// Picks the math policy for a dtype on the current device (tensor cores for fp16/bf16, TF32 when
// allowed, exact FMA otherwise) and returns run(PolicyTag<Policy>{}).
template <typename Run>
cudaError_t dispatch_policy(DType dtype, bool allow_tf32, Run&& run) {
  const int sm = current_sm_major();
  switch (dtype) {
    case DType::kFloat16:
      if (sm < 7) return cudaErrorNotSupported;
      return run(PolicyTag<PolWmmaF16>{});
    case DType::kBFloat16:
      if (sm < 8) return cudaErrorNotSupported;
      return run(PolicyTag<PolWmmaBF16>{});
    case DType::kFloat32:
      if (allow_tf32 && sm >= 8) return run(PolicyTag<PolWmmaTF32>{});
      return run(PolicyTag<PolSimt<float, float>>{});
    case DType::kFloat64:
      return run(PolicyTag<PolSimt<double, double>>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace detail
}  // namespace aspp
}  // namespace deeplabv2_ext
