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
#include <type_traits>
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

// The splat lists: for every vertex the lattice entries (point * (D+1) + remainder) that touch
// it, in increasing entry order (a CSR over vertices; a counting sort of vertex_index).
std::pair<at::Tensor, at::Tensor> splat_lists(const at::Tensor& vertex_index, int64_t M) {
  const int64_t entries = vertex_index.numel();
  const int32_t* index = vertex_index.data_ptr<int32_t>();
  auto offsets = at::zeros({M + 1}, vertex_index.options());
  auto entry = at::empty({entries}, vertex_index.options());
  int32_t* begin = offsets.data_ptr<int32_t>();
  for (int64_t e = 0; e < entries; ++e) ++begin[index[e] + 1];
  for (int64_t i = 0; i < M; ++i) begin[i + 1] += begin[i];
  std::vector<int32_t> fill(begin, begin + M);
  int32_t* out = entry.data_ptr<int32_t>();
  for (int64_t e = 0; e < entries; ++e) out[fill[index[e]]++] = static_cast<int32_t>(e);
  return {offsets, entry};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> permutohedral_lattice_cpu(
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
  auto [splat_offsets, splat_entries] = splat_lists(vertex_index, M);
  return {vertex_index, vertex_weight, blur_neighbors, splat_offsets, splat_entries};
}

// Values are filtered in chunks of kLanes (a compile-time width of 8, 16, 24 or 32 >= the chunk's
// values) so that the inner loops vectorise; one random access to a vertex then serves every
// value of the chunk, which is what bounds the time (measured: one chunk costs about the same
// for 1 or 8 values).
// e / (D+1) for entries e < 2^31 by a multiply and a shift (Granlund & Montgomery: with
// l = ceil(log2 q), k = 31 + l and m = ceil(2^k / q), floor(e * m / 2^k) = floor(e / q)); the
// hardware division was half of the splat's time.
class PointOfEntry {
 public:
  explicit PointOfEntry(uint32_t divisor) {
    int log2_ceil = 0;
    while ((uint32_t{1} << log2_ceil) < divisor) ++log2_ceil;
    shift_ = 31 + log2_ceil;
    multiplier_ = ((uint64_t{1} << shift_) + divisor - 1) / divisor;
  }
  int64_t operator()(uint32_t e) const {
    return static_cast<int64_t>((static_cast<uint64_t>(e) * multiplier_) >> shift_);
  }

 private:
  uint64_t multiplier_;
  int shift_;
};

template <int kLanes, typename scalar_t>
void filter_chunk(const scalar_t* in, scalar_t* out, int64_t V, int64_t first, int width,
                  const int32_t* vertex_index, const float* vertex_weight,
                  const int32_t* blur_neighbors, const int32_t* splat_offsets,
                  const int32_t* splat_entries, int64_t points, int d, int64_t M, bool reverse,
                  scalar_t* values, scalar_t* blurred) {
  // Row i + 1 of the buffers is vertex i; row 0 stays zero and stands for an absent neighbour.
  const PointOfEntry point_of(d + 1);
  at::parallel_for(0, M, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t sum[kLanes] = {};
      for (int32_t k = splat_offsets[i]; k < splat_offsets[i + 1]; ++k) {
        const auto e = static_cast<uint32_t>(splat_entries[k]);
        const auto w = static_cast<scalar_t>(vertex_weight[e]);
        const scalar_t* src = in + point_of(e) * V + first;
        if (width == kLanes) {
          for (int l = 0; l < kLanes; ++l) sum[l] += w * src[l];
        } else {
          for (int l = 0; l < width; ++l) sum[l] += w * src[l];
        }
      }
      std::copy(sum, sum + kLanes, values + (i + 1) * kLanes);
    }
  });
  for (int step = 0; step <= d; ++step) {
    const int axis = reverse ? d - step : step;
    const int32_t* axis_neighbors = blur_neighbors + static_cast<int64_t>(axis) * M * 2;
    at::parallel_for(0, M, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* old_value = values + (i + 1) * kLanes;
        const scalar_t* n1 = values + (axis_neighbors[2 * i] + 1) * kLanes;
        const scalar_t* n2 = values + (axis_neighbors[2 * i + 1] + 1) * kLanes;
        scalar_t* new_value = blurred + (i + 1) * kLanes;
        for (int l = 0; l < kLanes; ++l) {
          new_value[l] = old_value[l] + scalar_t(0.5) * (n1[l] + n2[l]);
        }
      }
    });
    std::swap(values, blurred);
  }
  const scalar_t alpha = static_cast<scalar_t>(slice_alpha(d));
  at::parallel_for(0, points, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      scalar_t sum[kLanes] = {};
      for (int r = 0; r <= d; ++r) {
        const int64_t e = p * (d + 1) + r;
        const scalar_t w = static_cast<scalar_t>(vertex_weight[e]) * alpha;
        const scalar_t* src = values + (vertex_index[e] + 1) * kLanes;
        for (int l = 0; l < kLanes; ++l) sum[l] += w * src[l];
      }
      std::copy(sum, sum + width, out + p * V + first);
    }
  });
}

