// Schema and argument checks of the permutohedral-lattice ops.
#include "permutohedral.h"

#include <ATen/ATen.h>
#include <torch/library.h>

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

void check_filter_args(const at::Tensor& values, const at::Tensor& vertex_index,
                       const at::Tensor& vertex_weight, const at::Tensor& blur_neighbors,
                       const at::Tensor& splat_offsets, const at::Tensor& splat_entries,
                       const char* op) {
  TORCH_CHECK_VALUE(values.dim() == 3, op, ": values must be 3-D [N, P, V], got ", values.sizes());
  TORCH_CHECK_TYPE(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble, op,
                   ": values must be float32 or float64, got ", values.scalar_type());
  TORCH_CHECK_VALUE(vertex_index.dim() == 3 && vertex_weight.sizes() == vertex_index.sizes() &&
                        vertex_index.size(0) == values.size(0) &&
                        vertex_index.size(1) == values.size(1),
                    op, ": the lattice (vertex_index ", vertex_index.sizes(), ", vertex_weight ",
                    vertex_weight.sizes(), ") does not match values ", values.sizes(),
                    " [N, P, V]");
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
  for (const at::Tensor* t :
       {&vertex_index, &vertex_weight, &blur_neighbors, &splat_offsets, &splat_entries}) {
    TORCH_CHECK_VALUE(t->device() == values.device(), op,
                      ": all tensors must be on the same device, got values on ",
                      values.device(), " and a lattice tensor on ", t->device());
  }
}

void check_lattice_ranges(const at::Tensor& vertex_index, const at::Tensor& blur_neighbors,
                          const at::Tensor& splat_offsets, const at::Tensor& splat_entries,
                          const char* op) {
  const int64_t M = blur_neighbors.size(1);
  if (vertex_index.numel() > 0) {
    const auto [index_min, index_max] = at::aminmax(vertex_index);
    TORCH_CHECK_VALUE(index_min.item<int32_t>() >= 0 && index_max.item<int32_t>() < M, op,
                      ": vertex_index is out of range [0, ", M,
                      "): pass the tensors returned by permutohedral_lattice");
  }
  if (blur_neighbors.numel() > 0) {
    const auto [neighbor_min, neighbor_max] = at::aminmax(blur_neighbors);
    TORCH_CHECK_VALUE(neighbor_min.item<int32_t>() >= -1 && neighbor_max.item<int32_t>() < M, op,
                      ": blur_neighbors is out of range [-1, ", M,
                      "): pass the tensors returned by permutohedral_lattice");
  }
  // splat_offsets/entries must be a CSR of the entries grouped by vertex (checked cheaply: their
  // range; a wrong but in-range plan gives wrong numbers, never an out-of-bounds access).
  TORCH_CHECK_VALUE(splat_offsets[0].item<int32_t>() == 0 &&
                        splat_offsets[M].item<int32_t>() == splat_entries.numel() &&
                        (M == 0 || (splat_offsets.diff() >= 0).all().item<bool>()) &&
                        (splat_entries.numel() == 0 ||
                         (splat_entries.min().item<int32_t>() >= 0 &&
                          splat_entries.max().item<int32_t>() < vertex_index.numel())),
                    op, ": invalid splat lists: pass the tensors returned by "
                    "permutohedral_lattice");
}

void check_mean_field_args(const at::Tensor& unary, at::TensorList vertex_index,
                           at::TensorList vertex_weight, at::TensorList blur_neighbors,
                           at::TensorList splat_offsets, at::TensorList splat_entries,
                           const at::Tensor& compatibility,
                           const c10::optional<at::Tensor>& point_groups, int64_t iterations,
                           c10::string_view normalization) {
  constexpr const char* op = "dense_crf_mean_field";
  TORCH_CHECK_VALUE(unary.dim() == 3, op, ": unary must be 3-D [N, L, P], got ", unary.sizes());
  TORCH_CHECK_TYPE(unary.scalar_type() == at::kFloat, op, ": unary must be float32, got ",
                   unary.scalar_type());
  TORCH_CHECK_VALUE(unary.size(1) >= 1 && unary.size(1) <= kMeanFieldMaxLabels, op,
                    ": the number of labels must be in [1, ", kMeanFieldMaxLabels, "], got ",
                    unary.size(1));
  const size_t kernels = vertex_index.size();
  TORCH_CHECK_VALUE(vertex_weight.size() == kernels && blur_neighbors.size() == kernels &&
                        splat_offsets.size() == kernels && splat_entries.size() == kernels,
                    op, ": every lattice tensor list must have one entry per kernel");
  for (size_t k = 0; k < kernels; ++k) {
    // The lattice must fit the points of unary, seen point-major as the filter sees values.
    check_filter_args(unary.transpose(1, 2), vertex_index[k], vertex_weight[k],
                      blur_neighbors[k], splat_offsets[k], splat_entries[k], op);
  }
  const int64_t K = static_cast<int64_t>(kernels), L = unary.size(1);
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
}

TORCH_LIBRARY_FRAGMENT(deeplabv2_ext, m) {
  m.def("permutohedral_lattice(Tensor features) -> (Tensor vertex_index, Tensor vertex_weight, "
        "Tensor blur_neighbors, Tensor splat_offsets, Tensor splat_entries)");
  m.def("permutohedral_filter(Tensor values, Tensor vertex_index, Tensor vertex_weight, "
        "Tensor blur_neighbors, Tensor splat_offsets, Tensor splat_entries, bool reverse) -> "
        "Tensor");
  m.def("dense_crf_mean_field(Tensor unary, Tensor[] vertex_index, Tensor[] vertex_weight, "
        "Tensor[] blur_neighbors, Tensor[] splat_offsets, Tensor[] splat_entries, "
        "Tensor compatibility, Tensor? point_groups, int iterations, str normalization) -> Tensor");
}

}  // namespace deeplabv2_ext::densecrf
