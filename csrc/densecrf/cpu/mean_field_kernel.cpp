// CPU kernel of deeplabv2_ext::dense_crf_mean_field: the whole mean-field loop in one op.
//
// Setup, once per call:
//   - per kernel, the filter of ones K(1) (cpu::filter_ones) and from it the per-point factors
//     of mean_field_scales (permutohedral.h: normalisers, slice constant, Potts weight; the same
//     definition as the CUDA op's);
//   - a point order: points sorted by their group (point_groups, e.g. 64x64 pixel blocks), then
//     by the smallest vertex they touch in the largest lattice. Vertices are numbered in key
//     order (permutohedral_lattice), so consecutive points then read and write nearby vertex
//     rows in splat and slice, and the blocks keep a spatial kernel's rows local; unary and Q
//     live in this order;
//   - per kernel, a splat plan (the op's CSR over vertices with each entry's permuted point and
//     its weight, vertex_weight * scales.splat) and a slice plan (per point its d+1 vertices and
//     weights, vertex_weight * scales.slice).
// unary [N, L, P] (label-major, NCHW flattened) is copied into [points, lanes] rows in the loop's
// order in blocks of points (so neither side is read with a large stride; the copy also checks
// that unary is finite), and Q is copied back
// the same way into [N, L, P]. Scratch arrays are ScratchArrays (huge pages; see
// scratch_array.h).
// Then lattice_loops_impl.h runs Q = softmax(unary) and `iterations` times: splat and blur
// every kernel, and one fused pass over the points that slices every kernel into the energy,
// applies the compatibility and takes the softmax.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "../../common/workspace.h"
#include "../permutohedral.h"
#include "../permutohedral_math.h"
#include "lattice_loops.h"
#include "permutohedral_kernel.h"
#include "scratch_array.h"

namespace deeplabv2_ext::densecrf {
namespace {

// position[p] of every point in the loop's order: sorted (stably) by the smallest vertex that
// point p touches in `lattice` (a counting sort over vertices).
cpu::ScratchArray<int32_t> point_positions(const LatticeView& lattice, int64_t points,
                                           const at::Tensor& point_groups) {
  const int entries = lattice.D + 1;
  const int32_t* index = lattice.vertex_index;
  cpu::ScratchArray<int32_t> first(static_cast<size_t>(points));
  std::vector<int64_t> bucket(static_cast<size_t>(lattice.M) + 1, 0);
  for (int64_t p = 0; p < points; ++p) {
    int32_t smallest = index[p * entries];
    for (int r = 1; r < entries; ++r) smallest = std::min(smallest, index[p * entries + r]);
    first[p] = smallest;
    ++bucket[smallest + 1];
  }
  for (size_t i = 1; i < bucket.size(); ++i) bucket[i] += bucket[i - 1];
  cpu::ScratchArray<int32_t> position(static_cast<size_t>(points));
  for (int64_t p = 0; p < points; ++p) position[p] = static_cast<int32_t>(bucket[first[p]]++);
  if (!point_groups.defined()) return position;
  // Stable counting sort of that order by group: (group, smallest vertex) lexicographically.
  const int32_t* group = point_groups.data_ptr<int32_t>();
  cpu::ScratchArray<int32_t> point_at(static_cast<size_t>(points));
  for (int64_t p = 0; p < points; ++p) point_at[position[p]] = static_cast<int32_t>(p);
  int32_t groups = 0;
  for (int64_t p = 0; p < points; ++p) groups = std::max(groups, group[p] + 1);
  std::vector<int64_t> group_start(static_cast<size_t>(groups) + 1, 0);
  for (int64_t p = 0; p < points; ++p) ++group_start[group[p] + 1];
  for (size_t g = 1; g < group_start.size(); ++g) group_start[g] += group_start[g - 1];
  for (int64_t i = 0; i < points; ++i) {
    const int32_t p = point_at[i];
    position[p] = static_cast<int32_t>(group_start[group[p]]++);
  }
  return position;
}

// The splat and slice plans of one kernel in the loop's point order, and its blur buffers.
struct KernelPlan {
  cpu::ScratchArray<int32_t> splat_points, slice_vertices;
  cpu::ScratchArray<float> splat_weights, slice_weights, buffer_a, buffer_b;
};

KernelPlan kernel_plan(const LatticeView& lattice, const MeanFieldScales& scales,
                       const cpu::ScratchArray<int32_t>& position, int64_t points, int lanes) {
  const int entries = lattice.D + 1;
  const int64_t total = points * entries;
  const int32_t* index = lattice.vertex_index;
  const float* weight = lattice.vertex_weight;
  const int32_t* splat_entries = lattice.splat_entries;
  const auto rows = static_cast<size_t>((lattice.M + 1) * lanes);
  KernelPlan plan{cpu::ScratchArray<int32_t>(static_cast<size_t>(total)),
                  cpu::ScratchArray<int32_t>(static_cast<size_t>(total)),
                  cpu::ScratchArray<float>(static_cast<size_t>(total)),
                  cpu::ScratchArray<float>(static_cast<size_t>(total)),
                  cpu::ScratchArray<float>(rows), cpu::ScratchArray<float>(rows)};
  // Row 0 is the zero row of absent blur neighbours; the loops write every other row first.
  std::fill_n(plan.buffer_a.data(), lanes, 0.0f);
  std::fill_n(plan.buffer_b.data(), lanes, 0.0f);
  // (a splat scale of 1 would multiply by 1: no scale leaves the weights as they are)
  const float* splat_scale = scales.splat.defined() ? scales.splat.data_ptr<float>() : nullptr;
  const float* slice_scale = scales.slice.data_ptr<float>();
  const cpu::PointOfEntry point_of(static_cast<uint32_t>(entries));
  at::parallel_for(0, total, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int32_t e = splat_entries[k];
      const int64_t p = point_of(static_cast<uint32_t>(e));
      plan.splat_points[k] = position[p];
      plan.splat_weights[k] = splat_scale != nullptr ? weight[e] * splat_scale[p] : weight[e];
    }
  });
  at::parallel_for(0, points, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float scale = slice_scale[p];
      const int64_t to = static_cast<int64_t>(position[p]) * entries;
      for (int r = 0; r < entries; ++r) {
        plan.slice_vertices[to + r] = index[p * entries + r];
        plan.slice_weights[to + r] = weight[p * entries + r] * scale;
      }
    }
  });
  return plan;
}

