// Permutohedral filter on the GPU: splat -> blur (D+1 axes) -> slice, for point-major values
// [N, P, V] (float32 with float32 lattice buffers, or float64 with float64 buffers) on a lattice
// of M vertices (vertex_index / vertex_weight [N, P, D+1], blur_neighbors [D+1, M, 2], splat
// plan splat_offsets [M+1] / splat_entries [N*P*(D+1)]).
//
// Lattice buffers: two [M, V] row-major arrays (the V values of a vertex contiguous), ping-pong.
// Every kernel is one thread per (item, value) element, value fastest, so that all V values of a
// row are handled together by adjacent lanes and every row read / write is coalesced:
//   splat  lattice[i, v] = sum over k in [offsets[i], offsets[i+1]) of
//                          w[e_k] * values[e_k / (D+1), v],   e_k = splat_entries[k],
//          a gather over the splat plan (no atomics, no memset) in two passes, so that the time
//          does not depend on the longest list (flat image regions put thousands of entries on
//          one bilateral vertex: up to 18935 of the 1.57 million entries at 512x512 on
//          skimage's astronaut with sxy 121, srgb 5, where one thread per vertex would walk
//          18935 entries). Each list is summed in chunks of kSplatBlock entries from its own
//          start (pass 1, one thread per block of kSplatBlock plan entries: the lists and
//          chunks that start in it), then its chunks in order (pass 2, one thread per vertex):
//          the result depends only on the list, not on the vertex numbering. Within a chunk the
//          entries are summed in increasing k with explicit round-to-nearest multiply and add
//          (no FMA contraction), 4 at a time with the loads issued first.
//   blur   (vertex i, v), one launch per axis (0..D, or D..0 when reverse):
//            new[i, v] = old[i, v] + 0.5 * (old[n1, v] + old[n2, v]),  missing neighbour = 0,
//          the v2 code's arithmetic.
//   slice  (point t, v): out[t, v] = sum_r (w_r * alpha) * lattice[idx_r, v], r = 0..D, in the CPU
//          op's order and rounding (alpha = slice_alpha(D)); with `accumulate`, out[t, v] += it.
//   The splat reads p.splat_weight when set (else vertex_weight); the slice reads p.slice_weight
//   when set, which already holds the slice constant (alpha = 1), else vertex_weight.
// Launches per filter: 2 splat + (D+1) blur + 1 slice; no host synchronisation.
//
// Index checks: out-of-range vertex_index / splat_entries, blur_neighbors outside [-1, M), or
// splat_offsets that decrease, leave [0, N*P*(D+1)] or do not start at 0 and end at N*P*(D+1)
// __trap() (device-side assert) instead of touching memory out of bounds or skipping entries.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../../common/device_portability.cuh"
#include "../../common/workspace.h"
#include "../permutohedral_math.h"
#include "permutohedral_kernel.cuh"
#include "permutohedral_launch.cuh"

