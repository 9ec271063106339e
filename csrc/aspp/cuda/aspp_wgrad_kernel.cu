// Fused ASPP weight / bias gradients.
//
// grad_weight[r, k, c, ky, kx] = sum_{n,y,x} grad_output[n, k, y, x] * input[n, c, y + (ky-1) d_r, x + (kx-1) d_r]
//   (zero outside the map). Per tap this is a GEMM  M = K (rows), N = C (cols), K_gemm = N*H*W
//   (pixels). Taps are numbered as in aspp_conv_common.cuh: the centre tap (t = 0) is the same
//   for every branch, so it is computed ONCE and written to every grad_weight[r, :, :, 1, 1];
//   ntaps = 1 + 8R GEMMs in total, all in one launch:
//     grid = (ceil(C / 64), ceil(K / BlockOutCh), ntaps * splits)
//   Each CTA (256 threads = 2 groups of 4 warps) owns one tap, a 64-channel block of C, a
//   BlockOutCh block of K (16 / 32 / 64 from K; fp64 capped at 32) and a contiguous slice of the
//   pixel range (split-K over N*H*W; splits chosen so that the grid fills the GPU ~8 CTAs per SM).
//   Mainloop (double_buffered_mainloop, like the forward): per chunk of 32 pixels (16 for fp64)
//   it stages in shared memory
//     G: [32 px][BlockOutCh] grad_output (unshifted),   I: [32 px][64] input window shifted by the tap.
//   Pixel coordinates of the chunks come from a triple-buffered smem table (filled two chunks
//   ahead by the first threads), so no 64-bit divisions sit in the load path.
//   MMA step (WgradMma): out[k][c] += G^T I, each group over half of the chunk's pixels (halves the
//   registers each thread stages); fp16 / bf16 WMMA m16n16k16, tf32 m16n16k8 when allow_tf32, exact
//   SIMT FMA for fp32 (no tf32) and fp64 (thread micro-tile BlockOutCh/8 x 4).
//   Epilogue: the two groups' partial tiles are summed and atomically added (fp32, fp64 for
//   float64) into a workspace [ntaps][K][C]; a finalize kernel converts to the weight dtype and
//   scatters into grad_weight[r, k, c, ky, kx] (centre -> all r). Taps whose window is entirely
//   outside the map (rate >= H or W, small maps) exit immediately: their gradient is exactly zero.
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
  int64_t nchunks;           // ceil(M / chunk pixels)
  int64_t chunks_per_split;  // pixel chunks per CTA
  int H, W, C, K, R, ntaps;
  int rates[kAsppMaxRates];  // clamped
};

constexpr int kWgradThreads = 256;  // two groups of 4 warps, each reduces half of every chunk
constexpr int kWgradBlockInCh = 64;  // input channels c per CTA

template <typename T>
constexpr int wgrad_chunk_pixels() {
  return sizeof(T) >= 8 ? 16 : 32;
}

template <typename T, int BlockOutCh, bool WMMA>
struct WgradSmem {
  static constexpr int BP = wgrad_chunk_pixels<T>();
  static constexpr int PADE = static_cast<int>(16 / sizeof(T));
  static constexpr int LDG = BlockOutCh + PADE;
  static constexpr int LDI = kWgradBlockInCh + PADE;
  static constexpr int LDC = kWgradBlockInCh + 4;
  static constexpr int G_ELEMS = BP * LDG;
  static constexpr int I_ELEMS = BP * LDI;
  static constexpr int PIPE_BYTES = static_cast<int>(2 * (G_ELEMS + I_ELEMS) * sizeof(T));
  static constexpr int EPI_BYTES = WMMA ? 2 * BlockOutCh * LDC * 4 : 0;  // one fp32 tile per group
  static constexpr int BYTES = PIPE_BYTES > EPI_BYTES ? PIPE_BYTES : EPI_BYTES;
  static_assert((G_ELEMS * sizeof(T)) % 128 == 0 && (I_ELEMS * sizeof(T)) % 128 == 0,
                "smem buffers must stay 128-byte aligned");
};

