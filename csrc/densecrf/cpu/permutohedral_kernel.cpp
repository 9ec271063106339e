// CPU kernels of the permutohedral-lattice ops.
//
// Lattice: per image, every point is embedded with the shared math of permutohedral_math.h and
// its D+1 enclosing vertices are inserted into an open-addressing hash table with int32 keys
// (grown like the v2 code's table, so memory follows the number of vertices, not P·(D+1)).
// Embedding runs in parallel over chunks of points; insertion is sequential per image, and
// images run in parallel. Each image's vertices are then numbered in lexicographic order of
// their keys (blur neighbours differ by one lattice step, so this keeps most of them close in
// memory, which speeds up the blur), and made global over the batch. Only the "+1" blur
// neighbours are searched; the "-1" neighbour is the inverse.
// When the keys pack into 64-bit codes (the usual case) the search is a merge of the sorted codes
// per axis (faster than hash lookups); otherwise it looks the keys up in the table.
// Filter: splat is done as a gather (a CSR of the points that touch each vertex, in point order,
// so every vertex sums its contributions in the same order as the v2 code) so that it runs in
// parallel without atomics; blur and slice run in parallel over vertices and points. All V
// values of a vertex are contiguous and processed together. The loops are in
// lattice_loops_impl.h (AVX2+FMA when the CPU has them).
#include "permutohedral_kernel.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "../permutohedral.h"
#include "../permutohedral_math.h"
#include "lattice_loops.h"

namespace deeplabv2_ext::densecrf {
namespace {

// Points embedded per parallel chunk before the sequential insertion (bounds scratch memory).
constexpr int64_t kEmbedChunk = int64_t{1} << 15;
// Hash-table lookups issued this many lookups ahead as prefetches.
constexpr int64_t kPrefetchDistance = 16;

// Open-addressing hash table (linear probing) of d-coordinate int32 keys -> dense ids in
// insertion order. A slot holds 32 bits of the key's hash next to the id, so a probe compares
// keys only when those bits match (almost only for the key itself); the slot is chosen by the
// high bits of the v2 hash after a 64-bit mix, which spreads the lattice's regular keys.
class KeyTable {
 public:
  KeyTable(int d, int64_t expected_size) : d_(d) {
    while ((int64_t{1} << log2_capacity_) < 2 * expected_size) ++log2_capacity_;
    slots_.assign(size_t{1} << log2_capacity_, kEmpty);
  }

  // The hash that find_or_insert and find take (computed apart so that callers can prefetch).
  uint64_t hash(const int32_t* key) const {
    uint64_t h = hash_key(key, d_);
    h ^= h >> 29;
    return h * 0x9e3779b97f4a7c15ull;
  }

  // Hint that the slot of hash `h` is needed soon (the lookups are cache misses).
  void prefetch(uint64_t h) const { __builtin_prefetch(&slots_[h >> (64 - log2_capacity_)]); }

  int32_t find_or_insert(const int32_t* key, uint64_t h) {
    if (2 * (size() + 1) > static_cast<int64_t>(slots_.size())) grow();
    const auto tag = static_cast<uint32_t>(h);
    for (size_t slot = h >> (64 - log2_capacity_);; slot = (slot + 1) & (slots_.size() - 1)) {
      const uint64_t entry = slots_[slot];
      if (entry == kEmpty) {
        const int64_t new_id = size();
        TORCH_CHECK(new_id < std::numeric_limits<int32_t>::max(),
                    "permutohedral_lattice: more than 2^31 lattice vertices");
        keys_.insert(keys_.end(), key, key + d_);
        slots_[slot] = (uint64_t{tag} << 32) | static_cast<uint32_t>(new_id);
        return static_cast<int32_t>(new_id);
      }
      if (static_cast<uint32_t>(entry >> 32) == tag && same_key(key, id_of(entry))) {
        return id_of(entry);
      }
    }
  }

  int32_t find(const int32_t* key, uint64_t h) const {
    const auto tag = static_cast<uint32_t>(h);
    for (size_t slot = h >> (64 - log2_capacity_);; slot = (slot + 1) & (slots_.size() - 1)) {
      const uint64_t entry = slots_[slot];
      if (entry == kEmpty) return -1;
      if (static_cast<uint32_t>(entry >> 32) == tag && same_key(key, id_of(entry))) {
        return id_of(entry);
      }
    }
  }

  int64_t size() const { return static_cast<int64_t>(keys_.size()) / d_; }
  int dim() const { return d_; }
  const int32_t* key(int32_t id) const { return keys_.data() + static_cast<int64_t>(id) * d_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};

