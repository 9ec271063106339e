// Permutohedral lattice build on the GPU for a batch of N images, with no per-image host loop.
//
// Steps (1-3 in launch_lattice_build, 4 in launch_lattice_finish once the glue knows M):
//   1. embed + insert (one thread per point (n, p)): embed_point (shared math) gives the D+1
//      enclosing keys and barycentric weights; the weights go straight to vertex_weight, each key
//      (n, c_0..c_{D-1}) is inserted into ONE open-addressing hash table for the whole batch and
//      its slot number is written to vertex_index (temporarily).
//   2. number the occupied slots in slot order with a three-kernel prefix sum (our own: CUB's
//      DeviceScan kernel spills registers under -warn-spills): per-tile counts of READY slots,
//      one block scans the tile counts (and writes M to info[]), then every tile assigns
//      ids[s] (-1 for empty slots) and vertex_slot[id] = s.
//   3. remap: vertex_index[e] = ids[slot] for every entry e.
//   4. finish (after the glue read M back): neighbours, one thread per (axis j, vertex i): the
//      two keys of blur_neighbour_keys are looked up in the same image (the image is part of the
//      key), blur_neighbors[j, i] = (id or -1, id or -1); and the splat plan: a stable CUB radix
//      sort of (vertex_index[e], e) over the ceil(log2 M) key bits gives splat_entries (entries
//      of a vertex in increasing e, as the CPU op), and splat_offsets[i] = the first sorted
//      position of vertex i (a boundary kernel over the sorted keys).
//
// Hash table: capacity = next power of two >= 2 * N * P * (D+1) slots (so the load factor is at
// most 1/2 and every distinct key fits by construction); linear probing from a 64-bit mix of
// hash_key(key) and the image index. Per slot: a 32-bit state word and D+1 int32 key words
// (image, coordinates), slot-indexed. Insert protocol for a key K probing slot s:
//   state = load_acquire(state[s])
//   EMPTY   -> CAS(EMPTY -> WRITING). The winner writes the key words, then store_release(READY)
//              and returns s. A loser gets the current state (WRITING or READY) from the CAS.
//   WRITING -> spin (acquire loads, __nanosleep) until READY: the writer never waits on anyone,
//              so it always finishes; on sm_70+ independent thread scheduling guarantees that a
//              spinning lane cannot starve the writing lane of its own warp (the kernel traps on
//              older architectures, where that could deadlock).
//   READY   -> the key words are visible (release/acquire); equal -> return s, else next slot.
// No duplicates: slots never return to EMPTY and keys are immutable once READY, so every
// inserter of K walks the same probe sequence and stops at the first slot that is EMPTY or holds
// K; two inserters racing for the same EMPTY slot are serialised by the CAS, and the loser waits
// and then finds K there. A probe that cycles through the whole table (impossible at load <= 1/2)
// sets info[kLatticeInfoError] and writes -1, and the glue raises an error.
//
// Vertex ids follow the slot order (images interleave, which the op contract allows). The
// embedding arithmetic is exactly the shared permutohedral_math.h, so keys and weights are
// bit-identical to the CPU op; only the vertex numbering differs.
//
// Kernels are specialised for D = 2, 3, 5 (the DenseCRF's gaussian / bilateral features): the
// per-point arrays then live in registers; other D use a generic version (local memory).
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>
#include <cuda/atomic>

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

constexpr uint32_t kSlotEmpty = 0;
constexpr uint32_t kSlotReady = 1;
constexpr uint32_t kSlotWriting = 2;

using launch::kThreads;
// Slot numbering: tiles of kScanTile slots, kScanItems per thread; one block of
// kScanBlockThreads scans the tile counts.
constexpr int kScanItems = 16;
constexpr int64_t kScanTile = int64_t(kThreads) * kScanItems;
constexpr int kScanBlockThreads = 1024;

using launch::blocks_for;

struct Scales {
  float v[kMaxLatticeDim];
};

// Workspace regions (all kWorkspaceAlignment aligned).
struct LatticeWorkspace {
  uint32_t* state = nullptr;       // [capacity]
  int32_t* ids = nullptr;          // [capacity]: vertex id of an occupied slot, else -1
  int32_t* keys = nullptr;         // [capacity, D+1]: image, D coordinates
  int32_t* vertex_slot = nullptr;  // [N * P * (D+1)] (>= M)
  int32_t* tile_offsets = nullptr;  // [capacity / kScanTile rounded up]
  size_t total = 0;
};

