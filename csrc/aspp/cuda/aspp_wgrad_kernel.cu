// Fused ASPP weight / bias gradients.
//
// grad_weight[r, k, c, ky, kx] = sum_{n,y,x} grad_output[n, k, y, x] * input[n, c, y + (ky-1) d_r, x + (kx-1) d_r]
//   (zero outside the map). Per tap this is a GEMM  M = K (rows), N = C (cols), K_gemm = N*H*W
//   (pixels). Taps are numbered as in aspp_conv_common.cuh: the centre tap (t = 0) is the same
//   for every branch, so it is computed ONCE and written to every grad_weight[r, :, :, 1, 1];
//   ntaps = 1 + 8R GEMMs in total, all in one launch:
//     grid = (ceil(C / 64), ceil(K / BKK), ntaps * splits)
//   Each CTA (256 threads = 2 groups of 4 warps) owns one tap, a 64-channel block of C, a BKK-block of K
//   (BKK = 16 / 32 / 64 from K; fp64 capped at 32) and a contiguous slice of the pixel range
//   (split-K over N*H*W; splits chosen so that the grid fills the GPU ~8 CTAs per SM).
//   Per 32-pixel chunk (16 for fp64) it stages in shared memory, double buffered through
//   registers like the forward:
//     G: [32 px][BKK]  grad_output (unshifted),   I: [32 px][64]  input window shifted by the tap,
//   and accumulates out[k][c] += G^T I  (WMMA: G is matrix_a col_major, I matrix_b row_major).
//   The two 4-warp groups each reduce half of the chunk's pixels (halves the registers each
//   thread stages); warp w of a group owns columns 16w..16w+15 and BKK/16 accumulator fragments;
//   the two partial tiles are summed in smem before the atomics. Pixel coordinates of the
//   chunks come from a triple-buffered smem table (filled one chunk ahead by the first warp), so no
//   64-bit divisions sit in the load path.
//   At the end each CTA atomically adds its fp32 (fp64 for float64) tile into a workspace
//   [ntaps][K][C]; a finalize kernel converts to the weight dtype and scatters into
//   grad_weight[r, k, c, ky, kx] (centre -> all r). Taps whose window is entirely outside the map
//   (rate >= H or W, small maps) exit immediately: their gradient is exactly zero.
//   Tensor cores: fp16 / bf16 WMMA m16n16k16, tf32 m16n16k8 when allow_tf32; exact SIMT FMA for
//   fp32 (no tf32) and fp64 (thread micro-tile BKK/8 x 4).
//   FLOP/byte: per chunk the CTA moves 32 x (BKK + 64) elements and issues 2 * 32 * BKK * 64 FLOP
//   (BKK = 32: ~21 FLOP per byte for fp16) -- L2-bandwidth bound like the forward, so the design
//   keeps the loads coalesced / vectorised and the tiles resident, not the MMA count minimal.
//
// grad_bias[r, k] = sum_{n,y,x} grad_output[n, k, y, x] for every r: a separate reduction kernel
//   (per image row, fp32 / fp64 partial sums in registers -> warp shuffles / smem -> one global
//   atomic per k and CTA into a [K] workspace), then a finalize kernel writes every row r.
//
// Workspace (weight sized): [ntaps * K * C] Acc  (256-aligned)  +  [K] Acc. Zeroed here.
// NOTE: written and compile-checked without a GPU; validate against the CPU reference.
#include "aspp_conv_common.cuh"