  static int32_t id_of(uint64_t entry) { return static_cast<int32_t>(entry & 0xffffffffu); }

  bool same_key(const int32_t* key, int32_t id) const {
    const int32_t* stored = this->key(id);
    for (int k = 0; k < d_; ++k) {
      if (stored[k] != key[k]) return false;
    }
    return true;
  }

  void grow() {
    ++log2_capacity_;
    std::vector<uint64_t> slots(size_t{1} << log2_capacity_, kEmpty);
    for (const uint64_t entry : slots_) {
      if (entry == kEmpty) continue;
      size_t slot = hash(key(id_of(entry))) >> (64 - log2_capacity_);
      while (slots[slot] != kEmpty) slot = (slot + 1) & (slots.size() - 1);
      slots[slot] = entry;
    }
    slots_.swap(slots);
  }

  int d_;
  int log2_capacity_ = 6;
  std::vector<int32_t> keys_;
  std::vector<uint64_t> slots_;
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
  std::vector<uint64_t> hashes;
  for (int64_t chunk = 0; chunk < P; chunk += kEmbedChunk) {
    const int64_t chunk_end = std::min(P, chunk + kEmbedChunk);
    const int64_t entries = (chunk_end - chunk) * (d + 1);
    keys.resize(static_cast<size_t>(entries * d));
    hashes.resize(static_cast<size_t>(entries));
    at::parallel_for(chunk, chunk_end, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t first = (p - chunk) * (d + 1);
        embed_point(features + p, P, d, scale.data(), keys.data() + first * d,
                    vertex_weight + p * (d + 1));
        for (int r = 0; r <= d; ++r) hashes[first + r] = table.hash(keys.data() + (first + r) * d);
      }
    });
    // Sequential insertion, prefetching the slot of the entry kPrefetchDistance ahead.
    int32_t* chunk_index = vertex_index + chunk * (d + 1);
    for (int64_t e = 0; e < entries; ++e) {
      if (e + kPrefetchDistance < entries) table.prefetch(hashes[e + kPrefetchDistance]);
      chunk_index[e] = table.find_or_insert(keys.data() + e * d, hashes[e]);
    }
  }
  return table;
}

// The vertices of one image's table in lexicographic order of their keys. When the keys' ranges
// fit, each key is packed into one 64-bit code (coordinate 0 most significant, each coordinate
// minus its minimum in its own bit field) and the codes are radix-sorted; otherwise the ids are
// sorted by comparison and `codes` is empty.
struct SortedVertices {
  std::vector<int32_t> order;   // new id -> insertion id
  std::vector<uint64_t> codes;  // packed key of each new id, increasing (or empty)
  // Coordinate k's bit field: (code >> shift[k]) & mask[k] = key[k] - min_k, in [0, range[k]].
  std::array<int, kMaxLatticeDim> shift{};
  std::array<uint64_t, kMaxLatticeDim> mask{};
  std::array<int64_t, kMaxLatticeDim> range{};
};

SortedVertices lexicographic_order(const KeyTable& table) {
  const int64_t M = table.size();
  const int d = table.dim();
  SortedVertices sorted;
  std::vector<int32_t>& order = sorted.order;
  order.resize(static_cast<size_t>(M));
  std::iota(order.begin(), order.end(), 0);
  if (M == 0) return sorted;
  std::array<int32_t, kMaxLatticeDim> low{}, high{};
  for (int k = 0; k < d; ++k) low[k] = high[k] = table.key(0)[k];
  for (int32_t i = 1; i < M; ++i) {
    for (int k = 0; k < d; ++k) {
      low[k] = std::min(low[k], table.key(i)[k]);
      high[k] = std::max(high[k], table.key(i)[k]);
    }
  }
  int total_bits = 0;
  for (int k = d - 1; k >= 0; --k) {
    const auto range = static_cast<uint64_t>(static_cast<int64_t>(high[k]) - low[k]);
    int bits = 0;
    while (bits < 64 && (range >> bits) != 0) ++bits;
    sorted.shift[k] = total_bits;
    sorted.mask[k] = bits == 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1;
    sorted.range[k] = static_cast<int64_t>(range);
    total_bits += bits;
  }
  if (total_bits > 64) {
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return std::lexicographical_compare(table.key(a), table.key(a) + d, table.key(b),
                                          table.key(b) + d);
    });
    return sorted;
  }
  std::vector<uint64_t>& code = sorted.codes;
  code.resize(static_cast<size_t>(M));
  std::vector<uint64_t> code_tmp(static_cast<size_t>(M));
  for (int32_t i = 0; i < M; ++i) {
    uint64_t c = 0;
    for (int k = 0; k < d; ++k) {
      c |= static_cast<uint64_t>(static_cast<int64_t>(table.key(i)[k]) - low[k])
           << sorted.shift[k];
    }
    code[i] = c;
  }
  // LSD radix sort of (code, id) by 11-bit digits: stable, so equal codes keep id order.
  constexpr int kDigitBits = 11;
  std::vector<int32_t> order_tmp(static_cast<size_t>(M));
  for (int low_bit = 0; low_bit < total_bits; low_bit += kDigitBits) {
    std::vector<int64_t> count((size_t{1} << kDigitBits) + 1, 0);
    const auto digit = [&](uint64_t c) { return (c >> low_bit) & ((uint64_t{1} << kDigitBits) - 1); };
    for (int64_t i = 0; i < M; ++i) ++count[digit(code[i]) + 1];
    for (size_t b = 1; b < count.size(); ++b) count[b] += count[b - 1];
    for (int64_t i = 0; i < M; ++i) {
      const int64_t to = count[digit(code[i])]++;
      code_tmp[to] = code[i];
      order_tmp[to] = order[i];
    }
    code.swap(code_tmp);
    order.swap(order_tmp);
  }
  return sorted;
}