int64_t capacity_for(const LatticeParams& p) {
  if (p.hash_capacity > 0) return p.hash_capacity;
  const int64_t entries = p.N * p.P * (p.D + 1);
  int64_t cap = 64;
  while (cap < 2 * entries) cap *= 2;
  return cap;
}

LatticeWorkspace lattice_layout(const LatticeParams& p, void* base) {
  const int64_t entries = p.N * p.P * (p.D + 1);
  const int64_t cap = capacity_for(p);
  LatticeWorkspace w;
  const int64_t tiles = ceil_div(cap, kScanTile);
  const size_t state_off = 0;
  const size_t ids_off = state_off + align_up(sizeof(uint32_t) * static_cast<size_t>(cap));
  const size_t keys_off = ids_off + align_up(sizeof(int32_t) * static_cast<size_t>(cap));
  const size_t vslot_off =
      keys_off + align_up(sizeof(int32_t) * static_cast<size_t>(cap) * (p.D + 1));
  const size_t tiles_off = vslot_off + align_up(sizeof(int32_t) * static_cast<size_t>(entries));
  w.total = tiles_off + align_up(sizeof(int32_t) * static_cast<size_t>(tiles));
  if (base != nullptr) {
    char* b = static_cast<char*>(base);
    w.state = reinterpret_cast<uint32_t*>(b + state_off);
    w.ids = reinterpret_cast<int32_t*>(b + ids_off);
    w.keys = reinterpret_cast<int32_t*>(b + keys_off);
    w.vertex_slot = reinterpret_cast<int32_t*>(b + vslot_off);
    w.tile_offsets = reinterpret_cast<int32_t*>(b + tiles_off);
  }
  return w;
}

// First probe slot of key (n, key[0..d)).
__device__ __forceinline__ uint32_t first_slot(int32_t n, const int32_t* key, int d,
                                               uint32_t mask) {
  uint64_t h = hash_key(key, d) ^ (static_cast<uint64_t>(static_cast<uint32_t>(n)) *
                                   0x9E3779B97F4A7C15ull);
  // murmur3 finaliser: every key bit reaches the low (masked) bits.
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return static_cast<uint32_t>(h) & mask;
}

__device__ __forceinline__ bool key_equal(const int32_t* stored, int32_t n, const int32_t* key,
                                          int d) {
  bool eq = stored[0] == n;
  for (int k = 0; k < d; ++k) eq &= stored[1 + k] == key[k];
  return eq;
}

// Inserts (n, key) (or finds it) and returns its slot, or -1 after a full probe cycle.
// slot_keys is deliberately not const/__restrict__: it is written concurrently by other threads
// and must be read with ordinary (coherent after acquire) loads, never the non-coherent path.
__device__ __forceinline__ int32_t insert_key(int32_t n, const int32_t* key, int d, uint32_t mask,
                                              uint32_t* state, int32_t* slot_keys,
                                              int32_t* error) {
  const int64_t kw = d + 1;
  uint32_t s = first_slot(n, key, d, mask);
  for (uint32_t probe = 0; probe <= mask; ++probe) {
    cuda::atomic_ref<uint32_t, cuda::thread_scope_device> slot_state(state[s]);
    uint32_t st = slot_state.load(cuda::memory_order_acquire);
    if (st == kSlotEmpty) {
      uint32_t expected = kSlotEmpty;
      if (slot_state.compare_exchange_strong(expected, kSlotWriting, cuda::memory_order_acquire)) {
        int32_t* dst = slot_keys + static_cast<int64_t>(s) * kw;
        dst[0] = n;
        for (int k = 0; k < d; ++k) dst[1 + k] = key[k];
        slot_state.store(kSlotReady, cuda::memory_order_release);
        return static_cast<int32_t>(s);
      }
      st = expected;  // WRITING or READY (the failed CAS loaded it with acquire)
    }
    while (st == kSlotWriting) {
      __nanosleep(20);
      st = slot_state.load(cuda::memory_order_acquire);
    }
    if (key_equal(slot_keys + static_cast<int64_t>(s) * kw, n, key, d)) {
      return static_cast<int32_t>(s);
    }
    s = (s + 1) & mask;
  }
  atomicExch(error, 1);
  return -1;
}