namespace deeplabv2_ext {
namespace aspp {
namespace detail {

template <typename T, typename Acc>
struct WgradArgs {
  const T* go;
  Strides4 go_s;
  const T* in;
  Strides4 in_s;
  Acc* ws;  // [ntaps][K][C]
  int64_t M, HW;
  int64_t nchunks;           // ceil(M / BP)
  int64_t chunks_per_split;  // pixel chunks per CTA
  int H, W, C, K, R, ntaps;
  int rates[kAsppMaxRates];  // clamped
};

constexpr int kWgradThreads = 256;  // two groups of 4 warps, each reduces half of every chunk
constexpr int kWgradBC = 64;

template <typename T>
constexpr int wgrad_chunk_pixels() {
  return sizeof(T) >= 8 ? 16 : 32;
}

template <typename T, int BKK, bool WMMA>
struct WgradSmem {
  static constexpr int BP = wgrad_chunk_pixels<T>();
  static constexpr int PADE = static_cast<int>(16 / sizeof(T));
  static constexpr int LDG = BKK + PADE;
  static constexpr int LDI = kWgradBC + PADE;
  static constexpr int LDC = kWgradBC + 4;
  static constexpr int G_ELEMS = BP * LDG;
  static constexpr int I_ELEMS = BP * LDI;
  static constexpr int PIPE_BYTES = static_cast<int>(2 * (G_ELEMS + I_ELEMS) * sizeof(T));
  static constexpr int EPI_BYTES = WMMA ? 2 * BKK * LDC * 4 : 0;  // one fp32 tile per group
  static constexpr int BYTES = PIPE_BYTES > EPI_BYTES ? PIPE_BYTES : EPI_BYTES;
  static_assert((G_ELEMS * sizeof(T)) % 128 == 0 && (I_ELEMS * sizeof(T)) % 128 == 0,
                "smem buffers must stay 128-byte aligned");
};

namespace {

template <class Pol, int BKK, int MODE_GO, int MODE_IN>
__global__ void __launch_bounds__(kWgradThreads, 2)
    aspp_wgrad_kernel(const __grid_constant__ WgradArgs<typename Pol::T, typename Pol::Acc> a) {
  using T = typename Pol::T;
  using Acc = typename Pol::Acc;
  using F = Frags<typename Pol::FragT>;
  using L = WgradSmem<T, BKK, Pol::kWmma>;
  constexpr int NT = kWgradThreads;
  constexpr int BC = kWgradBC;
  constexpr int BP = L::BP;
  constexpr int LDG = L::LDG;
  constexpr int LDI = L::LDI;
  constexpr int LDC = L::LDC;
  constexpr int NKF = BKK / 16;  // WMMA row fragments per warp
  constexpr int TI = BKK / 8;    // SIMT rows (k) per thread
  constexpr int TJ = 4;          // SIMT cols (c) per thread
  constexpr int KSTEPS = BP / Pol::KS;  // MMA k-steps per chunk, split between the 2 groups
  static_assert(BC == 16 * (NT / 64), "one 16-column WMMA strip per warp of a group");
  static_assert(BC == 16 * TJ && NT == 2 * 16 * 8, "SIMT micro-tile mapping");
  static_assert(KSTEPS % 2 == 0 && BP % 2 == 0, "chunk must split evenly between the groups");

  if constexpr (Pol::kWmma && !F::kOk) {
    __trap();  // see aspp_igemm_kernel: never a silent no-op on a PTX-JIT build
  } else {
    const int tid = threadIdx.x;
    const int c0 = blockIdx.x * BC;
    const int k0 = blockIdx.y * BKK;
    const int t = static_cast<int>(blockIdx.z % static_cast<unsigned>(a.ntaps));
    const int64_t split = blockIdx.z / static_cast<unsigned>(a.ntaps);
    const int64_t cbeg = split * a.chunks_per_split;
    int64_t cend = cbeg + a.chunks_per_split;
    if (cend > a.nchunks) cend = a.nchunks;
    int dy, dx;
    {
      int r, ky, kx;
      tap_decode(t, r, ky, kx);
      const int d = (t == 0) ? 0 : a.rates[r];
      dy = (ky - 1) * d;
      dx = (kx - 1) * d;
    }
    // Block-uniform exits (before any barrier): empty slice, or a window fully outside the map.
    if (cbeg >= cend) return;
    if (dy >= a.H || -dy >= a.H || dx >= a.W || -dx >= a.W) return;
    const int64_t nc = cend - cbeg;

    DLV2_SHARED_ALIGNED(128, unsigned char[L::BYTES], smem);
    DLV2_SHARED(int[3][BP], s_n);
    DLV2_SHARED(int[3][BP], s_y);
    DLV2_SHARED(int[3][BP], s_x);

    T* const G0 = reinterpret_cast<T*>(smem);
    T* const I0 = G0 + 2 * L::G_ELEMS;

    // Pixel table for local chunk j (j may run past the slice: entries become invalid).
    auto fill_table = [&](int tb, int64_t j) {
      if (tid < BP) {
        const int64_t chunk = cbeg + j;
        const int64_t m = chunk * BP + tid;
        int n = 0, y = kInvalidCoord, x = 0;
        if (chunk < cend && m < a.M) pixel_coords(m, a.HW, a.W, n, y, x);
        s_n[tb][tid] = n;
        s_y[tb][tid] = y;
        s_x[tb][tid] = x;
      }
    };

    TileLoader<T, BP, BKK, NT, MODE_GO> lg;
    TileLoader<T, BP, BC, NT, MODE_IN> li;

    fill_table(0, 0);
    fill_table(1, 1);
    __syncthreads();
    lg.load(a.go, a.go_s, s_n[0], s_y[0], s_x[0], 0, 0, k0, a.K, a.H, a.W, tid);
    li.load(a.in, a.in_s, s_n[0], s_y[0], s_x[0], dy, dx, c0, a.C, a.H, a.W, tid);
    lg.template store<LDG>(G0, tid);
    li.template store<LDI>(I0, tid);
    __syncthreads();

    // Table buffers rotate: chunk j lives in table j % 3.
    int tb_next = 1;  // table of chunk j + 1
    int tb_fill = 2;  // table to fill with chunk j + 2

    if constexpr (Pol::kWmma) {
#if ASPP_WMMA_AVAILABLE
      namespace wmma = nvcuda::wmma;
      const int warp = tid >> 5;
      const int grp = warp >> 2;   // group: k-steps [grp * KSTEPS / 2, (grp + 1) * KSTEPS / 2)
      const int wc = warp & 3;     // column strip 16 wc .. 16 wc + 15
      typename F::Acc acc[NKF];
#pragma unroll
      for (int f = 0; f < NKF; ++f) wmma::fill_fragment(acc[f], 0.0f);

      for (int64_t j = 0; j < nc; ++j) {
        const int buf = static_cast<int>(j & 1);
        if (j + 1 < nc) {
          lg.load(a.go, a.go_s, s_n[tb_next], s_y[tb_next], s_x[tb_next], 0, 0, k0, a.K, a.H, a.W, tid);
          li.load(a.in, a.in_s, s_n[tb_next], s_y[tb_next], s_x[tb_next], dy, dx, c0, a.C, a.H, a.W, tid);
        }
        const T* Gs = G0 + buf * L::G_ELEMS;
        const T* Is = I0 + buf * L::I_ELEMS + wc * 16;
#pragma unroll
        for (int kq = 0; kq < KSTEPS / 2; ++kq) {
          const int kk = grp * (KSTEPS / 2) + kq;
          typename F::BRow fb;
          wmma::load_matrix_sync(fb, Is + kk * Pol::KS * LDI, LDI);
          maybe_to_tf32<Pol::kTf32>(fb);
#pragma unroll
          for (int f = 0; f < NKF; ++f) {
            typename F::ACol fa;  // (k, p) = G[p][k]
            wmma::load_matrix_sync(fa, Gs + kk * Pol::KS * LDG + f * 16, LDG);
            maybe_to_tf32<Pol::kTf32>(fa);
            wmma::mma_sync(acc[f], fa, fb, acc[f]);
          }
        }
        if (j + 1 < nc) {
          lg.template store<LDG>(G0 + (buf ^ 1) * L::G_ELEMS, tid);
          li.template store<LDI>(I0 + (buf ^ 1) * L::I_ELEMS, tid);
        }
        fill_table(tb_fill, j + 2);
        tb_next = tb_next == 2 ? 0 : tb_next + 1;
        tb_fill = tb_fill == 2 ? 0 : tb_fill + 1;
        __syncthreads();
      }

      // Both groups' partial tiles -> smem (aliases the pipeline; the loop ended with a barrier),
      // summed, then one atomic per element.
      float* Cs = reinterpret_cast<float*>(smem);
#pragma unroll
      for (int f = 0; f < NKF; ++f)
        wmma::store_matrix_sync(Cs + grp * BKK * LDC + f * 16 * LDC + wc * 16, acc[f], LDC,
                                wmma::mem_row_major);
      __syncthreads();
      for (int e = tid; e < BKK * BC; e += NT) {
        const int col = e % BC;
        const int row = e / BC;
        const int k = k0 + row;
        const int c = c0 + col;
        if (k < a.K && c < a.C)
          atomicAdd(a.ws + (static_cast<int64_t>(t) * a.K + k) * a.C + c,
                    Cs[row * LDC + col] + Cs[BKK * LDC + row * LDC + col]);
      }
#endif  // ASPP_WMMA_AVAILABLE
    } else {
      // Group g = tid / 128 reduces pixels [g BP/2, (g+1) BP/2) of each chunk; within a group
      // thread (tx, ty) owns c = tx + 16 j (j < 4), k = ty + 8 i (i < BKK / 8).
      const int grp = tid >> 7;
      const int tx = tid & 15;
      const int ty = (tid & 127) >> 4;
      Acc acc[TI][TJ];
#pragma unroll
      for (int i = 0; i < TI; ++i)
#pragma unroll
        for (int jj = 0; jj < TJ; ++jj) acc[i][jj] = Acc(0);

      for (int64_t j = 0; j < nc; ++j) {
        const int buf = static_cast<int>(j & 1);
        if (j + 1 < nc) {
          lg.load(a.go, a.go_s, s_n[tb_next], s_y[tb_next], s_x[tb_next], 0, 0, k0, a.K, a.H, a.W, tid);
          li.load(a.in, a.in_s, s_n[tb_next], s_y[tb_next], s_x[tb_next], dy, dx, c0, a.C, a.H, a.W, tid);
        }
        const T* Gs = G0 + buf * L::G_ELEMS;
        const T* Is = I0 + buf * L::I_ELEMS;
#pragma unroll 4
        for (int p = grp * (BP / 2); p < (grp + 1) * (BP / 2); ++p) {
          Acc av[TI], bv[TJ];
#pragma unroll
          for (int i = 0; i < TI; ++i) av[i] = to_acc(Gs[p * LDG + ty + 8 * i]);
#pragma unroll
          for (int jj = 0; jj < TJ; ++jj) bv[jj] = to_acc(Is[p * LDI + tx + 16 * jj]);
#pragma unroll
          for (int i = 0; i < TI; ++i)
#pragma unroll
            for (int jj = 0; jj < TJ; ++jj) acc[i][jj] = mad(av[i], bv[jj], acc[i][jj]);
        }
        if (j + 1 < nc) {
          lg.template store<LDG>(G0 + (buf ^ 1) * L::G_ELEMS, tid);
          li.template store<LDI>(I0 + (buf ^ 1) * L::I_ELEMS, tid);
        }
        fill_table(tb_fill, j + 2);
        tb_next = tb_next == 2 ? 0 : tb_next + 1;
        tb_fill = tb_fill == 2 ? 0 : tb_fill + 1;
        __syncthreads();
      }

#pragma unroll
      for (int i = 0; i < TI; ++i) {
        const int k = k0 + ty + 8 * i;
        if (k >= a.K) continue;
#pragma unroll
        for (int jj = 0; jj < TJ; ++jj) {
          const int c = c0 + tx + 16 * jj;
          if (c < a.C) atomicAdd(a.ws + (static_cast<int64_t>(t) * a.K + k) * a.C + c, acc[i][jj]);
        }
      }
    }
  }
}

// grad_weight[r, k, c, ky, kx] = ws[tap(r, ky, kx)][k][c]  (centre tap shared by all r).
template <typename T, typename Acc>
__global__ void aspp_wgrad_finalize_kernel(const Acc* __restrict__ ws, int R, int K, int C,
                                           T* __restrict__ gw, Strides5 s) {
  const int64_t total = static_cast<int64_t>(R) * K * C * 9;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int kx = static_cast<int>(idx % 3);
    const int ky = static_cast<int>((idx / 3) % 3);
    const int64_t rkc = idx / 9;
    const int c = static_cast<int>(rkc % C);
    const int k = static_cast<int>((rkc / C) % K);
    const int r = static_cast<int>(rkc / (static_cast<int64_t>(C) * K));
    const int t = tap_encode(r, ky, kx);
    gw[static_cast<int64_t>(r) * s.s0 + static_cast<int64_t>(k) * s.s1 +
       static_cast<int64_t>(c) * s.s2 + ky * s.s3 + kx * s.s4] =
        Cvt<T>::from(ws[(static_cast<int64_t>(t) * K + k) * C + c]);
  }
}

// ws_b[k] += sum over this CTA's image rows of grad_output[n, k, y, :], k in [kb, kb + 32).
// kfast (stride_k == 1): lanes walk k, the 8 warps walk x. Otherwise lanes walk x and warp w
// handles k = kb + w + 8 i (i < 4).
template <typename T, typename Acc>
__global__ void __launch_bounds__(256)
    aspp_bias_grad_kernel(const T* __restrict__ go, Strides4 s, int64_t rows, int H, int W, int K,
                          bool kfast, Acc* __restrict__ ws_b) {
  DLV2_SHARED(Acc[8][32], red);
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int kb = blockIdx.y * 32;
  red[warp][lane] = Acc(0);
  __syncthreads();
  Acc part[4] = {Acc(0), Acc(0), Acc(0), Acc(0)};
  for (int64_t ri = blockIdx.x; ri < rows; ri += gridDim.x) {
    const int64_t n = ri / H;
    const int y = static_cast<int>(ri - n * H);
    const T* row = go + n * s.n + static_cast<int64_t>(y) * s.h;
    if (kfast) {
      const int k = kb + lane;
      if (k < K)
        for (int x = warp; x < W; x += 8) part[0] += to_acc(row[static_cast<int64_t>(x) * s.w + k * s.c]);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int k = kb + warp + 8 * i;
        if (k < K)
          for (int x = lane; x < W; x += 32)
            part[i] += to_acc(row[static_cast<int64_t>(x) * s.w + static_cast<int64_t>(k) * s.c]);
      }
    }
  }
  if (kfast) {
    red[warp][lane] = part[0];  // k = kb + lane
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      Acc v = part[i];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) red[0][warp + 8 * i] = v;  // k = kb + warp + 8 i
    }
  }
  __syncthreads();
  if (tid < 32 && kb + tid < K) {
    Acc v = Acc(0);
#pragma unroll
    for (int w = 0; w < 8; ++w) v += red[w][tid];
    atomicAdd(&ws_b[kb + tid], v);
  }
}

