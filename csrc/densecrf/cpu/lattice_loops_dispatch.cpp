// Run-time choice between the baseline and the AVX2+FMA builds of the lattice loops.
#include "lattice_loops.h"

#include <cstdlib>
#include <cstring>

namespace deeplabv2_ext::densecrf::cpu {

#define DLV2_DECLARE_LOOPS(isa)                                                              \
  namespace isa {                                                                            \
  void filter_f32(const LatticeView&, const float*, float*, int64_t, bool);                  \
  void filter_f64(const LatticeView&, const double*, double*, int64_t, bool);                \
  void mean_field(const MeanFieldArgs&);                                                     \
  }
DLV2_DECLARE_LOOPS(isa_default)
DLV2_DECLARE_LOOPS(isa_avx2)
#undef DLV2_DECLARE_LOOPS
namespace isa_default {
void filter_ones(const LatticeView&, float*);  // baseline build only (see filter_ones below)
}

namespace {

// AVX2+FMA when the CPU has them, unless DEEPLABV2_EXT_CPU_ISA=default asks for the baseline
// (used by the tests to check that both builds agree).
bool detect_avx2() {
  const char* requested = std::getenv("DEEPLABV2_EXT_CPU_ISA");
  if (requested != nullptr && std::strcmp(requested, "default") == 0) return false;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace

bool using_avx2() {
  static const bool avx2 = detect_avx2();
  return avx2;
}

int mean_field_lanes(int labels) { return (labels + 7) / 8 * 8; }

void filter(const LatticeView& lattice, const float* in, float* out, int64_t V, bool reverse) {
  if (using_avx2()) return isa_avx2::filter_f32(lattice, in, out, V, reverse);
  isa_default::filter_f32(lattice, in, out, V, reverse);
}

void filter(const LatticeView& lattice, const double* in, double* out, int64_t V, bool reverse) {
  if (using_avx2()) return isa_avx2::filter_f64(lattice, in, out, V, reverse);
  isa_default::filter_f64(lattice, in, out, V, reverse);
}

// The baseline build on every CPU: the normalisers keep the numbers they had when this loop was
// compiled outside the ISA builds (the AVX2+FMA build contracts a*b + c into FMAs, which rounds
// differently); it is a scalar loop either way.
void filter_ones(const LatticeView& lattice, float* response) {
  isa_default::filter_ones(lattice, response);
}

void mean_field(const MeanFieldArgs& args) {
  if (using_avx2()) return isa_avx2::mean_field(args);
  isa_default::mean_field(args);
}

}  // namespace deeplabv2_ext::densecrf::cpu
