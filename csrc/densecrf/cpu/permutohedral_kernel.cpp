// CPU kernels of the permutohedral-lattice ops.
//
// Lattice: per image, every point is embedded with the shared math of permutohedral_math.h and
// its D+1 enclosing vertices are inserted into an open-addressing hash table with int32 keys
// (grown like the v2 code's table, so memory follows the number of vertices, not P·(D+1)).
// Embedding runs in parallel over chunks of points; insertion is sequential per image, and
// images run in parallel. Vertex ids are then made global over the batch.
// Filter: splat is done as a gather (a CSR of the points that touch each vertex, in point order,
// so every vertex sums its contributions in the same order as the v2 code) so that it runs in
// parallel without atomics; blur and slice run in parallel over vertices and points. All V
// values of a vertex are contiguous and processed together.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "../permutohedral.h"
#include "../permutohedral_math.h"

namespace deeplabv2_ext::densecrf {
namespace {

// Points embedded per parallel chunk before the sequential insertion (bounds scratch memory).
constexpr int64_t kEmbedChunk = int64_t{1} << 15;

// Open-addressing hash table of d-coordinate int32 keys -> dense ids in insertion order.
class KeyTable {
 public:
  KeyTable(int d, int64_t expected_size) : d_(d) {
    int64_t capacity = 64;
    while (capacity < 2 * expected_size) capacity *= 2;
    slots_.assign(static_cast<size_t>(capacity), -1);
  }

  int32_t find_or_insert(const int32_t* key) {
    if (2 * (size() + 1) > static_cast<int64_t>(slots_.size())) grow();
    size_t slot = first_slot(key);
    while (true) {
      const int32_t id = slots_[slot];
      if (id < 0) {
        const int32_t new_id = static_cast<int32_t>(size());
        TORCH_CHECK(new_id < std::numeric_limits<int32_t>::max(),
                    "permutohedral_lattice: more than 2^31 lattice vertices");
        keys_.insert(keys_.end(), key, key + d_);
        slots_[slot] = new_id;
        return new_id;
      }
      if (std::equal(key, key + d_, this->key(id))) return id;
      slot = (slot + 1) & (slots_.size() - 1);
    }
  }

  int32_t find(const int32_t* key) const {
    size_t slot = first_slot(key);
    while (true) {
      const int32_t id = slots_[slot];
      if (id < 0) return -1;
      if (std::equal(key, key + d_, this->key(id))) return id;
      slot = (slot + 1) & (slots_.size() - 1);
    }
  }

  int64_t size() const { return static_cast<int64_t>(keys_.size()) / d_; }
  const int32_t* key(int32_t id) const { return keys_.data() + static_cast<int64_t>(id) * d_; }

 private:
  size_t first_slot(const int32_t* key) const {
    return static_cast<size_t>(hash_key(key, d_)) & (slots_.size() - 1);
  }

  void grow() {
    std::vector<int32_t> slots(slots_.size() * 2, -1);
    slots_.swap(slots);
    for (int32_t id = 0; id < static_cast<int32_t>(size()); ++id) {
      size_t slot = first_slot(key(id));
      while (slots_[slot] >= 0) slot = (slot + 1) & (slots_.size() - 1);
      slots_[slot] = id;
    }
  }