template <typename T, typename Acc>
__global__ void aspp_bias_finalize_kernel(const Acc* __restrict__ ws_b, int R, int K,
                                          T* __restrict__ gb, int64_t s0, int64_t s1) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(R) * K) return;
  const int r = static_cast<int>(idx / K);
  const int k = static_cast<int>(idx - static_cast<int64_t>(r) * K);
  gb[static_cast<int64_t>(r) * s0 + static_cast<int64_t>(k) * s1] = Cvt<T>::from(ws_b[k]);
}

struct WgradLayout {
  int BKK, ntaps;
  size_t ws_w_bytes, bias_offset, total;
};

WgradLayout wgrad_layout(const AsppWgradParams& p) {
  WgradLayout L;
  const int es = element_size(p.dtype);
  const int as = acc_size(p.dtype);
  L.BKK = pick_block_n(p.K, es);
  L.ntaps = num_taps(p.R);
  L.ws_w_bytes = align_up(static_cast<size_t>(L.ntaps) * p.K * p.C * as);
  L.bias_offset = L.ws_w_bytes;
  L.total = L.ws_w_bytes + align_up(static_cast<size_t>(p.K) * as);
  return L;
}

bool wgrad_params_ok(const AsppWgradParams& p) {
  if (p.grad_output == nullptr) return false;
  if (p.grad_weight != nullptr && p.input == nullptr) return false;
  if (p.N < 1 || p.C < 1 || p.H < 1 || p.W < 1 || p.K < 1) return false;
  if (p.N > INT32_MAX) return false;  // pixel_coords() keeps n in an int
  if (p.R < 1 || p.R > kAsppMaxRates) return false;
  if (p.H >= kAsppMaxSpatial || p.W >= kAsppMaxSpatial) return false;
  if (static_cast<int64_t>(p.H) * p.W >= (int64_t(1) << 31)) return false;
  for (int r = 0; r < p.R; ++r)
    if (p.rates[r] < 1) return false;
  if (ceil_div(p.K, pick_block_n(p.K, element_size(p.dtype))) > 65535) return false;
  if (p.grad_bias != nullptr && ceil_div(p.K, 32) > 65535) return false;  // bias gridDim.y
  return true;
}

