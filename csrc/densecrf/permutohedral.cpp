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
}

void check_filter_args(const at::Tensor& values, const at::Tensor& vertex_index,
                       const at::Tensor& vertex_weight, const at::Tensor& blur_neighbors,
                       const at::Tensor& splat_offsets, const at::Tensor& splat_entries) {
  TORCH_CHECK_VALUE(values.dim() == 3, "permutohedral_filter: values must be 3-D [N, P, V], got ",
                    values.sizes());
  TORCH_CHECK_TYPE(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble,
                   "permutohedral_filter: values must be float32 or float64, got ",
                   values.scalar_type());
  TORCH_CHECK_VALUE(vertex_index.dim() == 3 && vertex_weight.sizes() == vertex_index.sizes() &&
                        vertex_index.size(0) == values.size(0) &&
                        vertex_index.size(1) == values.size(1),
                    "permutohedral_filter: the lattice (vertex_index ", vertex_index.sizes(),
                    ", vertex_weight ", vertex_weight.sizes(), ") does not match values ",
                    values.sizes(), " [N, P, V]");
  const int64_t d = vertex_index.size(2) - 1;
  TORCH_CHECK_VALUE(d >= 1 && d <= kMaxLatticeDim && blur_neighbors.dim() == 3 &&
                        blur_neighbors.size(0) == d + 1 && blur_neighbors.size(2) == 2,
                    "permutohedral_filter: blur_neighbors must be [D+1, M, 2] = [", d + 1,
                    ", M, 2], got ", blur_neighbors.sizes());
  TORCH_CHECK_TYPE(vertex_index.scalar_type() == at::kInt &&
                       blur_neighbors.scalar_type() == at::kInt &&
                       vertex_weight.scalar_type() == at::kFloat,
                   "permutohedral_filter: vertex_index and blur_neighbors must be int32 and "
                   "vertex_weight float32 (as returned by permutohedral_lattice)");
  TORCH_CHECK_VALUE(splat_offsets.dim() == 1 && splat_offsets.size(0) == blur_neighbors.size(1) + 1 &&
                        splat_entries.dim() == 1 && splat_entries.size(0) == vertex_index.numel(),
                    "permutohedral_filter: splat_offsets must be [M+1] and splat_entries "
                    "[N*P*(D+1)], got ", splat_offsets.sizes(), " and ", splat_entries.sizes());
  TORCH_CHECK_TYPE(splat_offsets.scalar_type() == at::kInt &&
                       splat_entries.scalar_type() == at::kInt,
                   "permutohedral_filter: splat_offsets and splat_entries must be int32");
  for (const at::Tensor* t :
       {&vertex_index, &vertex_weight, &blur_neighbors, &splat_offsets, &splat_entries}) {
    TORCH_CHECK_VALUE(t->device() == values.device(),
                      "permutohedral_filter: all tensors must be on the same device, got values "
                      "on ", values.device(), " and a lattice tensor on ", t->device());
  }
}

TORCH_LIBRARY_FRAGMENT(deeplabv2_ext, m) {
  m.def("permutohedral_lattice(Tensor features) -> (Tensor vertex_index, Tensor vertex_weight, "
        "Tensor blur_neighbors, Tensor splat_offsets, Tensor splat_entries)");
  m.def("permutohedral_filter(Tensor values, Tensor vertex_index, Tensor vertex_weight, "
        "Tensor blur_neighbors, Tensor splat_offsets, Tensor splat_entries, bool reverse) -> "
        "Tensor");
}

}  // namespace deeplabv2_ext::densecrf
