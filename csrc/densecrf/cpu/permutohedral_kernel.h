// A query of the CPU permutohedral-lattice kernel (permutohedral_kernel.cpp), for the tests and
// for diagnostics.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace deeplabv2_ext::densecrf {

// The blur-neighbour search that the CPU permutohedral_lattice runs for each image of
// `features` [N, D, P]: "merge" (a merge of the sorted packed keys, the usual case) or "hash"
// (hash-table lookups: when the keys do not pack into 64-bit codes, or when
// DEEPLABV2_EXT_LATTICE_NEIGHBOURS=hash asks for it). Builds each image's table with the
// kernel's own code and asks the kernel's own rule, so it is the choice the kernel makes.
// `features` are checked like the op's.
std::vector<std::string> cpu_neighbour_searches(const at::Tensor& features);

}  // namespace deeplabv2_ext::densecrf
