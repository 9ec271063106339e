// Queries of the CPU permutohedral-lattice kernels (permutohedral_kernel.cpp,
// mean_field_kernel.cpp), for the tests and for diagnostics.
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

// K(1) [N, P] float32, the filter of ones that the CPU dense_crf_mean_field computes for the
// normalisers of a kernel on `lattice` (the kLatticeTensors tensors of one CPU lattice), with
// the op's own code.
at::Tensor cpu_filter_ones(at::TensorList lattice);

}  // namespace deeplabv2_ext::densecrf