// The CTA's gradient tile: tap t, output channels k0 .. k0 + BlockOutCh - 1, input channels
// c0 .. c0 + 63; its partial sum goes to ws[t][k][c].
struct WgradTile {
  int t, k0, c0;
};

// The per-chunk MMA and the epilogue of the weight gradient, per math policy. The two 4-warp
// groups each reduce half of every chunk's pixels.
template <class Pol, int BlockOutCh, bool kTensorCores = Pol::kWmma>
struct WgradMma;

// Exact SIMT FMA in Acc: group g = tid / 128 reduces pixels [g BP/2, (g+1) BP/2) of each chunk;
// within a group thread (tx, ty) owns c = tx + 16 j (j < 4), k = ty + 8 i (i < BlockOutCh / 8).
template <class Pol, int BlockOutCh>
struct WgradMma<Pol, BlockOutCh, false> {
  using T = typename Pol::T;
  using Acc = typename Pol::Acc;
  using Smem = WgradSmem<T, BlockOutCh, false>;
  static constexpr int BP = Smem::BP;
  static constexpr int kThreadOutCh = BlockOutCh / 8;  // k values per thread
  static constexpr int kThreadInCh = 4;                // c values per thread
  static_assert(kWgradBlockInCh == 16 * kThreadInCh && kWgradThreads == 2 * 16 * 8,
                "SIMT micro-tile mapping");
  static_assert(BP % 2 == 0, "chunk must split evenly between the groups");

  int grp, tx, ty;
  Acc acc[kThreadOutCh][kThreadInCh];

  ASPP_D explicit WgradMma(int tid) : grp(tid >> 7), tx(tid & 15), ty((tid & 127) >> 4) {
#pragma unroll
    for (int i = 0; i < kThreadOutCh; ++i)
#pragma unroll
      for (int j = 0; j < kThreadInCh; ++j) acc[i][j] = Acc(0);
  }

  // acc[k][c] += sum over this group's pixels p of G[p][k] * I[p][c].
  ASPP_D void step(const T* Gs, const T* Is) {
#pragma unroll 4
    for (int p = grp * (BP / 2); p < (grp + 1) * (BP / 2); ++p)
      fma_outer_product<8, 16>(acc, Gs + p * Smem::LDG + ty, Is + p * Smem::LDI + tx);
  }

  // One atomic per accumulator (both groups add into the same workspace element).
  ASPP_D void epilogue(const WgradArgs<T, Acc>& a, const WgradTile& tile, unsigned char*, int) const {
#pragma unroll
    for (int i = 0; i < kThreadOutCh; ++i) {
      const int k = tile.k0 + ty + 8 * i;
      if (k >= a.K) continue;
#pragma unroll
      for (int j = 0; j < kThreadInCh; ++j) {
        const int c = tile.c0 + tx + 16 * j;
        if (c < a.C) atomicAdd(a.ws + (static_cast<int64_t>(tile.t) * a.K + k) * a.C + c, acc[i][j]);
      }
    }
  }
};

#if ASPP_WMMA_AVAILABLE
// Tensor cores: G is matrix_a col_major ((k, p) = G[p][k]), I matrix_b row_major. Warp w of
// group g = w / 4 owns input channels 16 (w % 4) .. + 15 and BlockOutCh / 16 accumulator
// fragments, over the k-steps [g KSTEPS / 2, (g + 1) KSTEPS / 2) of each chunk.
template <class Pol, int BlockOutCh>
struct WgradMma<Pol, BlockOutCh, true> {
  using T = typename Pol::T;
  using Acc = typename Pol::Acc;
  using F = Frags<typename Pol::FragT>;
  using Smem = WgradSmem<T, BlockOutCh, true>;
  static constexpr int kFragsPerWarp = BlockOutCh / 16;
  static constexpr int KSTEPS = Smem::BP / Pol::KS;  // MMA k-steps per chunk, split between the groups
  static_assert(kWgradBlockInCh == 16 * (kWgradThreads / 64), "one 16-column WMMA strip per warp of a group");
  static_assert(KSTEPS % 2 == 0, "chunk must split evenly between the groups");