template <class Pol, int BKK, int MODE_GO>
void launch_wgrad_mode_in(const WgradArgs<typename Pol::T, typename Pol::Acc>& a, int mode_in,
                          dim3 grid, cudaStream_t stream) {
  switch (mode_in) {
    case kLoadPixelFast:
      launch_kernel<aspp_wgrad_kernel<Pol, BKK, MODE_GO, kLoadPixelFast>>(grid, kWgradThreads, 0,
                                                                          stream, a);
      break;
    case kLoadChanFast:
      launch_kernel<aspp_wgrad_kernel<Pol, BKK, MODE_GO, kLoadChanFast>>(grid, kWgradThreads, 0,
                                                                         stream, a);
      break;
    default:
      launch_kernel<aspp_wgrad_kernel<Pol, BKK, MODE_GO, kLoadVec>>(grid, kWgradThreads, 0, stream,
                                                                    a);
      break;
  }
}

template <class Pol, int BKK>
void launch_wgrad_bkk(const WgradArgs<typename Pol::T, typename Pol::Acc>& a, bool go_chan_fast,
                      int mode_in, dim3 grid, cudaStream_t stream) {
  if (go_chan_fast)
    launch_wgrad_mode_in<Pol, BKK, kLoadChanFast>(a, mode_in, grid, stream);
  else
    launch_wgrad_mode_in<Pol, BKK, kLoadPixelFast>(a, mode_in, grid, stream);
}

