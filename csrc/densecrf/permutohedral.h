// Torch-facing declarations of the permutohedral-lattice ops (the DenseCRF building blocks).
//
// Schema (permutohedral.cpp):
//   permutohedral_lattice(Tensor features) -> (Tensor vertex_index, Tensor vertex_weight,
//                                              Tensor blur_neighbors, Tensor splat_offsets,
//                                              Tensor splat_entries)
//     features       [N, D, P] float32, 1 <= D <= kMaxLatticeDim: the positions of the P points
//                    of each of N images in feature space (already divided by the std devs).
//     vertex_index   [N, P, D+1] int32: the D+1 lattice vertices enclosing each point, numbered
//                    globally over the batch (image n's vertices never mix with image m's).
//     vertex_weight  [N, P, D+1] float32: their barycentric weights.
//     blur_neighbors [D+1, M, 2] int32: for blur axis j and vertex i the two neighbours along j
//                    (-1 when absent from the lattice); M = number of vertices of the batch.
//     splat_offsets  [M+1] int32 and splat_entries [N*P*(D+1)] int32: the splat plan, a CSR
//                    over vertices of the entries e = (n*P + p)*(D+1) + r that touch each
//                    vertex, in increasing e (so splatting is a race-free, deterministic gather
//                    that sums in the v2 code's order). Built once with the lattice.
//   permutohedral_filter(Tensor values, Tensor vertex_index, Tensor vertex_weight,
//                        Tensor blur_neighbors, Tensor splat_offsets, Tensor splat_entries,
//                        bool reverse) -> Tensor
//     values [N, P, V] float32 (float64 on CPU), point-major so that the V values of a point
//     are contiguous -> [N, P, V] contiguous: splat with the barycentric
//     weights, blur with [1/2 1 1/2] along the D+1 axes (0..D, or D..0 when reverse), slice
//     times 1/(1 + 2^-D). The filter with reverse=true is the exact adjoint of the filter with
//     reverse=false (the same lattice, the blur axes in reverse order).
#pragma once

#include <ATen/core/Tensor.h>

namespace deeplabv2_ext::densecrf {

// TORCH_CHECKs the features of permutohedral_lattice.
void check_lattice_args(const at::Tensor& features);

// TORCH_CHECKs the arguments of permutohedral_filter (shapes, dtypes, devices agree).
void check_filter_args(const at::Tensor& values, const at::Tensor& vertex_index,
                       const at::Tensor& vertex_weight, const at::Tensor& blur_neighbors,
                       const at::Tensor& splat_offsets, const at::Tensor& splat_entries);

}  // namespace deeplabv2_ext::densecrf