// Vertex id of (n, key), or -1 when absent. Read-only phase (after the build kernels).
__device__ __forceinline__ int32_t find_key(int32_t n, const int32_t* key, int d, uint32_t mask,
                                            const uint32_t* __restrict__ state,
                                            const int32_t* __restrict__ slot_keys,
                                            const int32_t* __restrict__ ids) {
  const int64_t kw = d + 1;
  uint32_t s = first_slot(n, key, d, mask);
  for (uint32_t probe = 0; probe <= mask; ++probe) {
    if (__ldg(state + s) == kSlotEmpty) return -1;
    if (key_equal(slot_keys + static_cast<int64_t>(s) * kw, n, key, d)) {
      return __ldg(ids + s);
    }
    s = (s + 1) & mask;
  }
  return -1;
}

// kD > 0: D known at compile time (per-point arrays in registers); kD == 0: runtime d.
template <int kD>
__global__ void __launch_bounds__(kThreads)
    lattice_embed_insert_kernel(const float* __restrict__ features, int64_t N, int64_t P,
                                int d_runtime, Scales scale, uint32_t mask, uint32_t* state,
                                int32_t* slot_keys, int32_t* __restrict__ vertex_index,
                                float* __restrict__ vertex_weight, int32_t* error) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 700
  // Spin-waiting on a lane of the same warp needs independent thread scheduling (sm_70+).
  __trap();
#else
  constexpr int kDim = kD > 0 ? kD : kMaxLatticeDim;
  const int d = kD > 0 ? kD : d_runtime;
  int32_t keys[(kDim + 1) * kDim];
  float weights[kDim + 1];
  const int64_t points = N * P;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < points;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = t / P;
    const int64_t p = t - n * P;
    embed_point(features + n * d * P + p, P, d, scale.v, keys, weights);
    for (int r = 0; r <= d; ++r) {
      vertex_weight[t * (d + 1) + r] = weights[r];
      vertex_index[t * (d + 1) + r] =
          insert_key(static_cast<int32_t>(n), keys + r * d, d, mask, state, slot_keys, error);
    }
  }
#endif
}

__device__ __forceinline__ bool slot_occupied(const uint32_t* __restrict__ state, int64_t s,
                                              int64_t capacity) {
  return s < capacity && __ldg(state + s) == kSlotReady;
}

// tile_counts[b] = number of READY slots in tile b (kScanTile slots).
__global__ void __launch_bounds__(kThreads)
    slot_count_kernel(const uint32_t* __restrict__ state, int64_t capacity,
                      int32_t* __restrict__ tile_counts) {
  DLV2_SHARED(int[kThreads / 32], warp_counts);
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kScanTile;
  int c = 0;
  for (int k = 0; k < kScanItems; ++k) {
    c += slot_occupied(state, base + k * kThreads + threadIdx.x, capacity) ? 1 : 0;
  }
  for (int off = 16; off > 0; off >>= 1) c += __shfl_down_sync(0xffffffffu, c, off);
  if ((threadIdx.x & 31) == 0) warp_counts[threadIdx.x >> 5] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_counts[w];
    tile_counts[blockIdx.x] = total;
  }
}

// One block: tile_offsets[b] = sum of the counts of tiles < b (in place); *total = M.
__global__ void __launch_bounds__(kScanBlockThreads)
    tile_offsets_kernel(int32_t* __restrict__ tile_offsets, int64_t tiles,
                        int32_t* __restrict__ total) {
  DLV2_SHARED(int[kScanBlockThreads / 32], warp_sums);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int carry = 0;
  for (int64_t base = 0; base < tiles; base += kScanBlockThreads) {
    const int64_t i = base + threadIdx.x;
    const int v = i < tiles ? tile_offsets[i] : 0;
    int x = v;  // inclusive warp scan
    for (int off = 1; off < 32; off <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, x, off);
      if (lane >= off) x += y;
    }
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    if (warp == 0) {
      int s = warp_sums[lane];  // kScanBlockThreads / 32 == 32 warps
      for (int off = 1; off < 32; off <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, s, off);
        if (lane >= off) s += y;
      }
      warp_sums[lane] = s;
    }
    __syncthreads();
    if (i < tiles) tile_offsets[i] = carry + (warp > 0 ? warp_sums[warp - 1] : 0) + x - v;
    carry += warp_sums[kScanBlockThreads / 32 - 1];
    __syncthreads();  // warp_sums is rewritten by the next chunk
  }
  if (threadIdx.x == 0) *total = carry;
}