  int d_;
  std::vector<int32_t> keys_;
  std::vector<int32_t> slots_;
};

std::array<float, kMaxLatticeDim> elevation_scales(int d) {
  std::array<float, kMaxLatticeDim> scale{};
  for (int i = 0; i < d; ++i) scale[i] = elevation_scale(i, d);
  return scale;
}

// Embeds image n's points and inserts their vertices; writes local vertex ids and weights.
KeyTable build_image_lattice(const float* features, int64_t P, int d, int32_t* vertex_index,
                             float* vertex_weight) {
  const auto scale = elevation_scales(d);
  KeyTable table(d, P);
  std::vector<int32_t> keys;
  for (int64_t chunk = 0; chunk < P; chunk += kEmbedChunk) {
    const int64_t chunk_end = std::min(P, chunk + kEmbedChunk);
    keys.resize(static_cast<size_t>((chunk_end - chunk) * (d + 1) * d));
    at::parallel_for(chunk, chunk_end, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        embed_point(features + p, P, d, scale.data(), keys.data() + (p - chunk) * (d + 1) * d,
                    vertex_weight + p * (d + 1));
      }
    });
    for (int64_t p = chunk; p < chunk_end; ++p) {
      for (int r = 0; r <= d; ++r) {
        vertex_index[p * (d + 1) + r] =
            table.find_or_insert(keys.data() + ((p - chunk) * (d + 1) + r) * d);
      }
    }
  }
  return table;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> permutohedral_lattice_cpu(
    const at::Tensor& features) {
  check_lattice_args(features);
  TORCH_CHECK_VALUE(features.device().is_cpu(),
                    "permutohedral_lattice: the CPU kernel got features on ", features.device());
  const auto f = features.contiguous();
  const int64_t N = f.size(0), P = f.size(2);
  const int d = static_cast<int>(f.size(1));
  auto vertex_index = at::empty({N, P, d + 1}, f.options().dtype(at::kInt));
  auto vertex_weight = at::empty({N, P, d + 1}, f.options());
  int32_t* index = vertex_index.data_ptr<int32_t>();
  float* weight = vertex_weight.data_ptr<float>();

  std::vector<KeyTable> tables(static_cast<size_t>(N), KeyTable(d, 0));
  // Images in parallel when there are several; a single image parallelises its embedding.
  const auto build = [&](int64_t n) {
    tables[n] = build_image_lattice(f.data_ptr<float>() + n * d * P, P, d,
                                    index + n * P * (d + 1), weight + n * P * (d + 1));
  };
  if (N > 1) {
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) build(n);
    });
  } else if (N == 1) {
    build(0);
  }

  std::vector<int64_t> first_vertex(static_cast<size_t>(N) + 1, 0);
  for (int64_t n = 0; n < N; ++n) first_vertex[n + 1] = first_vertex[n] + tables[n].size();
  const int64_t M = first_vertex[N];
  TORCH_CHECK(M < std::numeric_limits<int32_t>::max(),
              "permutohedral_lattice: the batch has more than 2^31 lattice vertices");
  auto blur_neighbors = at::empty({d + 1, M, 2}, f.options().dtype(at::kInt));
  int32_t* neighbors = blur_neighbors.data_ptr<int32_t>();

  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const auto offset = static_cast<int32_t>(first_vertex[n]);
      int32_t* image_index = index + n * P * (d + 1);
      for (int64_t e = 0; e < P * (d + 1); ++e) image_index[e] += offset;
    }
  });
  for (int64_t n = 0; n < N; ++n) {
    const KeyTable& table = tables[n];
    const auto offset = static_cast<int32_t>(first_vertex[n]);
    at::parallel_for(0, table.size(), 4096, [&](int64_t begin, int64_t end) {
      int32_t n1[kMaxLatticeDim], n2[kMaxLatticeDim];
      for (int64_t i = begin; i < end; ++i) {
        for (int axis = 0; axis <= d; ++axis) {
          blur_neighbour_keys(table.key(static_cast<int32_t>(i)), d, axis, n1, n2);
          const int32_t id1 = table.find(n1), id2 = table.find(n2);
          int32_t* out = neighbors + (axis * M + offset + i) * 2;
          out[0] = id1 < 0 ? -1 : id1 + offset;
          out[1] = id2 < 0 ? -1 : id2 + offset;
        }
      }
    });
  }
  return {vertex_index, vertex_weight, blur_neighbors};
}

// The points touching each vertex (CSR over vertices, entries in point order).
struct SplatLists {
  std::vector<int64_t> begin;   // [M + 1]
  std::vector<int64_t> entry;   // flattened (point * (d + 1) + remainder), point-major order
};

SplatLists splat_lists(const int32_t* vertex_index, int64_t entries, int64_t M) {
  SplatLists lists;
  lists.begin.assign(static_cast<size_t>(M) + 1, 0);
  for (int64_t e = 0; e < entries; ++e) ++lists.begin[vertex_index[e] + 1];
  for (int64_t i = 0; i < M; ++i) lists.begin[i + 1] += lists.begin[i];
  std::vector<int64_t> fill(lists.begin.begin(), lists.begin.end() - 1);
  lists.entry.resize(static_cast<size_t>(entries));
  for (int64_t e = 0; e < entries; ++e) lists.entry[fill[vertex_index[e]]++] = e;
  return lists;
}