// DEEPLABV2_EXT_LATTICE_NEIGHBOURS=hash makes fill_blur_neighbors use the hash lookups even when
// the keys are packed (for the test that both searches find the same neighbours).
bool hash_neighbour_search_requested() {
  static const bool requested = [] {
    const char* value = std::getenv("DEEPLABV2_EXT_LATTICE_NEIGHBOURS");
    return value != nullptr && std::string_view(value) == "hash";
  }();
  return requested;
}

enum class NeighbourSearch { kMerge, kHash };

// The search fill_blur_neighbors runs: the merge needs the packed codes.
NeighbourSearch neighbour_search(const SortedVertices& sorted) {
  return !sorted.codes.empty() && !hash_neighbour_search_requested() ? NeighbourSearch::kMerge
                                                                      : NeighbourSearch::kHash;
}

// Fills the blur neighbours of one image's vertices (new ids i, global id offset + i) along
// every axis. Vertex i's "+1" neighbour j along an axis has i as its "-1" neighbour (the two
// moves are inverse), so one search fills both; distinct i give distinct j, so writes never
// collide. `neighbors` is [d+1, M_total, 2], prefilled with -1.
void fill_blur_neighbors(const KeyTable& table, const SortedVertices& sorted,
                         const std::vector<int32_t>& renumbered, int32_t offset, int64_t M_total,
                         int32_t* neighbors) {
  const int d = table.dim();
  const int64_t M = table.size();
  const auto link = [&](int64_t axis, int64_t i, int64_t j) {
    neighbors[(axis * M_total + offset + i) * 2 + 1] = static_cast<int32_t>(j + offset);
    neighbors[(axis * M_total + offset + j) * 2] = static_cast<int32_t>(i + offset);
  };
  if (neighbour_search(sorted) == NeighbourSearch::kMerge) {
    // Packed codes: the "+1" move adds a constant to the code of every vertex whose moved key
    // stays inside the coordinate ranges (no other vertex can have that neighbour), and a
    // translation keeps the lexicographic order, so each axis is one merge of the sorted codes
    // with themselves: no hash lookups, sequential reads.
    const uint64_t* code = sorted.codes.data();
    at::parallel_for(0, d + 1, 1, [&](int64_t axis_begin, int64_t axis_end) {
      for (int64_t axis = axis_begin; axis < axis_end; ++axis) {
        // The move's coordinate changes: blur_neighbour_keys applied to the zero key.
        const int32_t origin[kMaxLatticeDim] = {};
        int32_t minus[kMaxLatticeDim], delta[kMaxLatticeDim];
        blur_neighbour_keys(origin, d, static_cast<int>(axis), minus, delta);
        uint64_t step = 0;  // the code difference of the move, modulo 2^64
        for (int k = 0; k < d; ++k) {
          step += static_cast<uint64_t>(int64_t{delta[k]}) << sorted.shift[k];
        }
        int64_t j = 0;
        for (int64_t i = 0; i < M; ++i) {
          bool inside = true;
          for (int k = 0; k < d; ++k) {
            const auto moved =
                static_cast<int64_t>((code[i] >> sorted.shift[k]) & sorted.mask[k]) + delta[k];
            inside &= moved >= 0 && moved <= sorted.range[k];
          }
          if (!inside) continue;
          const uint64_t target = code[i] + step;
          while (j < M && code[j] < target) ++j;
          if (j < M && code[j] == target) link(axis, i, j);
        }
      }
    });
    return;
  }
  // Unpacked keys: hash lookups, the d+1 slots of a vertex prefetched together so that their
  // cache misses overlap.
  const std::vector<int32_t>& order = sorted.order;
  at::parallel_for(0, M, 4096, [&](int64_t begin, int64_t end) {
    int32_t n1[kMaxLatticeDim], n2[(kMaxLatticeDim + 1) * kMaxLatticeDim];
    uint64_t hashes[kMaxLatticeDim + 1];
    for (int64_t i = begin; i < end; ++i) {
      for (int axis = 0; axis <= d; ++axis) {
        blur_neighbour_keys(table.key(order[i]), d, axis, n1, n2 + axis * d);
        hashes[axis] = table.hash(n2 + axis * d);
        table.prefetch(hashes[axis]);
      }
      for (int axis = 0; axis <= d; ++axis) {
        const int32_t found = table.find(n2 + axis * d, hashes[axis]);
        if (found >= 0) link(axis, i, renumbered[found]);
      }
    }
  });
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
  auto blur_neighbors = at::full({d + 1, M, 2}, -1, f.options().dtype(at::kInt));
  int32_t* neighbors = blur_neighbors.data_ptr<int32_t>();

  for (int64_t n = 0; n < N; ++n) {
    const KeyTable& table = tables[n];
    const auto offset = static_cast<int32_t>(first_vertex[n]);
    const SortedVertices sorted = lexicographic_order(table);
    std::vector<int32_t> renumbered(sorted.order.size());  // insertion id -> new id
    for (size_t i = 0; i < sorted.order.size(); ++i) {
      renumbered[sorted.order[i]] = static_cast<int32_t>(i);
    }
    int32_t* image_index = index + n * P * (d + 1);
    at::parallel_for(0, P * (d + 1), 16384, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) image_index[e] = renumbered[image_index[e]] + offset;
    });
    fill_blur_neighbors(table, sorted, renumbered, offset, M, neighbors);
  }
  auto [splat_offsets, splat_entries] = splat_lists(vertex_index, M);
  return {vertex_index, vertex_weight, blur_neighbors, splat_offsets, splat_entries};
}