// ids[s] = vertex id (slot order) or -1; vertex_slot[id] = s.
__global__ void __launch_bounds__(kThreads)
    slot_assign_kernel(const uint32_t* __restrict__ state, int64_t capacity,
                       const int32_t* __restrict__ tile_offsets, int32_t* __restrict__ ids,
                       int32_t* __restrict__ vertex_slot) {
  DLV2_SHARED(int[kThreads / 32], warp_counts);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kScanTile;
  int running = tile_offsets[blockIdx.x];
  for (int k = 0; k < kScanItems; ++k) {
    const int64_t s = base + k * kThreads + threadIdx.x;
    const bool occupied = slot_occupied(state, s, capacity);
    const unsigned ballot = __ballot_sync(0xffffffffu, occupied);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kThreads / 32; ++w) {
      const int c = warp_counts[w];
      before += w < warp ? c : 0;
      total += c;
    }
    if (s < capacity) {
      if (occupied) {
        const int32_t id = running + before + __popc(ballot & ((1u << lane) - 1u));
        ids[s] = id;
        vertex_slot[id] = static_cast<int32_t>(s);
      } else {
        ids[s] = -1;
      }
    }
    running += total;
    __syncthreads();  // warp_counts is rewritten by the next k
  }
}

// vertex_index[e]: slot -> vertex id (a -1 from a failed insert stays -1).
__global__ void __launch_bounds__(kThreads)
    remap_kernel(const int32_t* __restrict__ ids, int64_t entries,
                 int32_t* __restrict__ vertex_index) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < entries;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t s = vertex_index[t];
    if (s >= 0) vertex_index[t] = __ldg(ids + s);
  }
}

// One thread per (axis j, vertex i), t = j * M + i: blur_neighbors[t] = (id(n1), id(n2)).
template <int kD>
__global__ void __launch_bounds__(kThreads)
    lattice_neighbors_kernel(const uint32_t* __restrict__ state,
                             const int32_t* __restrict__ slot_keys,
                             const int32_t* __restrict__ ids,
                             const int32_t* __restrict__ vertex_slot, uint32_t mask, int64_t M,
                             int d_runtime, int2* __restrict__ blur_neighbors) {
  constexpr int kDim = kD > 0 ? kD : kMaxLatticeDim;
  const int d = kD > 0 ? kD : d_runtime;
  int32_t key[kDim], n1[kDim], n2[kDim];
  const int64_t work = M * (d + 1);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < work;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int axis = static_cast<int>(t / M);
    const int64_t i = t - axis * M;
    const int32_t* stored = slot_keys + static_cast<int64_t>(__ldg(vertex_slot + i)) * (d + 1);
    const int32_t n = __ldg(stored);
    for (int k = 0; k < d; ++k) key[k] = __ldg(stored + 1 + k);
    blur_neighbour_keys(key, d, axis, n1, n2);
    int2 out;
    out.x = find_key(n, n1, d, mask, state, slot_keys, ids);
    out.y = find_key(n, n2, d, mask, state, slot_keys, ids);
    blur_neighbors[t] = out;
  }
}

// iota[e] = e.
__global__ void __launch_bounds__(kThreads) iota_kernel(int32_t* __restrict__ iota, int64_t n) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    iota[t] = static_cast<int32_t>(t);
  }
}

