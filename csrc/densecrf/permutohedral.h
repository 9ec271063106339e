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
//   permutohedral_filter(Tensor values, Tensor[] lattice, bool reverse) -> Tensor
//     lattice: the kLatticeTensors tensors of one permutohedral_lattice result, in that order.
//     values [N, P, V] float32 (float64 on CPU), point-major so that the V values of a point
//     are contiguous -> [N, P, V] contiguous: splat with the barycentric
//     weights, blur with [1/2 1 1/2] along the D+1 axes (0..D, or D..0 when reverse), slice
//     times 1/(1 + 2^-D). The filter with reverse=true is the exact adjoint of the filter with
//     reverse=false (the same lattice, the blur axes in reverse order).
//   dense_crf_mean_field(Tensor unary, Tensor[] lattices, Tensor compatibility,
//                        Tensor? point_groups, int iterations, str normalization) -> Tensor
//     The whole mean-field inference of the dense CRF (no autograd; inference only):
//     unary [N, L, P] float32 (pydensecrf's -U, label-major: an NCHW tensor with H*W flattened;
//     a NaN or an infinity raises),
//     lattices: one lattice per pairwise kernel, K * kLatticeTensors tensors, lattice after
//     lattice (the permutohedral_lattice outputs of kernel 0, then of kernel 1, ...): one flat
//     list rather than one list per lattice tensor, so that the schema does not change when the
//     lattice gains a tensor. compatibility [K] Potts weights
//     (energy += w_k filter_k(Q)) or [K, L, L] message matrices (energy -= C_k filter_k(Q)),
//     normalization "symmetric" | "after" | "none" applied to every kernel as in pydensecrf.
//     point_groups [N*P] int32 in [0, N*P) (optional, only a speed hint): the loop visits the
//     points group by group (e.g. 64x64 pixel blocks); the result does not depend on it beyond
//     float rounding.
//     Returns Q [N, L, P] after `iterations` updates Q = softmax(energy) from softmax(unary).
//   permutohedral_normalizer(Tensor ones_filtered, str normalization) -> Tensor
//     kernel_normalizer below (CompositeImplicitAutograd: any device, float32 or float64).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <vector>

#include "lattice_view.h"

namespace deeplabv2_ext::densecrf {

// Largest |feature| permutohedral_lattice accepts (checked on the values).
constexpr double kMaxFeatureMagnitude = 1e6;

// TORCH_CHECKs the features of permutohedral_lattice (shape, dtype, and finite values of at most
// kMaxFeatureMagnitude: reads the data).
void check_lattice_args(const at::Tensor& features);

// The tensors of one lattice, in the order permutohedral_lattice returns them and the filter and
// mean-field ops take them (the one definition of that order: deeplabv2_ext._C.LATTICE_TENSORS
// exports the names, and deeplabv2_ext.densecrf.PermutohedralLattice checks its fields against
// them).
enum LatticeTensor : int {
  kVertexIndex,
  kVertexWeight,
  kBlurNeighbors,
  kSplatOffsets,
  kSplatEntries,
  kLatticeTensors,  // the number of tensors of a lattice
};
constexpr const char* kLatticeTensorNames[kLatticeTensors] = {
    "vertex_index", "vertex_weight", "blur_neighbors", "splat_offsets", "splat_entries"};

// One lattice as the ops take it: parsed from its tensors and checked once, for every op and
// both devices.
struct Lattice {
  at::Tensor vertex_index, vertex_weight, blur_neighbors, splat_offsets, splat_entries;

  // Lattice `k` of `tensors` (tensors [k * kLatticeTensors, (k + 1) * kLatticeTensors)).
  // TORCH_CHECKs its shapes, dtypes and devices (consistent with each other; reads no data);
  // `op` names the op in the messages.
  Lattice(at::TensorList tensors, size_t k, const char* op);
  // The one lattice of `tensors` (exactly kLatticeTensors of them).
  static Lattice one(at::TensorList tensors, const char* op);
  // Every lattice of `tensors` (a multiple of kLatticeTensors of them).
  static std::vector<Lattice> all(at::TensorList tensors, const char* op);

  int64_t N() const { return vertex_index.size(0); }
  int64_t P() const { return vertex_index.size(1); }
  int D() const { return static_cast<int>(vertex_index.size(2) - 1); }
  int64_t M() const { return blur_neighbors.size(1); }

  // TORCH_CHECKs that the lattice is one of the N images of `values` [N, P, V] (V free), on its
  // device; `what` names values in the messages.
  void check_matches(const at::Tensor& values, const char* what, const char* op) const;
  // TORCH_CHECKs that the indices are in range (reads a few scalars back to the host), so that
  // a tampered lattice raises instead of reading out of bounds.
  void check_ranges(const char* op) const;
  // The lattice with contiguous tensors and blur_neighbors 8-byte aligned (the CUDA kernels read
  // its pairs as int2); copies only what needs it.
  Lattice contiguous() const;
  // The pointers and sizes of a contiguous() lattice.
  LatticeView view() const;
};

// Largest number of labels of dense_crf_mean_field (rows are padded to a multiple of 8).
constexpr int64_t kMeanFieldMaxLabels = 256;

// The epsilon added to the filter of ones before it is inverted (pydensecrf's 1 / (K(1) + 1e-20)).
constexpr double kNormalizerEpsilon = 1e-20;

// The normaliser n of a pairwise kernel from its filter of ones K(1) (pydensecrf's norm_), shaped
// like `ones_filtered`: (K(1) + eps)^-1/2 for "symmetric" (values are multiplied by n before the
// splat and after the slice), (K(1) + eps)^-1 for "after" (after the slice). The one definition:
// both devices' mean-field ops (mean_field_scales) and, through the op permutohedral_normalizer,
// deeplabv2_ext.densecrf.PairwiseTerm use it.
at::Tensor kernel_normalizer(const at::Tensor& ones_filtered, c10::string_view normalization);

// The per-point factors [N, P] float32 of one mean-field kernel on `lattice`: the splat weight of
// entry (n, p, r) is vertex_weight[n, p, r] * splat[n, p] (splat undefined: vertex_weight
// itself) and its slice weight vertex_weight[n, p, r] * slice[n, p], slice = (n_after * alpha)
// * potts_weight with the normaliser n_after applied after the slice, alpha = slice_alpha(D)
// and potts_weight 1 for message matrices. The weights of both devices' mean-field loops, which
// then only splat, blur and slice with them. `ones_filtered` [N, P] or [N, P, 1]: K(1) of
// `lattice` (not read, and may be undefined, for "none").
struct MeanFieldScales {
  at::Tensor splat, slice;
};
MeanFieldScales mean_field_scales(const Lattice& lattice, const at::Tensor& ones_filtered,
                                  c10::string_view normalization, double potts_weight);

// TORCH_CHECKs the arguments of permutohedral_filter (values [N, P, V] float32 or float64, one
// lattice that matches them) and returns the lattice (not yet checked for index ranges).
Lattice check_filter_args(const at::Tensor& values, at::TensorList lattice);

// TORCH_CHECKs the arguments of dense_crf_mean_field other than the lattices and returns the
// lattices (checked against unary, not yet for index ranges).
std::vector<Lattice> check_mean_field_args(const at::Tensor& unary, at::TensorList lattices,
                                           const at::Tensor& compatibility,
                                           const c10::optional<at::Tensor>& point_groups,
                                           int64_t iterations, c10::string_view normalization);

}  // namespace deeplabv2_ext::densecrf