// Calls block(n, first, count) in parallel for blocks of kCopyBlock consecutive points of one
// image: the unit of the copies between [N, L, P] tensors and the loop's rows, so that neither
// side is read with a large stride.
constexpr int64_t kCopyBlock = 64;

template <typename Block>
void for_each_point_block(int64_t N, int64_t P, const Block& block) {
  const int64_t blocks_per_image = ceil_div(P, kCopyBlock);
  at::parallel_for(0, N * blocks_per_image, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = (b % blocks_per_image) * kCopyBlock;
      block(b / blocks_per_image, first, std::min(kCopyBlock, P - first));
    }
  });
}

// Whether some value of x[0, count) is a NaN or an infinity (exponent bits all ones); an
// integer test, so that the loop vectorises.
bool has_non_finite(const float* x, int64_t count) {
  uint32_t found = 0;
  for (int64_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    found |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return found != 0;
}

// Copies unary [N, L, P] into the loop's rows [points, lanes] (row position[n * P + p], lanes
// beyond L zero). Returns false when unary has a NaN or an infinity (checked on the way).
bool unary_to_rows(const float* unary, int64_t N, int64_t P, int labels, int lanes,
                   const int32_t* position, float* rows) {
  std::atomic<bool> finite{true};
  for_each_point_block(N, P, [&](int64_t n, int64_t first, int64_t count) {
    float* row[kCopyBlock];
    for (int64_t i = 0; i < count; ++i) {
      row[i] = rows + static_cast<int64_t>(position[n * P + first + i]) * lanes;
      std::fill_n(row[i] + labels, lanes - labels, 0.0f);
    }
    bool block_finite = true;
    for (int l = 0; l < labels; ++l) {
      const float* src = unary + (n * labels + l) * P + first;
      for (int64_t i = 0; i < count; ++i) row[i][l] = src[i];
      block_finite &= !has_non_finite(src, count);
    }
    if (!block_finite) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

// The inverse of unary_to_rows for Q: rows [points, lanes] -> out [N, L, P].
void rows_to_output(const float* rows, int64_t N, int64_t P, int labels, int lanes,
                    const int32_t* position, float* out) {
  for_each_point_block(N, P, [&](int64_t n, int64_t first, int64_t count) {
    const float* row[kCopyBlock];
    for (int64_t i = 0; i < count; ++i) {
      row[i] = rows + static_cast<int64_t>(position[n * P + first + i]) * lanes;
    }
    for (int l = 0; l < labels; ++l) {
      float* dst = out + (n * labels + l) * P + first;
      for (int64_t i = 0; i < count; ++i) dst[i] = row[i][l];
    }
  });
}

// K(1) [N, P] float32 of a contiguous CPU lattice (the input of mean_field_scales).
at::Tensor filter_ones(const Lattice& lattice) {
  at::Tensor ones_filtered = at::empty({lattice.N(), lattice.P()}, lattice.vertex_weight.options());
  cpu::filter_ones(lattice.view(), ones_filtered.data_ptr<float>());
  return ones_filtered;
}

at::Tensor dense_crf_mean_field_cpu(const at::Tensor& unary, at::TensorList lattice_tensors,
                                    const at::Tensor& compatibility,
                                    const c10::optional<at::Tensor>& point_groups,
                                    int64_t iterations, c10::string_view normalization) {
  const std::vector<Lattice> checked = check_mean_field_args(
      unary, lattice_tensors, compatibility, point_groups, iterations, normalization);
  TORCH_CHECK_VALUE(unary.device().is_cpu(), "dense_crf_mean_field: the CPU kernel got unary on ",
                    unary.device());
  const int64_t N = unary.size(0), P = unary.size(2), points = N * P;
  const int labels = static_cast<int>(unary.size(1));
  at::Tensor out = at::empty({N, labels, P}, unary.options());
  if (points == 0) return out;
  const int lanes = cpu::mean_field_lanes(labels);
  const size_t num_kernels = checked.size();

  std::vector<Lattice> contiguous;  // owns the tensors the views point into
  std::vector<LatticeView> lattices;
  for (const Lattice& lattice : checked) {
    contiguous.push_back(lattice.contiguous());
    contiguous.back().check_ranges("dense_crf_mean_field");
    lattices.push_back(contiguous.back().view());
  }

  at::Tensor point_groups_in;
  if (point_groups.has_value() && point_groups->defined()) {
    point_groups_in = point_groups->contiguous();
  }
  // Loop order: by the largest lattice (identity when there is no kernel).
  cpu::ScratchArray<int32_t> position;
  if (num_kernels == 0) {
    position = cpu::ScratchArray<int32_t>(static_cast<size_t>(points));
    for (int64_t p = 0; p < points; ++p) position[p] = static_cast<int32_t>(p);
  } else {
    const auto largest = std::max_element(
        lattices.begin(), lattices.end(),
        [](const LatticeView& a, const LatticeView& b) { return a.M < b.M; });
    position = point_positions(*largest, points, point_groups_in);
  }

  const bool potts = compatibility.dim() == 1;
  const at::Tensor compat = compatibility.contiguous();
  std::vector<KernelPlan> plans;
  std::vector<cpu::MeanFieldKernel> kernels;
  for (size_t k = 0; k < num_kernels; ++k) {
    const LatticeView& lattice = lattices[k];
    const float potts_weight = potts ? compat.data_ptr<float>()[k] : 1.0f;
    const at::Tensor ones_filtered =
        normalization != "none" ? filter_ones(contiguous[k]) : at::Tensor();
    const MeanFieldScales scales =
        mean_field_scales(contiguous[k], ones_filtered, normalization, potts_weight);
    plans.push_back(kernel_plan(lattice, scales, position, points, lanes));
  }
  for (size_t k = 0; k < num_kernels; ++k) {
    KernelPlan& plan = plans[k];
    kernels.push_back({lattices[k], plan.splat_points.data(),
                       plan.splat_weights.data(), plan.slice_vertices.data(),
                       plan.slice_weights.data(),
                       potts ? nullptr : compat.data_ptr<float>() + k * labels * labels,
                       plan.buffer_a.data(), plan.buffer_b.data()});
  }

  const at::Tensor unary_in = unary.contiguous();
  cpu::ScratchArray<float> unary_rows(static_cast<size_t>(points * lanes));
  cpu::ScratchArray<float> q(static_cast<size_t>(points * lanes));
  TORCH_CHECK_VALUE(unary_to_rows(unary_in.data_ptr<float>(), N, P, labels, lanes,
                                  position.data(), unary_rows.data()),
                    "dense_crf_mean_field: unary contains NaN or Inf");
  cpu::mean_field({unary_rows.data(), q.data(), points, labels, lanes,
                   static_cast<int>(iterations), kernels.data(), static_cast<int>(num_kernels)});
  rows_to_output(q.data(), N, P, labels, lanes, position.data(), out.data_ptr<float>());
  return out;
}

}  // namespace

at::Tensor cpu_filter_ones(at::TensorList lattice_tensors) {
  constexpr const char* op = "cpu_filter_ones";
  const Lattice lattice = Lattice::one(lattice_tensors, op).contiguous();
  TORCH_CHECK_VALUE(lattice.vertex_index.device().is_cpu(), op,
                    ": the lattice must be on the CPU, got ", lattice.vertex_index.device());
  lattice.check_ranges(op);
  return filter_ones(lattice);
}

TORCH_LIBRARY_IMPL(deeplabv2_ext, CPU, m) {
  m.impl("dense_crf_mean_field", &dense_crf_mean_field_cpu);
}

}  // namespace deeplabv2_ext::densecrf