// offsets[i] = first position k of vertex i in the sorted keys (k in [0, n]); offsets[M] = n.
// Position k fills the ids in (keys[k-1], keys[k]] (keys[-1] = -1, keys[n] = M): every id gets
// exactly one writer, also for ids without entries (never the case for a built lattice).
__global__ void __launch_bounds__(kThreads)
    splat_offsets_kernel(const int32_t* __restrict__ sorted_keys, int64_t n, int64_t M,
                         int32_t* __restrict__ offsets) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k <= n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t lo = k == 0 ? -1 : sorted_keys[k - 1];
    const int64_t hi = k == n ? M : sorted_keys[k];
    for (int64_t i = lo + 1; i <= hi; ++i) offsets[i] = static_cast<int32_t>(k);
  }
}

int key_bits(int64_t M) {
  int bits = 1;
  while ((int64_t(1) << bits) < M) ++bits;
  return bits;
}

// Finish workspace: sorted keys [entries], iota [entries], radix-sort scratch. The keys are
// sorted as uint32 (vertex ids are >= 0 once the build succeeded) on their low key_bits(M) bits.
struct FinishWorkspace {
  int32_t* sorted_keys = nullptr;
  int32_t* iota = nullptr;
  void* sort_temp = nullptr;
  size_t sort_bytes = 0;
  size_t total = 0;
};

FinishWorkspace finish_layout(const LatticeParams& p, void* base) {
  const int64_t entries = p.N * p.P * (p.D + 1);
  FinishWorkspace w;
  size_t sort_bytes = 0;
  // Sizing call: no work is done when d_temp_storage is null.
  cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr),
                                  static_cast<uint32_t*>(nullptr),
                                  static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), static_cast<int>(entries), 0,
                                  key_bits(p.M));
  const size_t keys_off = 0;
  const size_t iota_off = keys_off + align_up(sizeof(int32_t) * static_cast<size_t>(entries));
  const size_t sort_off = iota_off + align_up(sizeof(int32_t) * static_cast<size_t>(entries));
  w.total = sort_off + align_up(sort_bytes);
  w.sort_bytes = sort_bytes;
  if (base != nullptr) {
    char* b = static_cast<char*>(base);
    w.sorted_keys = reinterpret_cast<int32_t*>(b + keys_off);
    w.iota = reinterpret_cast<int32_t*>(b + iota_off);
    w.sort_temp = b + sort_off;
  }
  return w;
}

template <int kD>
cudaError_t build_for_dim(LatticeParams& p, const LatticeWorkspace& w, int64_t cap,
                          cudaStream_t stream) {
  Scales scale{};
  for (int i = 0; i < p.D; ++i) scale.v[i] = p.scale[i];
  const int64_t points = p.N * p.P;
  launch_kernel<lattice_embed_insert_kernel<kD>>(blocks_for(points), kThreads, 0, stream,
      p.features, p.N, p.P, p.D, scale, static_cast<uint32_t>(cap - 1), w.state, w.keys,
      p.vertex_index, p.vertex_weight, p.info + kLatticeInfoError);
  return cudaPeekAtLastError();
}

template <int kD>
void neighbors_for_dim(const LatticeParams& p, const LatticeWorkspace& w, int64_t cap,
                       cudaStream_t stream) {
  const int64_t work = p.M * (p.D + 1);
  launch_kernel<lattice_neighbors_kernel<kD>>(blocks_for(work), kThreads, 0, stream,
      w.state, w.keys, w.ids, w.vertex_slot, static_cast<uint32_t>(cap - 1), p.M, p.D,
      reinterpret_cast<int2*>(p.blur_neighbors));
}

bool valid_sizes(const LatticeParams& p) {
  const bool power_of_two = (p.hash_capacity & (p.hash_capacity - 1)) == 0;
  return p.D >= 1 && p.D <= kMaxLatticeDim && p.N >= 1 && p.P >= 1 &&
         p.N * p.P * (p.D + 1) <= kLatticeMaxEntries && p.hash_capacity >= 0 && power_of_two &&
         p.hash_capacity <= 2 * kLatticeMaxEntries;
}

}  // namespace

int64_t lattice_hash_capacity(const LatticeParams& p) {
  return capacity_for(p);
}

size_t lattice_workspace_bytes(const LatticeParams& p) {
  if (!valid_sizes(p)) return 0;
  return lattice_layout(p, nullptr).total;
}

