// The lattice loops compiled for the baseline ISA of the build (x86-64: SSE2).
// The 32-byte vector types of lattice_loops_impl.h are only used inside always-inline
// functions, so GCC's note that passing them without AVX changes the ABI does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "../permutohedral_math.h"
#include "lattice_loops.h"

#define DLV2_LOOPS_ISA isa_default
#include "lattice_loops_impl.h"

namespace deeplabv2_ext::densecrf::cpu::isa_default {

void filter_f32(const LatticeView& lattice, const float* in, float* out, int64_t V, bool reverse) {
  filter_values(lattice, in, out, V, reverse);
}
void filter_f64(const LatticeView& lattice, const double* in, double* out, int64_t V,
                bool reverse) {
  filter_values(lattice, in, out, V, reverse);
}
void mean_field(const MeanFieldArgs& args) { mean_field_loop(args); }

}  // namespace deeplabv2_ext::densecrf::cpu::isa_default