  int grp, strip;
  typename F::Acc acc[kFragsPerWarp];

  ASPP_D explicit WgradMma(int tid) : grp((tid >> 5) >> 2), strip((tid >> 5) & 3) {
#pragma unroll
    for (int f = 0; f < kFragsPerWarp; ++f) nvcuda::wmma::fill_fragment(acc[f], 0.0f);
  }

  ASPP_D void step(const T* Gs, const T* Is) {
    Is += strip * 16;
#pragma unroll
    for (int kq = 0; kq < KSTEPS / 2; ++kq) {
      const int kk = grp * (KSTEPS / 2) + kq;
      typename F::BRow fb;
      load_fragment<Pol::kTf32>(fb, Is + kk * Pol::KS * Smem::LDI, Smem::LDI);
      // A = G as col_major: (k, p) = G[p][k].
      mma_shared_operand</*kSharedIsA=*/false, Pol::kTf32, typename F::ACol>(
          acc, fb, Gs + kk * Pol::KS * Smem::LDG, Smem::LDG);
    }
  }

  // Both groups' partial tiles -> smem (aliases the pipeline; the mainloop ended with a barrier),
  // summed, then one atomic per element.
  ASPP_D void epilogue(const WgradArgs<T, Acc>& a, const WgradTile& tile, unsigned char* smem,
                       int tid) const {
    constexpr int LDC = Smem::LDC;
    const float* Cs = store_accumulators(smem, grp * BlockOutCh * LDC + strip * 16, 16 * LDC, LDC, acc);
    for (int e = tid; e < BlockOutCh * kWgradBlockInCh; e += kWgradThreads) {
      const int col = e % kWgradBlockInCh;
      const int row = e / kWgradBlockInCh;
      const int k = tile.k0 + row;
      const int c = tile.c0 + col;
      if (k < a.K && c < a.C)
        atomicAdd(a.ws + (static_cast<int64_t>(tile.t) * a.K + k) * a.C + c,
                  Cs[row * LDC + col] + Cs[BlockOutCh * LDC + row * LDC + col]);
    }
  }
};
#endif  // ASPP_WMMA_AVAILABLE