cudaError_t launch_lattice_build(LatticeParams& p, cudaStream_t stream) {
  if (!valid_sizes(p) || p.features == nullptr || p.vertex_index == nullptr ||
      p.vertex_weight == nullptr || p.info == nullptr || p.workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  for (int i = 0; i < p.D; ++i) p.scale[i] = elevation_scale(i, p.D);
  const LatticeWorkspace w = lattice_layout(p, p.workspace);
  const int64_t cap = capacity_for(p);
  const int64_t entries = p.N * p.P * (p.D + 1);

  cudaError_t err = cudaMemsetAsync(w.state, 0, sizeof(uint32_t) * static_cast<size_t>(cap), stream);
  if (err != cudaSuccess) return err;
  err = cudaMemsetAsync(p.info, 0, sizeof(int32_t) * kLatticeInfoSize, stream);
  if (err != cudaSuccess) return err;

  switch (p.D) {
    case 2: err = build_for_dim<2>(p, w, cap, stream); break;
    case 3: err = build_for_dim<3>(p, w, cap, stream); break;
    case 5: err = build_for_dim<5>(p, w, cap, stream); break;
    default: err = build_for_dim<0>(p, w, cap, stream); break;
  }
  if (err != cudaSuccess) return err;

  const int64_t tiles = ceil_div(cap, kScanTile);  // <= 2^30 / 4096 blocks
  launch_kernel<slot_count_kernel>(static_cast<int>(tiles), kThreads, 0, stream, w.state, cap,
                                   w.tile_offsets);
  launch_kernel<tile_offsets_kernel>(1, kScanBlockThreads, 0, stream, w.tile_offsets, tiles,
                                     p.info + kLatticeInfoVertices);
  launch_kernel<slot_assign_kernel>(static_cast<int>(tiles), kThreads, 0, stream,
      w.state, cap, w.tile_offsets, w.ids, w.vertex_slot);
  launch_kernel<remap_kernel>(blocks_for(entries), kThreads, 0, stream, w.ids, entries,
                              p.vertex_index);
  return cudaPeekAtLastError();
}

size_t lattice_finish_workspace_bytes(const LatticeParams& p) {
  if (!valid_sizes(p) || p.M < 1) return 0;
  return finish_layout(p, nullptr).total;
}

cudaError_t launch_lattice_finish(const LatticeParams& p, cudaStream_t stream) {
  const int64_t entries = p.N * p.P * (p.D + 1);
  if (!valid_sizes(p) || p.workspace == nullptr || p.finish_workspace == nullptr || p.M < 1 ||
      p.M > entries || p.blur_neighbors == nullptr || p.splat_offsets == nullptr ||
      p.splat_entries == nullptr || p.vertex_index == nullptr) {
    return cudaErrorInvalidValue;
  }
  const LatticeWorkspace w = lattice_layout(p, p.workspace);
  const int64_t cap = capacity_for(p);
  switch (p.D) {
    case 2: neighbors_for_dim<2>(p, w, cap, stream); break;
    case 3: neighbors_for_dim<3>(p, w, cap, stream); break;
    case 5: neighbors_for_dim<5>(p, w, cap, stream); break;
    default: neighbors_for_dim<0>(p, w, cap, stream); break;
  }
  cudaError_t err = cudaPeekAtLastError();
  if (err != cudaSuccess) return err;

  const FinishWorkspace f = finish_layout(p, p.finish_workspace);
  launch_kernel<iota_kernel>(blocks_for(entries), kThreads, 0, stream, f.iota, entries);
  err = cudaPeekAtLastError();
  if (err != cudaSuccess) return err;
  size_t sort_bytes = f.sort_bytes;
  err = cub::DeviceRadixSort::SortPairs(f.sort_temp, sort_bytes,
                                        reinterpret_cast<const uint32_t*>(p.vertex_index),
                                        reinterpret_cast<uint32_t*>(f.sorted_keys), static_cast<const int32_t*>(f.iota),
                                        p.splat_entries, static_cast<int>(entries), 0,
                                        key_bits(p.M), stream);
  if (err != cudaSuccess) return err;
  launch_kernel<splat_offsets_kernel>(blocks_for(entries + 1), kThreads, 0, stream,
      f.sorted_keys, entries, p.M, p.splat_offsets);
  return cudaPeekAtLastError();
}

}  // namespace densecrf
}  // namespace deeplabv2_ext
