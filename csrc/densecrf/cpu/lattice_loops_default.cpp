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
#include "scratch_array.h"

#define DLV2_LOOPS_ISA isa_default
#define DLV2_LOOPS_WITH_FILTER_ONES  // the filter of ones exists in this build only
#include "lattice_loops_impl.h"

