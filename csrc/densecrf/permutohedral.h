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
//                    vertex, in increasing e (so splatting is a race-free, deterministic gather;
//                    the CPU op sums each list in the v2 code's order, the CUDA op in chunks of
//                    64 entries of it). Built once with the lattice.
//   permutohedral_filter(Tensor values, Tensor vertex_index, Tensor vertex_weight,
//                        Tensor blur_neighbors, Tensor splat_offsets, Tensor splat_entries,
//                        bool reverse) -> Tensor
//     values [N, P, V] float32 (float64 on CPU), point-major so that the V values of a point
//     are contiguous -> [N, P, V] contiguous: splat with the barycentric
//     weights, blur with [1/2 1 1/2] along the D+1 axes (0..D, or D..0 when reverse), slice
//     times 1/(1 + 2^-D). The filter with reverse=true is the exact adjoint of the filter with
//     reverse=false (the same lattice, the blur axes in reverse order).
//   dense_crf_mean_field(Tensor unary, Tensor[] vertex_index, Tensor[] vertex_weight,
//                        Tensor[] blur_neighbors, Tensor[] splat_offsets,
//                        Tensor[] splat_entries, Tensor compatibility, Tensor? point_groups,
//                        int iterations, str normalization) -> Tensor
//     The whole mean-field inference of the dense CRF (no autograd; inference only):
//     unary [N, L, P] float32 (pydensecrf's -U, label-major: an NCHW tensor with H*W flattened;
//     a NaN or an infinity raises),
//     one lattice per pairwise kernel
//     (K lists of the permutohedral_lattice outputs), compatibility [K] Potts weights
//     (energy += w_k filter_k(Q)) or [K, L, L] message matrices (energy -= C_k filter_k(Q)),
//     normalization "symmetric" | "after" | "none" applied to every kernel as in pydensecrf.
//     point_groups [N*P] int32 in [0, N*P) (optional, only a speed hint): the loop visits the
//     points group by group (e.g. 64x64 pixel blocks); the result does not depend on it beyond
//     float rounding.
//     Returns Q [N, L, P] after `iterations` updates Q = softmax(energy) from softmax(unary).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

namespace deeplabv2_ext::densecrf {

// Largest |feature| permutohedral_lattice accepts (checked on the values).
constexpr double kMaxFeatureMagnitude = 1e6;

// TORCH_CHECKs the features of permutohedral_lattice (shape, dtype, and finite values of at most
// kMaxFeatureMagnitude: reads the data).
void check_lattice_args(const at::Tensor& features);

// TORCH_CHECKs the arguments of permutohedral_filter (shapes, dtypes, devices agree); `op`
// names the op in the messages.
void check_filter_args(const at::Tensor& values, const at::Tensor& vertex_index,
                       const at::Tensor& vertex_weight, const at::Tensor& blur_neighbors,
                       const at::Tensor& splat_offsets, const at::Tensor& splat_entries,
                       const char* op = "permutohedral_filter");

// TORCH_CHECKs that the lattice's indices are in range (reads a few scalars back to the host),
// so that a tampered lattice raises instead of reading out of bounds.
void check_lattice_ranges(const at::Tensor& vertex_index, const at::Tensor& blur_neighbors,
                          const at::Tensor& splat_offsets, const at::Tensor& splat_entries,
                          const char* op);

// Largest number of labels of dense_crf_mean_field (rows are padded to a multiple of 8).
constexpr int64_t kMeanFieldMaxLabels = 256;

// TORCH_CHECKs the arguments of dense_crf_mean_field.
void check_mean_field_args(const at::Tensor& unary, at::TensorList vertex_index,
                           at::TensorList vertex_weight, at::TensorList blur_neighbors,
                           at::TensorList splat_offsets, at::TensorList splat_entries,
                           const at::Tensor& compatibility,
                           const c10::optional<at::Tensor>& point_groups, int64_t iterations,
                           c10::string_view normalization);

}  // namespace deeplabv2_ext::densecrf
