// The permutohedral lattice as the loops of both devices read it: plain pointers and sizes,
// torch-free (included by the CPU loops, the CUDA kernels and the CUDA-on-CPU test driver).
// Filled from a checked, contiguous `Lattice` (permutohedral.h) by Lattice::view().
#pragma once

#include <cstdint>

#include "../common/host_device.h"

namespace deeplabv2_ext::densecrf {

// One lattice of N images of P points each in D dimensions, with M vertices over the batch
// (vertex ids global over the batch; a vertex never mixes images). An entry e = (n*P + p)*(D+1)
// + r is point (n, p)'s r-th enclosing vertex.
struct LatticeView {
  const int32_t* vertex_index = nullptr;    // [N, P, D+1]: the vertex of each entry
  const float* vertex_weight = nullptr;     // [N, P, D+1]: its barycentric weight
  const int32_t* blur_neighbors = nullptr;  // [D+1, M, 2]: the two neighbours per axis, -1 absent
  const int32_t* splat_offsets = nullptr;   // [M+1]: CSR over vertices into splat_entries
  const int32_t* splat_entries = nullptr;   // [N*P*(D+1)]: the entries of each vertex, increasing
  int64_t N = 0, P = 0, M = 0;
  int D = 0;

  DLV2_HOST_DEVICE int64_t points() const { return N * P; }
  DLV2_HOST_DEVICE int64_t entries() const { return N * P * (D + 1); }
};

}  // namespace deeplabv2_ext::densecrf