template <class Pol>
cudaError_t run_wgrad(const AsppWgradParams& p, const WgradLayout& L, cudaStream_t stream) {
  using T = typename Pol::T;
  using Acc = typename Pol::Acc;
  unsigned char* wsb = static_cast<unsigned char*>(p.workspace);
  const int64_t HW = static_cast<int64_t>(p.H) * p.W;
  const int64_t M = p.N * HW;
  const Strides4 go_s = make_strides4(p.go_stride);
  const int sms = current_sm_count();

  if (p.grad_weight != nullptr) {
    Acc* ws = reinterpret_cast<Acc*>(wsb);
    cudaError_t err = cudaMemsetAsync(ws, 0, L.ws_w_bytes, stream);
    if (err != cudaSuccess) return err;

    WgradArgs<T, Acc> a;
    a.go = static_cast<const T*>(p.grad_output);
    a.go_s = go_s;
    a.in = static_cast<const T*>(p.input);
    a.in_s = make_strides4(p.in_stride);
    a.ws = ws;
    a.M = M;
    a.HW = HW;
    constexpr int BP = wgrad_chunk_pixels<T>();
    a.nchunks = ceil_div(M, BP);
    a.H = p.H;
    a.W = p.W;
    a.C = p.C;
    a.K = p.K;
    a.R = p.R;
    a.ntaps = L.ntaps;
    for (int r = 0; r < kAsppMaxRates; ++r) a.rates[r] = r < p.R ? clamp_rate(p.rates[r], p.H, p.W) : 0;

    const int64_t cblocks = ceil_div(p.C, kWgradBC);
    const int64_t kblocks = ceil_div(p.K, L.BKK);
    const int64_t base = cblocks * kblocks * L.ntaps;
    const int64_t target = 8 * static_cast<int64_t>(sms);
    int64_t splits = ceil_div(target, base);
    const int64_t max_by_work = a.nchunks / 16 > 1 ? a.nchunks / 16 : 1;  // >= 16 chunks per CTA
    if (splits > max_by_work) splits = max_by_work;
    const int64_t max_by_grid = 65535 / L.ntaps;
    if (splits > max_by_grid) splits = max_by_grid;
    if (splits < 1) splits = 1;
    a.chunks_per_split = ceil_div(a.nchunks, splits);
    splits = ceil_div(a.nchunks, a.chunks_per_split);
    if (cblocks > 0x7fffffff) return cudaErrorInvalidValue;
    const dim3 grid(static_cast<unsigned>(cblocks), static_cast<unsigned>(kblocks),
                    static_cast<unsigned>(splits * L.ntaps));

    const bool go_cf = channel_fast(go_s, p.K);
    const int mode_in = pick_load_mode(p.input, static_cast<int>(sizeof(T)), a.in_s, p.C);
    if (L.BKK == 16) {
      launch_wgrad_bkk<Pol, 16>(a, go_cf, mode_in, grid, stream);
    } else if (L.BKK == 32) {
      launch_wgrad_bkk<Pol, 32>(a, go_cf, mode_in, grid, stream);
    } else {
      if constexpr (sizeof(T) <= 4) launch_wgrad_bkk<Pol, 64>(a, go_cf, mode_in, grid, stream);
    }

    const int64_t total = static_cast<int64_t>(p.R) * p.K * p.C * 9;
    const int64_t blocks = ceil_div(total, 256) < 8192 ? ceil_div(total, 256) : 8192;
    launch_kernel<aspp_wgrad_finalize_kernel<T, Acc>>(
        static_cast<unsigned>(blocks), 256, 0, stream, ws, p.R, p.K, p.C,
        static_cast<T*>(p.grad_weight), make_strides5(p.gw_stride));
  }

  if (p.grad_bias != nullptr) {
    Acc* ws_b = reinterpret_cast<Acc*>(wsb + L.bias_offset);
    cudaError_t err = cudaMemsetAsync(ws_b, 0, static_cast<size_t>(p.K) * sizeof(Acc), stream);
    if (err != cudaSuccess) return err;
    const int64_t rows = p.N * p.H;
    const int64_t kb = ceil_div(p.K, 32);
    int64_t xb = ceil_div(4 * static_cast<int64_t>(sms), kb);
    if (xb > rows) xb = rows;
    if (xb > 65535) xb = 65535;
    if (xb < 1) xb = 1;
    const dim3 grid(static_cast<unsigned>(xb), static_cast<unsigned>(kb));
    launch_kernel<aspp_bias_grad_kernel<T, Acc>>(grid, 256, 0, stream,
                                                 static_cast<const T*>(p.grad_output), go_s, rows,
                                                 p.H, p.W, p.K, channel_fast(go_s, p.K), ws_b);
    const int64_t total = static_cast<int64_t>(p.R) * p.K;
    launch_kernel<aspp_bias_finalize_kernel<T, Acc>>(
        static_cast<unsigned>(ceil_div(total, 256)), 256, 0, stream,
        ws_b, p.R, p.K, static_cast<T*>(p.grad_bias), p.gb_stride[0], p.gb_stride[1]);
  }
  return cudaPeekAtLastError();
}

}  // namespace
}  // namespace detail

size_t aspp_wgrad_workspace_bytes(const AsppWgradParams& p) { return detail::wgrad_layout(p).total; }

cudaError_t launch_aspp_wgrad(const AsppWgradParams& p, cudaStream_t stream) {
  using namespace detail;
  if (p.grad_weight == nullptr && p.grad_bias == nullptr) return cudaSuccess;
  if (!wgrad_params_ok(p) || p.workspace == nullptr) return cudaErrorInvalidValue;
  const WgradLayout L = wgrad_layout(p);
  return dispatch_policy(p.dtype, p.allow_tf32, [&](auto policy) {
    return run_wgrad<typename decltype(policy)::type>(p, L, stream);
  });
}

}  // namespace aspp
}  // namespace deeplabv2_ext