template <int kLanes, typename scalar_t>
void filter_in_chunks(const scalar_t* in, scalar_t* out, const int32_t* vertex_index,
                      const float* vertex_weight, const int32_t* blur_neighbors,
                      const int32_t* splat_offsets, const int32_t* splat_entries, int64_t points,
                      int64_t V, int d, int64_t M, bool reverse) {
  std::vector<scalar_t> values(static_cast<size_t>((M + 1) * kLanes), scalar_t(0));
  std::vector<scalar_t> blurred(values.size(), scalar_t(0));
  for (int64_t first = 0; first < V; first += kLanes) {
    const int width = static_cast<int>(std::min<int64_t>(kLanes, V - first));
    filter_chunk<kLanes>(in, out, V, first, width, vertex_index, vertex_weight, blur_neighbors,
                         splat_offsets, splat_entries, points, d, M, reverse, values.data(),
                         blurred.data());
  }
}

template <typename scalar_t>
void filter_points(const scalar_t* in, scalar_t* out, const int32_t* vertex_index,
                   const float* vertex_weight, const int32_t* blur_neighbors,
                   const int32_t* splat_offsets, const int32_t* splat_entries, int64_t points,
                   int64_t V, int d, int64_t M, bool reverse) {
  const auto run = [&](auto lanes) {
    filter_in_chunks<decltype(lanes)::value>(in, out, vertex_index, vertex_weight,
                                             blur_neighbors, splat_offsets, splat_entries,
                                             points, V, d, M, reverse);
  };
  if (V <= 8) {
    run(std::integral_constant<int, 8>{});
  } else if (V <= 16) {
    run(std::integral_constant<int, 16>{});
  } else if (V <= 24) {
    run(std::integral_constant<int, 24>{});
  } else {
    run(std::integral_constant<int, 32>{});
  }
}

at::Tensor permutohedral_filter_cpu(const at::Tensor& values, const at::Tensor& vertex_index,
                                    const at::Tensor& vertex_weight,
                                    const at::Tensor& blur_neighbors,
                                    const at::Tensor& splat_offsets,
                                    const at::Tensor& splat_entries, bool reverse) {
  check_filter_args(values, vertex_index, vertex_weight, blur_neighbors, splat_offsets,
                    splat_entries);
  TORCH_CHECK_VALUE(values.device().is_cpu(), "permutohedral_filter: the CPU kernel got values on ",
                    values.device());
  const int64_t N = values.size(0), P = values.size(1), V = values.size(2);
  const int d = static_cast<int>(vertex_index.size(2) - 1);
  const int64_t M = blur_neighbors.size(1);
  auto out = at::empty({N, P, V}, values.options());
  if (out.numel() == 0) return out;
  const auto index = vertex_index.contiguous();
  const auto neighbors = blur_neighbors.contiguous();
  const auto [index_min, index_max] = at::aminmax(index);
  TORCH_CHECK_VALUE(index_min.item<int32_t>() >= 0 && index_max.item<int32_t>() < M,
                    "permutohedral_filter: vertex_index is out of range [0, ", M,
                    "): pass the tensors returned by permutohedral_lattice");
  if (neighbors.numel() > 0) {
    const auto [neighbor_min, neighbor_max] = at::aminmax(neighbors);
    TORCH_CHECK_VALUE(neighbor_min.item<int32_t>() >= -1 && neighbor_max.item<int32_t>() < M,
                      "permutohedral_filter: blur_neighbors is out of range [-1, ", M,
                      "): pass the tensors returned by permutohedral_lattice");
  }
  // splat_offsets/entries are a permutation of the entries grouped by vertex (checked cheaply:
  // their range; a wrong but in-range plan gives wrong numbers, never an out-of-bounds access).
  const auto offsets = splat_offsets.contiguous();
  const auto entries = splat_entries.contiguous();
  TORCH_CHECK_VALUE(offsets[0].item<int32_t>() == 0 && offsets[M].item<int32_t>() == entries.numel() &&
                        (M == 0 || (offsets.diff() >= 0).all().item<bool>()) &&
                        (entries.numel() == 0 ||
                         (entries.min().item<int32_t>() >= 0 &&
                          entries.max().item<int32_t>() < index.numel())),
                    "permutohedral_filter: invalid splat lists: pass the tensors returned by "
                    "permutohedral_lattice");
  const auto in = values.contiguous();
  const auto weight = vertex_weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "permutohedral_filter_cpu", [&] {
    filter_points<scalar_t>(in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                            index.data_ptr<int32_t>(), weight.data_ptr<float>(),
                            neighbors.data_ptr<int32_t>(), offsets.data_ptr<int32_t>(),
                            entries.data_ptr<int32_t>(), N * P, V, d, M, reverse);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(deeplabv2_ext, CPU, m) {
  m.impl("permutohedral_lattice", &permutohedral_lattice_cpu);
  m.impl("permutohedral_filter", &permutohedral_filter_cpu);
}

}  // namespace deeplabv2_ext::densecrf
