// The CPU inner loops of the permutohedral filter and of the fused mean-field inference, as
// plain-pointer functions. They are compiled twice (lattice_loops_default.cpp and
// lattice_loops_avx2.cpp, which adds `#pragma GCC target("avx2,fma")`), each time in its own
// namespace, and lattice_loops_dispatch.cpp picks one at run time (AVX2+FMA when the CPU has
// them).
//
// This header is the declarations; lattice_loops_impl.h holds the definitions and is included
// only by the two ISA translation units.
#pragma once

#include <cstdint>

#include "../lattice_view.h"

namespace deeplabv2_ext::densecrf::cpu {

// e / (D+1) for entries e < 2^31 by a multiply and a shift (Granlund & Montgomery: with
// l = ceil(log2 q), k = 31 + l and m = ceil(2^k / q), floor(e * m / 2^k) = floor(e / q)), which
// is much cheaper than a hardware division in the splat. Used by both loop builds and by the
// mean-field op's setup; the AVX2 build includes this header before its target pragma.
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

// One pairwise kernel of the fused mean-field loop, in the loop's own point order (points are
// permuted so that consecutive points touch nearby vertices; see mean_field_kernel.cpp).
struct MeanFieldKernel {
  LatticeView lattice;            // its blur_neighbors and splat_offsets are read
  const int32_t* splat_points;    // [points * (d+1)]: the (permuted) point of each entry
  const float* splat_weights;     // [points * (d+1)]: vertex_weight x mean_field_scales' splat
  const int32_t* slice_vertices;  // [points, d+1]
  const float* slice_weights;     // [points, d+1]: vertex_weight x mean_field_scales' slice
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

// K(1), the filter of the value 1 at every point, into response [N * P] (float32, the numbers
// of the baseline build's filter() of ones, on every CPU).
void filter_ones(const LatticeView& lattice, float* response);

void mean_field(const MeanFieldArgs& args);

// Whether the AVX2+FMA loops are used on this CPU.
bool using_avx2();

}  // namespace deeplabv2_ext::densecrf::cpu