template <typename scalar_t>
void filter_points(const scalar_t* in, scalar_t* out, const int32_t* vertex_index,
                   const float* vertex_weight, const int32_t* blur_neighbors, int64_t points,
                   int64_t V, int d, int64_t M, bool reverse) {
  // Lattice values with one leading zero row: row i + 1 is vertex i, row 0 stands for "absent".
  std::vector<scalar_t> values(static_cast<size_t>((M + 1) * V), scalar_t(0));
  std::vector<scalar_t> blurred(values.size(), scalar_t(0));
  const SplatLists lists = splat_lists(vertex_index, points * (d + 1), M);

  at::parallel_for(0, M, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t* dst = values.data() + (i + 1) * V;
      for (int64_t k = lists.begin[i]; k < lists.begin[i + 1]; ++k) {
        const int64_t e = lists.entry[k];
        const scalar_t w = static_cast<scalar_t>(vertex_weight[e]);
        const scalar_t* src = in + (e / (d + 1)) * V;
        for (int64_t v = 0; v < V; ++v) dst[v] += w * src[v];
      }
    }
  });
  for (int step = 0; step <= d; ++step) {
    const int axis = reverse ? d - step : step;
    const int32_t* axis_neighbors = blur_neighbors + static_cast<int64_t>(axis) * M * 2;
    at::parallel_for(0, M, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* old_value = values.data() + (i + 1) * V;
        const scalar_t* n1 = values.data() + (axis_neighbors[2 * i] + 1) * V;
        const scalar_t* n2 = values.data() + (axis_neighbors[2 * i + 1] + 1) * V;
        scalar_t* new_value = blurred.data() + (i + 1) * V;
        for (int64_t v = 0; v < V; ++v) {
          new_value[v] = old_value[v] + scalar_t(0.5) * (n1[v] + n2[v]);
        }
      }
    });
    values.swap(blurred);
  }
  const scalar_t alpha = static_cast<scalar_t>(slice_alpha(d));
  at::parallel_for(0, points, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      scalar_t* dst = out + p * V;
      std::fill(dst, dst + V, scalar_t(0));
      for (int r = 0; r <= d; ++r) {
        const int64_t e = p * (d + 1) + r;
        const scalar_t w = static_cast<scalar_t>(vertex_weight[e]) * alpha;
        const scalar_t* src = values.data() + (vertex_index[e] + 1) * V;
        for (int64_t v = 0; v < V; ++v) dst[v] += w * src[v];
      }
    }
  });
}

at::Tensor permutohedral_filter_cpu(const at::Tensor& values, const at::Tensor& vertex_index,
                                    const at::Tensor& vertex_weight,
                                    const at::Tensor& blur_neighbors, bool reverse) {
  check_filter_args(values, vertex_index, vertex_weight, blur_neighbors);
  TORCH_CHECK_VALUE(values.device().is_cpu(), "permutohedral_filter: the CPU kernel got values on ",
                    values.device());
  const int64_t N = values.size(0), V = values.size(1), P = values.size(2);
  const int d = static_cast<int>(vertex_index.size(2) - 1);
  const int64_t M = blur_neighbors.size(1);
  if (values.numel() == 0) return at::zeros_like(values, at::MemoryFormat::Contiguous);
  const auto index = vertex_index.contiguous();
  const auto neighbors = blur_neighbors.contiguous();
  TORCH_CHECK_VALUE(index.min().item<int32_t>() >= 0 && index.max().item<int32_t>() < M,
                    "permutohedral_filter: vertex_index is out of range [0, ", M,
                    "): pass the tensors returned by permutohedral_lattice");
  if (neighbors.numel() > 0) {
    TORCH_CHECK_VALUE(neighbors.min().item<int32_t>() >= -1 && neighbors.max().item<int32_t>() < M,
                      "permutohedral_filter: blur_neighbors is out of range [-1, ", M,
                      "): pass the tensors returned by permutohedral_lattice");
  }
  // Point-major [N * P, V] so that the V values of a point or vertex are contiguous.
  const auto points_in = values.transpose(1, 2).contiguous();
  auto points_out = at::empty_like(points_in);
  const auto weight = vertex_weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "permutohedral_filter_cpu", [&] {
    filter_points<scalar_t>(points_in.data_ptr<scalar_t>(), points_out.data_ptr<scalar_t>(),
                            index.data_ptr<int32_t>(), weight.data_ptr<float>(),
                            neighbors.data_ptr<int32_t>(), N * P, V, d, M, reverse);
  });
  return points_out.transpose(1, 2).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(deeplabv2_ext, CPU, m) {
  m.impl("permutohedral_lattice", &permutohedral_lattice_cpu);
  m.impl("permutohedral_filter", &permutohedral_filter_cpu);
}

}  // namespace deeplabv2_ext::densecrf
