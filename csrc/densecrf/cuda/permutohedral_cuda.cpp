// CUDA implementation of deeplabv2_ext::permutohedral_lattice / permutohedral_filter /
// dense_crf_mean_field (glue).
//
// Checks the arguments, makes the inputs contiguous, allocates outputs and workspaces, fills the
// torch-free parameter structs of permutohedral_kernel.cuh and calls the launchers on the current
// stream. The lattice build reads two int32 back to the host (error flag and M, one small
// device-to-host copy that synchronises the stream) to allocate blur_neighbors [D+1, M, 2] and
// splat_offsets [M+1]; the filter never synchronises (index validity is checked on the device).
//
// dense_crf_mean_field runs the whole loop from C++ on the stream: per kernel, once, the filter
// of ones and from it the splat and slice weights of mean_field_scales (permutohedral.h); per
// iteration and kernel one filter launch sequence (splat, D+1 blurs, slice) whose slice adds
// straight into the energy (Potts) or writes the filtered Q for one cuBLAS GEMM with
// the message matrix; then ATen's softmax over labels. The argument checks read a few scalars
// back to the host (lattice index ranges, the NaN/Inf check of unary, the Potts weights).
#include "../permutohedral.h"
#include "permutohedral_kernel.cuh"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

namespace deeplabv2_ext::densecrf {
namespace {

at::Tensor make_workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

// The CUDA kernels index lattice entries (point, remainder) with 32-bit arithmetic.
void check_entry_count(int64_t N, int64_t P, int64_t d, const char* op) {
  TORCH_CHECK_VALUE(N * P * (d + 1) <= kLatticeMaxEntries, op, " (CUDA): N * P * (D + 1) = ",
                    N * P * (d + 1), " lattice entries exceed the supported ",
                    kLatticeMaxEntries, "; split the batch");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> permutohedral_lattice_cuda(
    const at::Tensor& features) {
  check_lattice_args(features);
  TORCH_CHECK_VALUE(features.is_cuda(), "permutohedral_lattice: the CUDA kernel got features on ",
                    features.device());
  c10::cuda::CUDAGuard guard(features.device());
  const int64_t N = features.size(0), P = features.size(2);
  const int d = static_cast<int>(features.size(1));
  check_entry_count(N, P, d, "permutohedral_lattice");  // sizes only: before any allocation
  const at::Tensor f = features.contiguous();
  const auto int_opts = f.options().dtype(at::kInt);
  at::Tensor vertex_index = at::empty({N, P, d + 1}, int_opts);
  at::Tensor vertex_weight = at::empty({N, P, d + 1}, f.options());
  if (N == 0 || P == 0) {
    return {vertex_index, vertex_weight, at::empty({d + 1, 0, 2}, int_opts),
            at::zeros({1}, int_opts), at::empty({0}, int_opts)};
  }

  LatticeParams p;
  p.features = f.data_ptr<float>();
  p.vertex_index = vertex_index.data_ptr<int32_t>();
  p.vertex_weight = vertex_weight.data_ptr<float>();
  p.N = N;
  p.P = P;
  p.D = d;
  at::Tensor info = at::empty({kLatticeInfoSize}, int_opts);
  p.info = info.data_ptr<int32_t>();
  at::Tensor workspace = make_workspace(lattice_workspace_bytes(p), f);
  p.workspace = workspace.data_ptr();

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(launch_lattice_build(p, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor host_info = info.to(at::kCPU);  // synchronises the stream
  const int32_t* h = host_info.data_ptr<int32_t>();
  TORCH_CHECK(h[kLatticeInfoError] == 0,
              "permutohedral_lattice (CUDA): the lattice hash table (", lattice_hash_capacity(p),
              " slots for ", N * P * (d + 1), " entries) overflowed; this cannot happen for a "
              "correct build, please report it");
  p.M = h[kLatticeInfoVertices];
  TORCH_CHECK(p.M >= 1 && p.M <= N * P * (d + 1),
              "permutohedral_lattice (CUDA): invalid vertex count ", p.M);

  at::Tensor blur_neighbors = at::empty({d + 1, p.M, 2}, int_opts);
  at::Tensor splat_offsets = at::empty({p.M + 1}, int_opts);
  at::Tensor splat_entries = at::empty({N * P * (d + 1)}, int_opts);
  p.blur_neighbors = blur_neighbors.data_ptr<int32_t>();
  p.splat_offsets = splat_offsets.data_ptr<int32_t>();
  p.splat_entries = splat_entries.data_ptr<int32_t>();
  at::Tensor finish_workspace = make_workspace(lattice_finish_workspace_bytes(p), f);
  p.finish_workspace = finish_workspace.data_ptr();
  C10_CUDA_CHECK(launch_lattice_finish(p, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // The workspaces are freed here; the caching allocator orders their reuse on `stream`.
  return {vertex_index, vertex_weight, blur_neighbors, splat_offsets, splat_entries};
}

// The FilterParams of a contiguous lattice for V values per point; values, output, workspace
// and the weights are left to the caller.
FilterParams filter_params(const Lattice& lattice, int64_t V) {
  FilterParams p;
  p.lattice = lattice.view();
  p.V = V;
  return p;
}

at::Tensor permutohedral_filter_cuda(const at::Tensor& values, at::TensorList lattice_tensors,
                                     bool reverse) {
  constexpr const char* op = "permutohedral_filter";
  const Lattice lattice = check_filter_args(values, lattice_tensors);
  TORCH_CHECK_VALUE(values.is_cuda(), op, ": the CUDA kernel got values on ", values.device());
  c10::cuda::CUDAGuard guard(values.device());
  check_entry_count(lattice.N(), lattice.P(), lattice.D(), op);  // before any allocation
  at::Tensor out = at::empty(values.sizes(), values.options());
  if (out.numel() == 0) return out;
  // N, P, V >= 1 here, so there is at least one lattice entry and hence one vertex.
  TORCH_CHECK_VALUE(lattice.M() >= 1, op, ": blur_neighbors has no vertices (M = 0) but "
                    "values is not empty: pass the tensors returned by permutohedral_lattice");

  const at::Tensor in = values.contiguous();
  const Lattice contiguous = lattice.contiguous();
  FilterParams p = filter_params(contiguous, values.size(2));
  p.values = in.data_ptr();
  p.output = out.data_ptr();
  p.reverse = reverse;
  p.dtype = in.scalar_type() == at::kDouble ? DType::kFloat64 : DType::kFloat32;
  at::Tensor workspace = make_workspace(filter_workspace_bytes(p), in);
  p.workspace = workspace.data_ptr();

  C10_CUDA_CHECK(launch_filter(p, c10::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// One pairwise kernel of the mean-field loop: its lattice (contiguous) and the splat and slice
// weights [N, P, D+1] of mean_field_scales (normalisers, slice constant, Potts weight).
struct MeanFieldKernelCuda {
  Lattice lattice;
  at::Tensor splat_weight, slice_weight;
};

MeanFieldKernelCuda mean_field_kernel(const Lattice& checked, float potts_weight,
                                      c10::string_view normalization, cudaStream_t stream) {
  check_entry_count(checked.N(), checked.P(), checked.D(), "dense_crf_mean_field");
  MeanFieldKernelCuda kernel{checked.contiguous(), at::Tensor(), at::Tensor()};
  kernel.lattice.check_ranges("dense_crf_mean_field");
  const at::Tensor& w = kernel.lattice.vertex_weight;  // [N, P, D+1]
  at::Tensor ones_filtered;
  if (normalization != "none") {  // K(1), one value per point
    const at::Tensor ones = at::ones({kernel.lattice.N(), kernel.lattice.P(), 1}, w.options());
    ones_filtered = at::empty_like(ones);
    FilterParams p = filter_params(kernel.lattice, 1);
    p.values = ones.data_ptr();
    p.output = ones_filtered.data_ptr();
    const at::Tensor workspace = make_workspace(filter_workspace_bytes(p), w);
    p.workspace = workspace.data_ptr();
    C10_CUDA_CHECK(launch_filter(p, stream));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const MeanFieldScales scales =
      mean_field_scales(kernel.lattice, ones_filtered, normalization, potts_weight);
  kernel.splat_weight = scales.splat.defined() ? (w * scales.splat.unsqueeze(-1)).contiguous() : w;
  kernel.slice_weight = (w * scales.slice.unsqueeze(-1)).contiguous();
  return kernel;
}

at::Tensor dense_crf_mean_field_cuda(const at::Tensor& unary, at::TensorList lattice_tensors,
                                     const at::Tensor& compatibility,
                                     const c10::optional<at::Tensor>& point_groups,
                                     int64_t iterations, c10::string_view normalization) {
  const std::vector<Lattice> lattices = check_mean_field_args(
      unary, lattice_tensors, compatibility, point_groups, iterations, normalization);
  TORCH_CHECK_VALUE(unary.is_cuda(), "dense_crf_mean_field: the CUDA kernel got unary on ",
                    unary.device());
  c10::cuda::CUDAGuard guard(unary.device());
  const int64_t N = unary.size(0), L = unary.size(1), P = unary.size(2);
  at::Tensor out = at::empty({N, L, P}, unary.options());
  if (N * P == 0) return out;
  TORCH_CHECK_VALUE(at::isfinite(unary).all().item<bool>(),
                    "dense_crf_mean_field: unary contains NaN or Inf");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool potts = compatibility.dim() == 1;
  // Potts weights are folded into the slice weights on the host side of the setup.
  const at::Tensor potts_weights = potts ? compatibility.to(at::kCPU).contiguous() : at::Tensor();
  const at::Tensor matrices = potts ? at::Tensor() : compatibility.contiguous();
  std::vector<MeanFieldKernelCuda> kernels;
  for (size_t k = 0; k < lattices.size(); ++k) {
    kernels.push_back(mean_field_kernel(
        lattices[k], potts ? potts_weights.data_ptr<float>()[k] : 1.0f, normalization, stream));
  }
  // One filter workspace, sized for the largest kernel, serves every kernel: their filters run
  // one after another on the stream.
  size_t workspace_bytes = 0;
  for (const MeanFieldKernelCuda& kernel : kernels) {
    workspace_bytes =
        std::max(workspace_bytes, filter_workspace_bytes(filter_params(kernel.lattice, L)));
  }
  const at::Tensor workspace = make_workspace(workspace_bytes, unary);

  const at::Tensor unary_points = unary.transpose(1, 2).contiguous();  // [N, P, L]
  at::Tensor q = at::softmax(unary_points, -1);
  at::Tensor energy = at::empty_like(unary_points);
  at::Tensor filtered = potts ? at::Tensor() : at::empty_like(unary_points);
  for (int64_t iteration = 0; iteration < iterations; ++iteration) {
    energy.copy_(unary_points);
    for (size_t k = 0; k < kernels.size(); ++k) {
      const MeanFieldKernelCuda& kernel = kernels[k];
      FilterParams p = filter_params(kernel.lattice, L);
      p.values = q.data_ptr();
      p.splat_weight = kernel.splat_weight.data_ptr<float>();
      p.slice_weight = kernel.slice_weight.data_ptr<float>();
      p.workspace = workspace.data_ptr();
      // Potts: energy += w * filter(Q) (w is in the slice weights); a matrix C:
      // energy -= filter(Q) C^T (a cuBLAS GEMM: TF32 when the user allows it for matmuls).
      p.output = potts ? energy.data_ptr() : filtered.data_ptr();
      p.accumulate = potts;
      C10_CUDA_CHECK(launch_filter(p, stream));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (!potts) {
        energy.view({N * P, L}).addmm_(filtered.view({N * P, L}), matrices[k].t(), 1, -1);
      }
    }
    at::softmax_out(q, energy, -1);
  }
  out.copy_(q.transpose(1, 2));
  return out;
}

}  // namespace
}  // namespace deeplabv2_ext::densecrf

TORCH_LIBRARY_IMPL(deeplabv2_ext, CUDA, m) {
  m.impl("permutohedral_lattice", &deeplabv2_ext::densecrf::permutohedral_lattice_cuda);
  m.impl("permutohedral_filter", &deeplabv2_ext::densecrf::permutohedral_filter_cuda);
  m.impl("dense_crf_mean_field", &deeplabv2_ext::densecrf::dense_crf_mean_field_cuda);
}
