// Schema and argument checks of the permutohedral-lattice ops.
#include "permutohedral.h"

#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>
#include <torch/library.h>

#include <cstdint>

#include "permutohedral_math.h"

namespace deeplabv2_ext::densecrf {

void check_lattice_args(const at::Tensor& features) {
  TORCH_CHECK_VALUE(features.layout() == at::kStrided, "permutohedral_lattice: sparse features");
  TORCH_CHECK_VALUE(features.dim() == 3, "permutohedral_lattice: features must be 3-D [N, D, P], "
                    "got shape ", features.sizes());
  TORCH_CHECK_TYPE(features.scalar_type() == at::kFloat,
                   "permutohedral_lattice: features must be float32, got ", features.scalar_type());
  TORCH_CHECK_VALUE(features.size(1) >= 1 && features.size(1) <= kMaxLatticeDim,
                    "permutohedral_lattice: the feature dimension D must be in [1, ",
                    kMaxLatticeDim, "], got D = ", features.size(1));
  TORCH_CHECK_VALUE(features.size(0) * features.size(2) * (features.size(1) + 1) <
                        std::numeric_limits<int32_t>::max(),
                    "permutohedral_lattice: N * P * (D + 1) = ",
                    features.size(0) * features.size(2) * (features.size(1) + 1),
                    " lattice entries exceed the int32 vertex index range; split the batch");
  // The embedding's rank correction and the int32 keys need finite features of moderate size:
  // NaN, infinities or magnitudes of about 1e7 and more would give out-of-range ranks (memory
  // corruption) or overflowing keys. Reads the features (one reduction; on CUDA one sync).
  if (features.numel() > 0) {
    TORCH_CHECK_VALUE(features.abs().le(kMaxFeatureMagnitude).all().item<bool>(),
                      "permutohedral_lattice: features must be finite and at most ",
                      kMaxFeatureMagnitude, " in magnitude (positions and colours divided by "
                      "their standard deviations); got NaN, an infinity or a larger value");
  }
}

Lattice::Lattice(at::TensorList tensors, size_t k, const char* op) {
  TORCH_CHECK_VALUE((k + 1) * kLatticeTensors <= tensors.size(), op, ": lattice ", k,
                    " is missing: a lattice is ", static_cast<int>(kLatticeTensors), " tensors (",
                    c10::Join(", ", c10::ArrayRef<const char*>(kLatticeTensorNames)), "), got ", tensors.size(), " tensors");
  const at::Tensor* t = tensors.data() + k * kLatticeTensors;
  vertex_index = t[kVertexIndex];
  vertex_weight = t[kVertexWeight];
  blur_neighbors = t[kBlurNeighbors];
  splat_offsets = t[kSplatOffsets];
  splat_entries = t[kSplatEntries];
  TORCH_CHECK_VALUE(vertex_index.dim() == 3 && vertex_weight.sizes() == vertex_index.sizes(), op,
                    ": vertex_index and vertex_weight must both be [N, P, D+1], got ",
                    vertex_index.sizes(), " and ", vertex_weight.sizes());
  const int64_t d = vertex_index.size(2) - 1;
  TORCH_CHECK_VALUE(d >= 1 && d <= kMaxLatticeDim && blur_neighbors.dim() == 3 &&
                        blur_neighbors.size(0) == d + 1 && blur_neighbors.size(2) == 2,
                    op, ": blur_neighbors must be [D+1, M, 2] = [", d + 1, ", M, 2], got ",
                    blur_neighbors.sizes());
  TORCH_CHECK_TYPE(vertex_index.scalar_type() == at::kInt &&
                       blur_neighbors.scalar_type() == at::kInt &&
                       vertex_weight.scalar_type() == at::kFloat,
                   op, ": vertex_index and blur_neighbors must be int32 and vertex_weight "
                   "float32 (as returned by permutohedral_lattice)");
  TORCH_CHECK_VALUE(splat_offsets.dim() == 1 && splat_offsets.size(0) == blur_neighbors.size(1) + 1 &&
                        splat_entries.dim() == 1 && splat_entries.size(0) == vertex_index.numel(),
                    op, ": splat_offsets must be [M+1] and splat_entries [N*P*(D+1)], got ",
                    splat_offsets.sizes(), " and ", splat_entries.sizes());
  TORCH_CHECK_TYPE(splat_offsets.scalar_type() == at::kInt &&
                       splat_entries.scalar_type() == at::kInt,
                   op, ": splat_offsets and splat_entries must be int32");
  for (int i = 0; i < kLatticeTensors; ++i) {
    TORCH_CHECK_VALUE(t[i].device() == vertex_index.device(), op,
                      ": the tensors of a lattice must be on one device, got vertex_index on ",
                      vertex_index.device(), " and ", kLatticeTensorNames[i], " on ",
                      t[i].device());
  }
}

Lattice Lattice::one(at::TensorList tensors, const char* op) {
  TORCH_CHECK_VALUE(tensors.size() == kLatticeTensors, op, ": a lattice is ",
                    static_cast<int>(kLatticeTensors), " tensors, got ", tensors.size());
  return Lattice(tensors, 0, op);
}

std::vector<Lattice> Lattice::all(at::TensorList tensors, const char* op) {
  TORCH_CHECK_VALUE(tensors.size() % kLatticeTensors == 0, op, ": the lattices must be ",
                    static_cast<int>(kLatticeTensors), " tensors per lattice, got ",
                    tensors.size(), " tensors");
  std::vector<Lattice> lattices;
  for (size_t k = 0; k < tensors.size() / kLatticeTensors; ++k) lattices.emplace_back(tensors, k, op);
  return lattices;
}

void Lattice::check_matches(const at::Tensor& values, const char* what, const char* op) const {
  TORCH_CHECK_VALUE(N() == values.size(0) && P() == values.size(1), op, ": the lattice "
                    "(vertex_index ", vertex_index.sizes(), ") does not match ", what, " ",
                    values.sizes(), " [N, P, V]");
  TORCH_CHECK_VALUE(vertex_index.device() == values.device(), op,
                    ": all tensors must be on the same device, got ", what, " on ",
                    values.device(), " and a lattice on ", vertex_index.device());
}

void Lattice::check_ranges(const char* op) const {
  const int64_t m = M();
  if (vertex_index.numel() > 0) {
    const auto [index_min, index_max] = at::aminmax(vertex_index);
    TORCH_CHECK_VALUE(index_min.item<int32_t>() >= 0 && index_max.item<int32_t>() < m, op,
                      ": vertex_index is out of range [0, ", m,
                      "): pass the tensors returned by permutohedral_lattice");
  }
  if (blur_neighbors.numel() > 0) {
    const auto [neighbor_min, neighbor_max] = at::aminmax(blur_neighbors);
    TORCH_CHECK_VALUE(neighbor_min.item<int32_t>() >= -1 && neighbor_max.item<int32_t>() < m, op,
                      ": blur_neighbors is out of range [-1, ", m,
                      "): pass the tensors returned by permutohedral_lattice");
  }
  // splat_offsets/entries must be a CSR of the entries grouped by vertex (checked cheaply: their
  // range; a wrong but in-range plan gives wrong numbers, never an out-of-bounds access).
  TORCH_CHECK_VALUE(splat_offsets[0].item<int32_t>() == 0 &&
                        splat_offsets[m].item<int32_t>() == splat_entries.numel() &&
                        (m == 0 || (splat_offsets.diff() >= 0).all().item<bool>()) &&
                        (splat_entries.numel() == 0 ||
                         (splat_entries.min().item<int32_t>() >= 0 &&
                          splat_entries.max().item<int32_t>() < vertex_index.numel())),
                    op, ": invalid splat lists: pass the tensors returned by "
                    "permutohedral_lattice");
}

Lattice Lattice::contiguous() const {
  Lattice c = *this;
  c.vertex_index = vertex_index.contiguous();
  c.vertex_weight = vertex_weight.contiguous();
  c.blur_neighbors = blur_neighbors.contiguous();
  if (reinterpret_cast<uintptr_t>(c.blur_neighbors.data_ptr()) % 8 != 0) {
    c.blur_neighbors = c.blur_neighbors.clone();
  }
  c.splat_offsets = splat_offsets.contiguous();
  c.splat_entries = splat_entries.contiguous();
  return c;
}

LatticeView Lattice::view() const {
  LatticeView v;
  v.vertex_index = vertex_index.data_ptr<int32_t>();
  v.vertex_weight = vertex_weight.data_ptr<float>();
  v.blur_neighbors = blur_neighbors.data_ptr<int32_t>();
  v.splat_offsets = splat_offsets.data_ptr<int32_t>();
  v.splat_entries = splat_entries.data_ptr<int32_t>();
  v.N = N();
  v.P = P();
  v.M = M();
  v.D = D();
  return v;
}

Lattice check_filter_args(const at::Tensor& values, at::TensorList lattice_tensors) {
  constexpr const char* op = "permutohedral_filter";
  TORCH_CHECK_VALUE(values.dim() == 3, op, ": values must be 3-D [N, P, V], got ", values.sizes());
  TORCH_CHECK_TYPE(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble, op,
                   ": values must be float32 or float64, got ", values.scalar_type());
  Lattice lattice = Lattice::one(lattice_tensors, op);
  lattice.check_matches(values, "values", op);
  return lattice;
}

std::vector<Lattice> check_mean_field_args(const at::Tensor& unary, at::TensorList lattices,
                                           const at::Tensor& compatibility,
                                           const c10::optional<at::Tensor>& point_groups,
                                           int64_t iterations, c10::string_view normalization) {
  constexpr const char* op = "dense_crf_mean_field";
  TORCH_CHECK_VALUE(unary.dim() == 3, op, ": unary must be 3-D [N, L, P], got ", unary.sizes());
  TORCH_CHECK_TYPE(unary.scalar_type() == at::kFloat, op, ": unary must be float32, got ",
                   unary.scalar_type());
  TORCH_CHECK_VALUE(unary.size(1) >= 1 && unary.size(1) <= kMeanFieldMaxLabels, op,
                    ": the number of labels must be in [1, ", kMeanFieldMaxLabels, "], got ",
                    unary.size(1));
  std::vector<Lattice> kernels = Lattice::all(lattices, op);
  for (const Lattice& lattice : kernels) {
    // The lattice must fit the points of unary, seen point-major as the filter sees values.
    lattice.check_matches(unary.transpose(1, 2), "unary (point-major)", op);
  }
  const int64_t K = static_cast<int64_t>(kernels.size()), L = unary.size(1);
  TORCH_CHECK_TYPE(compatibility.scalar_type() == at::kFloat, op,
                   ": compatibility must be float32, got ", compatibility.scalar_type());
  TORCH_CHECK_VALUE((compatibility.dim() == 1 && compatibility.size(0) == K) ||
                        (compatibility.dim() == 3 && compatibility.size(0) == K &&
                         compatibility.size(1) == L && compatibility.size(2) == L),
                    op, ": compatibility must be [K] Potts weights or [K, L, L] matrices for K = ",
                    K, " kernels and L = ", L, " labels, got ", compatibility.sizes());
  TORCH_CHECK_VALUE(compatibility.device() == unary.device(), op, ": compatibility is on ",
                    compatibility.device(), " but unary on ", unary.device());
  if (point_groups.has_value() && point_groups->defined()) {
    TORCH_CHECK_VALUE(point_groups->dim() == 1 &&
                          point_groups->numel() == unary.size(0) * unary.size(2),
                      op, ": point_groups must be [N*P], got ", point_groups->sizes());
    TORCH_CHECK_TYPE(point_groups->scalar_type() == at::kInt, op,
                     ": point_groups must be int32, got ", point_groups->scalar_type());
    TORCH_CHECK_VALUE(point_groups->device() == unary.device(), op, ": point_groups is on ",
                      point_groups->device(), " but unary on ", unary.device());
    if (point_groups->numel() > 0) {
      const auto [lo, hi] = at::aminmax(*point_groups);
      TORCH_CHECK_VALUE(lo.item<int32_t>() >= 0 && hi.item<int32_t>() < point_groups->numel(),
                        op, ": point_groups must be in [0, N*P)");
    }
  }
  TORCH_CHECK_VALUE(iterations >= 0, op, ": iterations must be >= 0, got ", iterations);
  TORCH_CHECK_VALUE(normalization == "symmetric" || normalization == "after" ||
                        normalization == "none",
                    op, ": normalization must be \"symmetric\", \"after\" or \"none\", got \"",
                    normalization, "\"");
  return kernels;
}

at::Tensor kernel_normalizer(const at::Tensor& ones_filtered, c10::string_view normalization) {
  TORCH_CHECK_VALUE(normalization == "symmetric" || normalization == "after",
                    "permutohedral_normalizer: normalization must be \"symmetric\" or \"after\", "
                    "got \"", normalization, "\"");
  TORCH_CHECK_TYPE(at::isFloatingType(ones_filtered.scalar_type()),
                   "permutohedral_normalizer: ones_filtered must be floating point, got ",
                   ones_filtered.scalar_type());
  const at::Tensor shifted = ones_filtered + kNormalizerEpsilon;
  return normalization == "symmetric" ? shifted.rsqrt() : shifted.reciprocal();
}

MeanFieldScales mean_field_scales(const Lattice& lattice, const at::Tensor& ones_filtered,
                                  c10::string_view normalization, double potts_weight) {
  const double alpha = slice_alpha(lattice.D());  // a float, exact in double
  MeanFieldScales scales;
  if (normalization == "none") {
    // alpha * potts_weight in double, rounded once to float: the float product
    scales.slice = at::full({lattice.N(), lattice.P()}, alpha * potts_weight,
                            lattice.vertex_weight.options());
    return scales;
  }
  const at::Tensor n =
      kernel_normalizer(ones_filtered.reshape({lattice.N(), lattice.P()}), normalization);
  if (normalization == "symmetric") scales.splat = n;
  scales.slice = n.mul(alpha).mul_(potts_weight);  // float products, in this order
  return scales;
}

TORCH_LIBRARY_FRAGMENT(deeplabv2_ext, m) {
  m.def("permutohedral_lattice(Tensor features) -> (Tensor vertex_index, Tensor vertex_weight, "
        "Tensor blur_neighbors, Tensor splat_offsets, Tensor splat_entries)");
  m.def("permutohedral_filter(Tensor values, Tensor[] lattice, bool reverse) -> Tensor");
  m.def("dense_crf_mean_field(Tensor unary, Tensor[] lattices, Tensor compatibility, "
        "Tensor? point_groups, int iterations, str normalization) -> Tensor");
  m.def("permutohedral_normalizer(Tensor ones_filtered, str normalization) -> Tensor");
}

TORCH_LIBRARY_IMPL(deeplabv2_ext, CompositeImplicitAutograd, m) {
  m.impl("permutohedral_normalizer", &kernel_normalizer);
}

}  // namespace deeplabv2_ext::densecrf