at::Tensor permutohedral_filter_cpu(const at::Tensor& values, at::TensorList lattice_tensors,
                                    bool reverse) {
  constexpr const char* op = "permutohedral_filter";
  const Lattice lattice = check_filter_args(values, lattice_tensors);
  TORCH_CHECK_VALUE(values.device().is_cpu(), op, ": the CPU kernel got values on ",
                    values.device());
  auto out = at::empty(values.sizes(), values.options());
  if (out.numel() == 0) return out;
  const Lattice contiguous = lattice.contiguous();
  contiguous.check_ranges(op);
  const auto in = values.contiguous();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "permutohedral_filter_cpu", [&] {
    cpu::filter(contiguous.view(), in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                values.size(2), reverse);
  });
  return out;
}

}  // namespace

std::vector<std::string> cpu_neighbour_searches(const at::Tensor& features) {
  check_lattice_args(features);
  TORCH_CHECK_VALUE(features.device().is_cpu(),
                    "cpu_lattice_neighbour_searches: features must be on the CPU, got ",
                    features.device());
  const auto f = features.contiguous();
  const int64_t N = f.size(0), P = f.size(2);
  const int d = static_cast<int>(f.size(1));
  std::vector<int32_t> vertex_index(static_cast<size_t>(P * (d + 1)));
  std::vector<float> vertex_weight(vertex_index.size());
  std::vector<std::string> searches;
  for (int64_t n = 0; n < N; ++n) {
    const KeyTable table = build_image_lattice(f.data_ptr<float>() + n * d * P, P, d,
                                               vertex_index.data(), vertex_weight.data());
    searches.emplace_back(neighbour_search(lexicographic_order(table)) == NeighbourSearch::kMerge
                              ? "merge"
                              : "hash");
  }
  return searches;
}

TORCH_LIBRARY_IMPL(deeplabv2_ext, CPU, m) {
  m.impl("permutohedral_lattice", &permutohedral_lattice_cpu);
  m.impl("permutohedral_filter", &permutohedral_filter_cpu);
}

}  // namespace deeplabv2_ext::densecrf
