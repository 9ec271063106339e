// The CPU inner loops of the permutohedral filter and of the fused mean-field inference, as
// plain-pointer functions. They are compiled twice (lattice_loops_default.cpp and
// lattice_loops_avx2.cpp, which adds `#pragma GCC target("avx2,fma")`), each time in its own
// namespace, and lattice_loops_dispatch.cpp picks one at run time (AVX2+FMA when the CPU has
// them; measured 1.5x faster on the filter than the SSE2 baseline x86-64 code).
//
// This header is the declarations; lattice_loops_impl.h holds the definitions and is included
// only by the two ISA translation units.
#pragma once

#include <cstdint>

namespace deeplabv2_ext::densecrf::cpu {

// e / (D+1) for entries e < 2^31 by a multiply and a shift (Granlund & Montgomery: with
// l = ceil(log2 q), k = 31 + l and m = ceil(2^k / q), floor(e * m / 2^k) = floor(e / q)); the
// hardware division was half of the splat's time. Used by both loop builds and by the mean-field
// op's setup; the AVX2 build includes this header before its target pragma.
class PointOfEntry {
 public:
  explicit PointOfEntry(uint32_t divisor) {
    int log2_ceil = 0;
    while ((uint32_t{1} << log2_ceil) < divisor) ++log2_ceil;
    shift_ = 31 + log2_ceil;
    multiplier_ = ((uint64_t{1} << shift_) + divisor - 1) / divisor;
  }
  int64_t operator()(uint32_t e) const {
    return static_cast<int64_t>((static_cast<uint64_t>(e) * multiplier_) >> shift_);
  }

 private:
  uint64_t multiplier_;
  int shift_;
};

// A lattice as permutohedral_lattice returns it (vertex ids global over the batch).
struct LatticeView {
  const int32_t* vertex_index;    // [points, d+1]
  const float* vertex_weight;     // [points, d+1]
  const int32_t* blur_neighbors;  // [d+1, num_vertices, 2], -1 when absent
  const int32_t* splat_offsets;   // [num_vertices + 1]
  const int32_t* splat_entries;   // [points * (d+1)]
  int64_t points;
  int64_t num_vertices;
  int d;
};

// One pairwise kernel of the fused mean-field loop, in the loop's own point order (points are
// permuted so that consecutive points touch nearby vertices; see mean_field_kernel.cpp).
struct MeanFieldKernel {
  int d;
  int64_t num_vertices;
  const int32_t* blur_neighbors;  // [d+1, num_vertices, 2]
  const int32_t* splat_offsets;   // [num_vertices + 1]: CSR over vertices
  const int32_t* splat_points;    // [points * (d+1)]: the (permuted) point of each entry
  const float* splat_weights;     // [points * (d+1)]: barycentric weight (x normaliser)
  const int32_t* slice_vertices;  // [points, d+1]
  const float* slice_weights;     // [points, d+1]: weight x slice constant (x normaliser x Potts w)
  const float* compatibility;     // [labels, labels] message matrix, or nullptr for Potts
  float* buffer_a;                // [(num_vertices + 1) * lanes] scratch, row 0 stays zero
  float* buffer_b;                // same size
};

// Q = softmax(unary), then `iterations` times Q = softmax(unary + sum_k m_k), with
// m_k = slice_k(blur_k(splat_k(Q))) for Potts kernels (weights folded into slice_weights) and
// m_k = -C_k slice_k(...) for matrix kernels.
struct MeanFieldArgs {
  const float* unary;  // [points, lanes], zero beyond `labels`
  float* q;            // [points, lanes], lanes >= labels; lanes beyond labels are set to zero
  int64_t points;
  int labels;
  int lanes;           // mean_field_lanes(labels): labels rounded up to a multiple of 8
  int iterations;
  const MeanFieldKernel* kernels;
  int num_kernels;
};

// Row width used by mean_field for `labels` labels.
int mean_field_lanes(int labels);

// The permutohedral filter (splat, blur along axes 0..d or d..0, slice) of values [points, V].
void filter(const LatticeView& lattice, const float* in, float* out, int64_t V, bool reverse);
void filter(const LatticeView& lattice, const double* in, double* out, int64_t V, bool reverse);

void mean_field(const MeanFieldArgs& args);

// Whether the AVX2+FMA loops are used on this CPU.
bool using_avx2();

}  // namespace deeplabv2_ext::densecrf::cpu
