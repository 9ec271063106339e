// The lattice loops compiled for AVX2 + FMA (x86-64 with GCC or Clang); used only when the CPU
// has both (lattice_loops_dispatch.cpp). Every #include comes before the target pragma so that
// only the functions of lattice_loops_impl.h are compiled for AVX2. On other platforms this file
// compiles the same loops for the baseline ISA and the dispatcher never selects them.
// The 32-byte vector types of lattice_loops_impl.h are only used inside always-inline
// functions, so GCC's note that passing them without AVX changes the ABI does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "../permutohedral_math.h"
#include "lattice_loops.h"
#include "scratch_array.h"

#if defined(__x86_64__) && defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#define DLV2_LOOPS_AVX2_PRAGMA_CLANG
#elif defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define DLV2_LOOPS_AVX2_PRAGMA_GCC
#endif

#define DLV2_LOOPS_ISA isa_avx2
#include "lattice_loops_impl.h"

#if defined(DLV2_LOOPS_AVX2_PRAGMA_CLANG)
#pragma clang attribute pop
#elif defined(DLV2_LOOPS_AVX2_PRAGMA_GCC)
#pragma GCC pop_options
#endif
