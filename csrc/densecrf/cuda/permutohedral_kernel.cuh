// Torch-free interface between the permutohedral CUDA glue (permutohedral_cuda.cpp) and the CUDA
// kernels (permutohedral_lattice_kernel.cu, permutohedral_filter_kernel.cu).
//
// Plain structs of raw pointers and sizes, filled by the glue; host launchers that enqueue on
// `stream` and return cudaPeekAtLastError() (or cudaErrorInvalidValue for unsupported
// arguments). Nothing here may include torch / ATen / c10 headers: CI compiles the .cu files with
// plain nvcc against a CPU-only torch. All tensors are contiguous (the glue makes them so).
//
// Lattice build, in two launcher calls around one small device-to-host copy:
//   1. launch_lattice_build: embeds every point of every image, inserts the (image, key) pairs
//      into ONE open-addressing hash table for the whole batch, numbers the occupied slots
//      0..M-1 with a prefix sum, and writes vertex_index, vertex_weight and
//      info = {error flag, M}. The glue copies `info` to the host, TORCH_CHECKs the flag and
//      allocates blur_neighbors [D+1, M, 2], splat_offsets [M+1], splat_entries [N*P*(D+1)].
//   2. launch_lattice_finish: fills blur_neighbors from the same (still alive) build workspace,
//      and the splat plan (a stable radix sort of the entries by vertex: entries of a vertex in
//      increasing order, as the CPU op) with a second workspace (lattice_finish_workspace_bytes,
//      which needs M).
//   The build workspace (lattice_workspace_bytes) holds the hash table (slot state, slot keys),
//   the slot -> id map and the scan scratch; the launchers initialise it themselves.
//   Vertex numbering follows the hash-table slot order: ids of different images interleave
//   (allowed by the op contract), and a vertex never mixes images (the image is part of the key).
//
// Filter: launch_filter splats values [N, P, V] (point-major) onto the lattice as a gather over
//   the splat plan, blurs along the D+1 axes and slices back to [N, P, V], with two [M, V]
//   lattice buffers and the splat's two [ceil(N*P*(D+1) / kSplatBlock), V] partial-sum buffers
//   (float32 values: float32 buffers; float64: float64) carved from the workspace
//   (filter_workspace_bytes). The splat and the slice may use their own weights, and the slice
//   may add to the output (what the mean-field loop needs).
//
// Index validity: the filter kernels check every index they read (vertex_index and splat_entries
// in range, blur_neighbors in [-1, M), splat_offsets non-decreasing within [0, N*P*(D+1)]) and
// __trap() on a violation (like a device-side assert: the CUDA context is lost) instead of
// reading or writing out of bounds. The tensors returned by permutohedral_lattice always pass.
//
// Requirements (checked by the glue): 1 <= D <= kMaxLatticeDim; N >= 1, P >= 1 for the build
// (the glue returns empty tensors otherwise); N * P * (D + 1) <= kLatticeMaxEntries; M >= 1,
// V >= 1 for the filter. The hash table needs compute capability >= 7.0 (independent thread
// scheduling; the build kernel traps on older devices).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../../common/dtype.h"
#include "../lattice_view.h"
#include "../permutohedral_math.h"

namespace deeplabv2_ext {
namespace densecrf {

// At most 2^29 lattice entries (point, remainder) per build: the hash table then has at most
// 2^30 slots, so slot numbers and the scan length fit in int (e.g. 85 million points at D = 5).
constexpr int64_t kLatticeMaxEntries = int64_t(1) << 29;

// Values of info[] written by launch_lattice_build.
constexpr int kLatticeInfoError = 0;     // != 0: a probe cycled through the whole table
constexpr int kLatticeInfoVertices = 1;  // M, the number of lattice vertices of the batch
constexpr int kLatticeInfoSize = 2;

struct LatticeParams {
  const float* features = nullptr;  // [N, D, P]
  int32_t* vertex_index = nullptr;  // [N, P, D+1]
  float* vertex_weight = nullptr;   // [N, P, D+1]
  int32_t* blur_neighbors = nullptr;  // [D+1, M, 2]; only for launch_lattice_finish
  int32_t* splat_offsets = nullptr;   // [M+1]; only for launch_lattice_finish
  int32_t* splat_entries = nullptr;   // [N*P*(D+1)]; only for launch_lattice_finish
  int32_t* info = nullptr;          // [kLatticeInfoSize] device int32, written by the build
  void* workspace = nullptr;        // lattice_workspace_bytes(*this) bytes, 256-byte aligned
  void* finish_workspace = nullptr;  // lattice_finish_workspace_bytes(*this) bytes (needs M)
  int64_t N = 0, P = 0;
  int D = 0;
  int64_t M = 0;  // set by the glue from info[kLatticeInfoVertices] before the finish call
  // Hash-table slots; 0 (the glue) means lattice_hash_capacity(). The CUDA-on-CPU tests pass a
  // smaller power of two to run the table-full path.
  int64_t hash_capacity = 0;
  float scale[kMaxLatticeDim] = {};  // elevation_scale(i, D); filled by the launchers
};

// Hash-table slots: hash_capacity if set, else the next power of two >= 2 * N * P * (D + 1).
int64_t lattice_hash_capacity(const LatticeParams& p);
size_t lattice_workspace_bytes(const LatticeParams& p);
size_t lattice_finish_workspace_bytes(const LatticeParams& p);  // needs p.M

cudaError_t launch_lattice_build(LatticeParams& p, cudaStream_t stream);
cudaError_t launch_lattice_finish(const LatticeParams& p, cudaStream_t stream);

struct FilterParams {
  LatticeView lattice;
  const void* values = nullptr;  // [N, P, V] float32 / float64
  void* output = nullptr;        // [N, P, V], same dtype
  // Optional per-entry weights [N, P, D+1] of the splat / the slice (nullptr: the lattice's
  // vertex_weight, and for the slice vertex_weight * slice_alpha(D)). The mean-field op passes
  // the weights of mean_field_scales (permutohedral.h): normalisers, the slice constant and the
  // Potts weight folded in.
  const float* splat_weight = nullptr;
  const float* slice_weight = nullptr;
  bool accumulate = false;  // the slice adds to output instead of overwriting it
  void* workspace = nullptr;  // filter_workspace_bytes(*this) bytes, 256-byte aligned
  int64_t V = 0;
  bool reverse = false;
  DType dtype = DType::kFloat32;  // kFloat32 or kFloat64
};

// Entries of the splat plan per thread in the splat's first pass (see
// permutohedral_filter_kernel.cu).
constexpr int kSplatBlock = 64;

size_t filter_workspace_bytes(const FilterParams& p);
cudaError_t launch_filter(const FilterParams& p, cudaStream_t stream);

}  // namespace densecrf
}  // namespace deeplabv2_ext