namespace deeplabv2_ext {
namespace densecrf {
namespace {

using launch::kThreads;
constexpr int kSplatUnroll = 4;

// Splat-plan blocks of kSplatBlock entries (pass 1 of the splat).
__host__ __device__ inline int64_t splat_blocks(int64_t entries) {
  return ceil_div(entries, kSplatBlock);
}

using launch::blocks_for;

// (row, col) of flat element `idx` of a [rows, V] array; 32-bit division when the array fits.
__device__ __forceinline__ void split_index(int64_t idx, int64_t V, bool small, int64_t& row,
                                            int64_t& col) {
  if (small) {
    const uint32_t r = static_cast<uint32_t>(idx) / static_cast<uint32_t>(V);
    row = r;
    col = idx - static_cast<int64_t>(r) * V;
  } else {
    row = idx / V;
    col = idx - row * V;
  }
}

// sum over k in [k0, k1) of w[e_k] * values[e_k / (D+1), v], e_k = splat_entries[k], in
// increasing k with round-to-nearest multiply and add; 4 entries at a time with the loads
// issued first (memory-level parallelism inside a long list).
template <typename T>
__device__ __forceinline__ T sum_entries(const T* __restrict__ values,
                                         const float* __restrict__ vertex_weight,
                                         const int32_t* __restrict__ splat_entries, int64_t k0,
                                         int64_t k1, int64_t V, int64_t v, uint32_t dp1,
                                         int64_t entries) {
  T acc = T(0);
  int64_t k = k0;
  for (; k + kSplatUnroll <= k1; k += kSplatUnroll) {
    uint32_t e[kSplatUnroll];
    T w[kSplatUnroll], x[kSplatUnroll];
#pragma unroll
    for (int j = 0; j < kSplatUnroll; ++j) {
      e[j] = static_cast<uint32_t>(__ldg(splat_entries + k + j));
      if (e[j] >= static_cast<uint64_t>(entries)) __trap();
    }
#pragma unroll
    for (int j = 0; j < kSplatUnroll; ++j) {
      w[j] = static_cast<T>(__ldg(vertex_weight + e[j]));
      x[j] = __ldg(values + static_cast<int64_t>(e[j] / dp1) * V + v);
    }
#pragma unroll
    for (int j = 0; j < kSplatUnroll; ++j) acc = rn_add(acc, rn_mul(w[j], x[j]));
  }
  for (; k < k1; ++k) {
    const uint32_t e = static_cast<uint32_t>(__ldg(splat_entries + k));
    if (e >= static_cast<uint64_t>(entries)) __trap();
    const T w = static_cast<T>(__ldg(vertex_weight + e));
    acc = rn_add(acc, rn_mul(w, __ldg(values + static_cast<int64_t>(e / dp1) * V + v)));
  }
  return acc;
}

// Every vertex list is cut into chunks of kSplatBlock entries counted from the list's own start
// (so the rounding of a sum depends only on the list, not on where the vertex numbering puts it
// in the plan: the CUDA build numbers vertices in hash-table slot order, which concurrent
// insertion makes vary from build to build). Chunk j of a list that starts in plan block f
// (entries [f * kSplatBlock, (f + 1) * kSplatBlock)) starts in block f + j.
//
// Splat, pass 1, thread (plan block c, v): every list that starts in block c (a list of at most
// kSplatBlock entries is summed whole into lattice[i, v]; the first chunk of a longer one, at
// most one per block, goes to tail[c, v]) and the chunk j >= 1 that starts in block c of the list
// that began before it, if any (to head[c, v]). A thread walks at most 2 * kSplatBlock - 1
// entries, whatever the list lengths.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    splat_blocks_kernel(const T* __restrict__ values, const float* __restrict__ vertex_weight,
                        const int32_t* __restrict__ splat_offsets,
                        const int32_t* __restrict__ splat_entries, int64_t M, int64_t V, int d,
                        int64_t entries, T* __restrict__ lattice, T* __restrict__ head,
                        T* __restrict__ tail) {
  const int64_t blocks = splat_blocks(entries);
  const int64_t total = blocks * V;
  const bool small = total <= int64_t(UINT32_MAX);
  const uint32_t dp1 = static_cast<uint32_t>(d + 1);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t c, v;
    split_index(idx, V, small, c, v);
    const int64_t block_begin = c * kSplatBlock;
    const int64_t block_end =
        block_begin + kSplatBlock < entries ? block_begin + kSplatBlock : entries;
    // The list holding entry block_begin: the last i with offsets[i] <= block_begin (offsets is
    // non-decreasing; empty lists before it are skipped this way).
    int64_t lo = 0, hi = M + 1;  // find the first i in [0, M+1) with offsets[i] > block_begin
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (__ldg(splat_offsets + mid) <= block_begin) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    int64_t i = lo - 1;
    // offsets[0] > 0 or offsets[M] <= block_begin < entries: an invalid plan
    if (i < 0 || i >= M) __trap();
    const int64_t held_begin = __ldg(splat_offsets + i);
    const int64_t held_end = __ldg(splat_offsets + i + 1);
    if (held_begin > block_begin || held_end <= block_begin || held_end > entries) __trap();
    if (held_begin < block_begin) {
      // A list that began in an earlier block: its chunk that starts in this block, if any.
      const int64_t chunk_begin =
          held_begin + ceil_div(block_begin - held_begin, kSplatBlock) * kSplatBlock;
      if (chunk_begin < block_end && chunk_begin < held_end) {
        const int64_t chunk_end =
            chunk_begin + kSplatBlock < held_end ? chunk_begin + kSplatBlock : held_end;
        head[idx] = sum_entries(values, vertex_weight, splat_entries, chunk_begin, chunk_end, V,
                                v, dp1, entries);
      }
      ++i;
    }
    // The lists that start in this block (empty ones are written by pass 2).
    for (; i < M; ++i) {
      const int64_t list_begin = __ldg(splat_offsets + i);
      if (list_begin >= block_end) break;
      const int64_t list_end = __ldg(splat_offsets + i + 1);
      // offsets not non-decreasing
      if (list_begin < block_begin || list_end < list_begin || list_end > entries) __trap();
      if (list_end == list_begin) continue;
      if (list_end - list_begin <= kSplatBlock) {
        lattice[i * V + v] = sum_entries(values, vertex_weight, splat_entries, list_begin,
                                         list_end, V, v, dp1, entries);
      } else {
        tail[idx] = sum_entries(values, vertex_weight, splat_entries, list_begin,
                                list_begin + kSplatBlock, V, v, dp1, entries);
      }
    }
  }
}

// Splat, pass 2, thread (vertex i, v): a list of n > 1 chunks that starts in block f is
// tail[f] + head[f + 1] + ... + head[f + n - 1], summed in that order; an empty list is 0.
// (Lists of one chunk were written by pass 1.)
template <typename T>
__global__ void __launch_bounds__(kThreads)
    splat_lists_kernel(const int32_t* __restrict__ splat_offsets, int64_t M, int64_t V,
                       int64_t entries, const T* __restrict__ head, const T* __restrict__ tail,
                       T* __restrict__ lattice) {
  const int64_t total = M * V;
  const bool small = total <= int64_t(UINT32_MAX);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t i, v;
    split_index(idx, V, small, i, v);
    const int64_t list_begin = __ldg(splat_offsets + i);
    const int64_t list_end = __ldg(splat_offsets + i + 1);
    // (the plan must cover the entries exactly: pass 1 would skip entries past offsets[M])
    if (list_begin < 0 || list_end < list_begin || list_end > entries ||
        (i == 0 && list_begin != 0) || (i == M - 1 && list_end != entries)) {
      __trap();
    }
    if (list_begin == list_end) {
      lattice[idx] = T(0);
      continue;
    }
    const int64_t chunks = ceil_div(list_end - list_begin, kSplatBlock);
    if (chunks == 1) continue;
    const int64_t first_block = list_begin / kSplatBlock;
    T acc = __ldg(tail + first_block * V + v);
    for (int64_t j = 1; j < chunks; ++j) {
      acc = rn_add(acc, __ldg(head + (first_block + j) * V + v));
    }
    lattice[idx] = acc;
  }
}