namespace {

template <class Pol, int BlockOutCh, int GoLoadMode, int InLoadMode>
__global__ void __launch_bounds__(kWgradThreads, 2)
    aspp_wgrad_kernel(const __grid_constant__ WgradArgs<typename Pol::T, typename Pol::Acc> a) {
  using T = typename Pol::T;
  using Smem = WgradSmem<T, BlockOutCh, Pol::kWmma>;
  constexpr int BP = Smem::BP;

  if constexpr (Pol::kWmma && !Frags<typename Pol::FragT>::kOk) {
    __trap();  // see aspp_igemm_kernel: never a silent no-op on a PTX-JIT build
  } else {
    const int tid = threadIdx.x;
    const int c0 = blockIdx.x * kWgradBlockInCh;
    const int k0 = blockIdx.y * BlockOutCh;
    const int t = static_cast<int>(blockIdx.z % static_cast<unsigned>(a.ntaps));
    const int64_t split = blockIdx.z / static_cast<unsigned>(a.ntaps);
    const int64_t cbeg = split * a.chunks_per_split;
    int64_t cend = cbeg + a.chunks_per_split;
    if (cend > a.nchunks) cend = a.nchunks;
    int dy, dx;
    tap_shift(t, a.rates, /*sign=*/1, dy, dx);
    // Block-uniform exits (before any barrier): empty slice, or a window fully outside the map.
    if (cbeg >= cend) return;
    if (dy >= a.H || -dy >= a.H || dx >= a.W || -dx >= a.W) return;
    const int64_t nc = cend - cbeg;

    DLV2_SHARED_ALIGNED(128, unsigned char[Smem::BYTES], smem);
    DLV2_SHARED(int[3][BP], s_n);
    DLV2_SHARED(int[3][BP], s_y);
    DLV2_SHARED(int[3][BP], s_x);

    T* const G0 = reinterpret_cast<T*>(smem);
    T* const I0 = G0 + 2 * Smem::G_ELEMS;

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

    TileLoader<T, BP, BlockOutCh, kWgradThreads, GoLoadMode> load_go;
    TileLoader<T, BP, kWgradBlockInCh, kWgradThreads, InLoadMode> load_in;
    // Chunk of pixel table tb: grad_output unshifted, input shifted by the tap.
    auto load_chunk = [&](int tb) {
      load_go.load(a.go, a.go_s, s_n[tb], s_y[tb], s_x[tb], 0, 0, k0, a.K, a.H, a.W, tid);
      load_in.load(a.in, a.in_s, s_n[tb], s_y[tb], s_x[tb], dy, dx, c0, a.C, a.H, a.W, tid);
    };
    auto store_chunk = [&](int buf) {
      load_go.template store<Smem::LDG>(G0 + buf * Smem::G_ELEMS, tid);
      load_in.template store<Smem::LDI>(I0 + buf * Smem::I_ELEMS, tid);
    };

    fill_table(0, 0);
    fill_table(1, 1);
    __syncthreads();
    load_chunk(0);
    store_chunk(0);
    __syncthreads();

    // Table buffers rotate: chunk j lives in table j % 3 (no 64-bit modulo in the loop).
    int tb_next = 1;  // table of chunk j + 1
    int tb_fill = 2;  // table to fill with chunk j + 2
    WgradMma<Pol, BlockOutCh> mma(tid);
    double_buffered_mainloop(
        nc, [&](int64_t) { load_chunk(tb_next); },
        [&](int buf) { mma.step(G0 + buf * Smem::G_ELEMS, I0 + buf * Smem::I_ELEMS); }, store_chunk,
        [&](int64_t j) {
          fill_table(tb_fill, j + 2);
          tb_next = tb_next == 2 ? 0 : tb_next + 1;
          tb_fill = tb_fill == 2 ? 0 : tb_fill + 1;
        });
    mma.epilogue(a, WgradTile{t, k0, c0}, smem, tid);
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

// Workspace: fp32 (fp64 for float64) accumulators [ntaps][K][C] for the weight, then [K] for
// the bias.
struct WgradLayout {
  int block_out_ch, ntaps;
  size_t weight_acc_bytes, bias_offset, total;
};

WgradLayout wgrad_layout(const AsppWgradParams& p) {
  WgradLayout L;
  const int as = acc_size(p.dtype);
  L.block_out_ch = pick_block_n(p.K, element_size(p.dtype));
  L.ntaps = num_taps(p.R);
  L.weight_acc_bytes = align_up(static_cast<size_t>(L.ntaps) * p.K * p.C * as);
  L.bias_offset = L.weight_acc_bytes;
  L.total = L.weight_acc_bytes + align_up(static_cast<size_t>(p.K) * as);
  return L;
}

bool wgrad_params_ok(const AsppWgradParams& p) {
  if (p.grad_output == nullptr) return false;
  if (p.grad_weight != nullptr && p.input == nullptr) return false;
  if (!problem_ok(p) || !out_channel_blocks_ok(p.K, p.dtype)) return false;
  if (p.grad_bias != nullptr && ceil_div(p.K, 32) > 65535) return false;  // bias gridDim.y
  return true;
}

// Split-K over the pixels: enough CTAs to fill the GPU (~8 per SM), at least 16 chunks each.
int64_t wgrad_chunks_per_split(int64_t nchunks, int64_t ctas_per_split, int ntaps, int sms) {
  const int64_t target = 8 * static_cast<int64_t>(sms);
  int64_t splits = ceil_div(target, ctas_per_split);
  const int64_t max_by_work = nchunks / 16 > 1 ? nchunks / 16 : 1;  // >= 16 chunks per CTA
  if (splits > max_by_work) splits = max_by_work;
  const int64_t max_by_grid = 65535 / ntaps;
  if (splits > max_by_grid) splits = max_by_grid;
  if (splits < 1) splits = 1;
  return ceil_div(nchunks, splits);
}

template <class Pol>
cudaError_t run_wgrad(const AsppWgradParams& p, cudaStream_t stream) {
  using T = typename Pol::T;
  using Acc = typename Pol::Acc;
  const WgradLayout L = wgrad_layout(p);
  unsigned char* workspace = static_cast<unsigned char*>(p.workspace);
  const Strides4 go_s = make_strides4(p.go_stride);
  const int sms = current_sm_count();

  if (p.grad_weight != nullptr) {
    Acc* weight_acc = reinterpret_cast<Acc*>(workspace);
    cudaError_t err = cudaMemsetAsync(weight_acc, 0, L.weight_acc_bytes, stream);
    if (err != cudaSuccess) return err;

    WgradArgs<T, Acc> a;
    a.go = static_cast<const T*>(p.grad_output);
    a.go_s = go_s;
    a.in = static_cast<const T*>(p.input);
    a.in_s = make_strides4(p.in_stride);
    a.ws = weight_acc;
    set_geometry(a, p);
    a.nchunks = ceil_div(a.M, wgrad_chunk_pixels<T>());
    a.C = p.C;
    a.K = p.K;
    a.ntaps = L.ntaps;

    const int64_t cblocks = ceil_div(p.C, kWgradBlockInCh);
    const int64_t kblocks = ceil_div(p.K, L.block_out_ch);
    a.chunks_per_split = wgrad_chunks_per_split(a.nchunks, cblocks * kblocks * L.ntaps, L.ntaps, sms);
    const int64_t splits = ceil_div(a.nchunks, a.chunks_per_split);
    if (cblocks > 0x7fffffff) return cudaErrorInvalidValue;
    const dim3 grid(static_cast<unsigned>(cblocks), static_cast<unsigned>(kblocks),
                    static_cast<unsigned>(splits * L.ntaps));

    const bool go_chan_fast = channel_fast(go_s, p.K);
    const int in_load_mode = pick_load_mode(p.input, static_cast<int>(sizeof(T)), a.in_s, p.C);
    DLV2_INT_SWITCH3(L.block_out_ch, kBlockOutCh, 16, 32, 64, [&] {
      if constexpr (sizeof(T) <= 4 || kBlockOutCh <= 32) {  // fp64 is capped at 32 (registers)
        DLV2_BOOL_SWITCH(go_chan_fast, kGoChanFast, [&] {
          constexpr int kGoLoadMode = kGoChanFast ? kLoadChanFast : kLoadPixelFast;
          DLV2_INT_SWITCH3(in_load_mode, kInLoadMode, kLoadPixelFast, kLoadChanFast, kLoadVec, [&] {
            launch_kernel<aspp_wgrad_kernel<Pol, kBlockOutCh, kGoLoadMode, kInLoadMode>>(
                grid, dim3(kWgradThreads), 0, stream, a);
          });
        });
      }
    });

    const int64_t total = static_cast<int64_t>(p.R) * p.K * p.C * 9;
    const int64_t blocks = ceil_div(total, 256) < 8192 ? ceil_div(total, 256) : 8192;
    launch_kernel<aspp_wgrad_finalize_kernel<T, Acc>>(
        static_cast<unsigned>(blocks), 256, 0, stream, weight_acc, p.R, p.K, p.C,
        static_cast<T*>(p.grad_weight), make_strides5(p.gw_stride));
  }

  if (p.grad_bias != nullptr) {
    Acc* ws_b = reinterpret_cast<Acc*>(workspace + L.bias_offset);
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
  if (!wgrad_params_ok(p)) return cudaErrorInvalidValue;
  return ASPP_POLICY_SWITCH(p.dtype, p.allow_tf32, Pol, [&] { return run_wgrad<Pol>(p, stream); });
}

}  // namespace aspp
}  // namespace deeplabv2_ext