// Blur along one axis: dst[i, v] = src[i, v] + 0.5 * (src[n1, v] + src[n2, v]).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    blur_kernel(const T* __restrict__ src, const int2* __restrict__ neighbors, int64_t M,
                int64_t V, T* __restrict__ dst) {
  const int64_t total = M * V;
  const bool small = total <= int64_t(UINT32_MAX);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t i, v;
    split_index(idx, V, small, i, v);
    const int2 nb = __ldg(neighbors + i);
    if (nb.x < -1 || nb.y < -1 || nb.x >= M || nb.y >= M) __trap();
    const T a = nb.x >= 0 ? __ldg(src + static_cast<int64_t>(nb.x) * V + v) : T(0);
    const T b = nb.y >= 0 ? __ldg(src + static_cast<int64_t>(nb.y) * V + v) : T(0);
    dst[idx] = rn_add(__ldg(src + idx), rn_mul(T(0.5), rn_add(a, b)));
  }
}

// Slice: out[t, v] = sum_r (w_r * alpha) * lattice[idx_r, v].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    slice_kernel(const T* __restrict__ lattice, const int32_t* __restrict__ vertex_index,
                 const float* __restrict__ vertex_weight, int64_t points, int64_t V, int64_t M,
                 int d, T alpha, bool accumulate, T* __restrict__ out) {
  const int64_t total = points * V;
  const bool small = total <= int64_t(UINT32_MAX);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t, v;
    split_index(idx, V, small, t, v);
    const int64_t base = t * (d + 1);
    T acc = T(0);
    // unroll 2: ptxas spills the float64 sm_90 version when it unrolls this loop by 4.
#pragma unroll 2
    for (int r = 0; r <= d; ++r) {
      const int32_t id = __ldg(vertex_index + base + r);
      if (id < 0 || id >= M) __trap();
      const T w = rn_mul(static_cast<T>(__ldg(vertex_weight + base + r)), alpha);
      acc = rn_add(acc, rn_mul(w, __ldg(lattice + static_cast<int64_t>(id) * V + v)));
    }
    out[idx] = accumulate ? rn_add(out[idx], acc) : acc;
  }
}

template <typename T>
cudaError_t run_filter(const FilterParams& p, cudaStream_t stream) {
  const LatticeView& lat = p.lattice;
  const size_t buf_bytes = align_up(sizeof(T) * static_cast<size_t>(lat.M * p.V));
  T* buf[2] = {static_cast<T*>(p.workspace),
               reinterpret_cast<T*>(static_cast<char*>(p.workspace) + buf_bytes)};
  const int64_t points = lat.points();
  const int64_t entries = lat.entries();

  const float* splat_weight = p.splat_weight ? p.splat_weight : lat.vertex_weight;
  const int64_t blocks = splat_blocks(entries);
  const size_t partial_bytes = align_up(sizeof(T) * static_cast<size_t>(blocks * p.V));
  char* partials = static_cast<char*>(p.workspace) + 2 * buf_bytes;
  T* head = reinterpret_cast<T*>(partials);
  T* tail = reinterpret_cast<T*>(partials + partial_bytes);
  launch_kernel<splat_blocks_kernel<T>>(blocks_for(blocks * p.V), kThreads, 0, stream,
      static_cast<const T*>(p.values), splat_weight, lat.splat_offsets, lat.splat_entries, lat.M,
      p.V, lat.D, entries, buf[0], head, tail);
  cudaError_t err = cudaPeekAtLastError();
  if (err != cudaSuccess) return err;
  launch_kernel<splat_lists_kernel<T>>(blocks_for(lat.M * p.V), kThreads, 0, stream,
      lat.splat_offsets, lat.M, p.V, entries, head, tail, buf[0]);
  err = cudaPeekAtLastError();
  if (err != cudaSuccess) return err;

  int cur = 0;
  const int2* neighbors = reinterpret_cast<const int2*>(lat.blur_neighbors);
  for (int step = 0; step <= lat.D; ++step) {
    const int axis = p.reverse ? lat.D - step : step;
    launch_kernel<blur_kernel<T>>(blocks_for(lat.M * p.V), kThreads, 0, stream,
        buf[cur], neighbors + static_cast<int64_t>(axis) * lat.M, lat.M, p.V, buf[1 - cur]);
    err = cudaPeekAtLastError();
    if (err != cudaSuccess) return err;
    cur = 1 - cur;
  }

  const T alpha = p.slice_weight ? T(1) : static_cast<T>(slice_alpha(lat.D));  // w * 1 == w
  launch_kernel<slice_kernel<T>>(blocks_for(points * p.V), kThreads, 0, stream,
      buf[cur], lat.vertex_index, p.slice_weight ? p.slice_weight : lat.vertex_weight, points,
      p.V, lat.M, lat.D, alpha, p.accumulate, static_cast<T*>(p.output));
  return cudaPeekAtLastError();
}

}  // namespace

size_t filter_workspace_bytes(const FilterParams& p) {
  const LatticeView& lat = p.lattice;
  if (lat.M <= 0 || p.V <= 0) return 0;
  const int64_t blocks = splat_blocks(lat.entries());
  return 2 * align_up(element_size(p.dtype) * static_cast<size_t>(lat.M * p.V)) +
         2 * align_up(element_size(p.dtype) * static_cast<size_t>(blocks * p.V));
}

cudaError_t launch_filter(const FilterParams& p, cudaStream_t stream) {
  const LatticeView& lat = p.lattice;
  if (lat.D < 1 || lat.D > kMaxLatticeDim || lat.N < 1 || lat.P < 1 || p.V < 1 || lat.M < 1 ||
      lat.entries() > kLatticeMaxEntries || p.values == nullptr || p.output == nullptr ||
      lat.vertex_index == nullptr || lat.vertex_weight == nullptr ||
      lat.blur_neighbors == nullptr || lat.splat_offsets == nullptr ||
      lat.splat_entries == nullptr || p.workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  switch (p.dtype) {
    case DType::kFloat32: return run_filter<float>(p, stream);
    case DType::kFloat64: return run_filter<double>(p, stream);
    default: return cudaErrorInvalidValue;
  }
  return cudaErrorInvalidValue;
}

}  // namespace densecrf
}  // namespace deeplabv2_ext
