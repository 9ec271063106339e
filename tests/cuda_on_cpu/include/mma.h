// CUDA-on-CPU nvcuda::wmma: fragments as warp collectives.
//
// A fragment holds num_elements = rows * cols / 32 elements per lane. Which element of the tile a
// lane holds in which slot is unspecified by CUDA; here it is a seeded, scrambled permutation per
// fragment kind (cuda_on_cpu::fragment_permutation), so a kernel that assumes a layout computes a
// wrong answer. load / store / fill / mma must be called by all 32 lanes (checked); the pointer
// of a load or store must be 256-bit aligned and ldm a multiple of 16 bytes, as CUDA requires.
// mma_sync multiplies in float32: products of fp16, bf16 and tf32 values are exact there; tf32
// inputs are truncated to tf32 first (the tensor core ignores the low 13 mantissa bits), so a
// kernel that forgets __float_to_tf32 sees truncation, not rounding.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_on_cpu/runtime.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// Round to tf32 (10 mantissa bits), to nearest with ties away from zero (cvt.rna.tf32.f32).
inline float __float_to_tf32(float f) {
  uint32_t u = ::cuda_on_cpu::detail::float_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u) return f;  // inf / NaN unchanged
  u = (u + 0x1000u) & 0xffffe000u;
  return ::cuda_on_cpu::detail::bits_float(u);
}

namespace detail {
template <typename T>
struct Storage {
  using type = T;
};
template <>
struct Storage<precision::tf32> {
  using type = float;
};

template <typename Use, int M, int N, int K>
struct Shape;
template <int M, int N, int K>
struct Shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct Shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct Shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
constexpr const char* element_name() {
  if constexpr (std::is_same_v<T, precision::tf32>) return "tf32";
  if constexpr (std::is_same_v<T, __half>) return "half";
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return "bfloat16";
  if constexpr (std::is_same_v<T, float>) return "float";
  return "other";
}
template <typename Layout>
constexpr const char* layout_name() {
  if constexpr (std::is_same_v<Layout, row_major>) return "row_major";
  if constexpr (std::is_same_v<Layout, col_major>) return "col_major";
  return "unspecified";
}
template <typename Use>
constexpr const char* use_name() {
  return std::is_same_v<Use, matrix_a> ? "matrix_a" : (std::is_same_v<Use, matrix_b> ? "matrix_b" : "accumulator");
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
 public:
  using storage_type = typename detail::Storage<T>::type;
  static constexpr int rows = detail::Shape<Use, M, N, K>::rows;
  static constexpr int cols = detail::Shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols / 32;
  static_assert(rows * cols % 32 == 0, "fragment tile of 32 * n elements");
  storage_type x[num_elements];

  // perm[e] = lane * num_elements + slot holding tile element e (row-major): the scrambled
  // permutation of this fragment kind (use, shape, element type, layout), copied into a static
  // table (the kernel may read its library's statics, not the runtime's heap).
  static const uint16_t* permutation() {
    static uint16_t table[rows * cols];
    static unsigned seen_generation = 0;
    const unsigned generation = ::cuda_on_cpu::permutation_generation();
    if (seen_generation != generation) {
      char kind[160];
      std::snprintf(kind, sizeof(kind), "%s %dx%d %s %s", detail::use_name<Use>(), rows, cols,
                    detail::element_name<T>(), detail::layout_name<Layout>());
      std::memcpy(table, ::cuda_on_cpu::fragment_permutation(kind, rows * cols), sizeof(table));
      seen_generation = generation;
    }
    return table;
  }
};

namespace detail {
inline void check_memory_operand(const void* p, unsigned ldm, size_t element_bytes, const char* what,
                                 const char* file, int line) {
  if ((reinterpret_cast<uintptr_t>(p) & 31u) != 0) ::cuda_on_cpu::fail(what, file, line);
  if ((ldm * element_bytes) % 16 != 0) ::cuda_on_cpu::fail(what, file, line);
}

// Element e of a rows x cols tile in memory: row-major (e / cols, e % cols) at p[r * ldm + c],
// col-major at p[c * ldm + r].
template <typename Frag, typename Element, typename Visit>
void for_own_elements(bool row_major_memory, unsigned ldm, Visit&& visit) {
  const uint16_t* perm = Frag::permutation();
  const int lane = static_cast<int>(::cuda_on_cpu::lane_id());
  for (int e = 0; e < Frag::rows * Frag::cols; ++e) {
    const int holder = perm[e] / Frag::num_elements;
    if (holder != lane) continue;
    const int slot = perm[e] % Frag::num_elements;
    const int r = e / Frag::cols, c = e % Frag::cols;
    const int64_t offset = row_major_memory ? static_cast<int64_t>(r) * ldm + c : static_cast<int64_t>(c) * ldm + r;
    visit(slot, offset);
  }
}

void warp_rendezvous(const char* kind, const char* file, int line);

// The memory operand of a load or store: the same for every lane (checked at the rendezvous).
struct MemoryOperand {
  const void* pointer;
  unsigned ldm;
  bool row_major_memory;
};
inline void check_same_operand(void* const* lane_data, unsigned, const void*) {
  const MemoryOperand* first = static_cast<const MemoryOperand*>(lane_data[0]);
  for (int l = 1; l < 32; ++l) {
    const MemoryOperand* other = static_cast<const MemoryOperand*>(lane_data[l]);
    if (other->pointer != first->pointer || other->ldm != first->ldm || other->row_major_memory != first->row_major_memory) {
      ::cuda_on_cpu::fail("wmma load/store: the lanes of the warp pass different pointers, ldm or layouts", __FILE__, __LINE__);
    }
  }
}
inline void memory_rendezvous(const char* kind, const void* p, unsigned ldm, bool row_major_memory, const char* file,
                              int line) {
  MemoryOperand me{p, ldm, row_major_memory};
  ::cuda_on_cpu::warp_collective(kind, 0xffffffffu, &me, &check_same_operand, nullptr, file, line);
}

struct MmaLane {
  const void* a;
  const void* b;
  const void* c;
  void* d;
};
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout, typename Ptr>
void load_matrix_sync_impl(fragment<Use, M, N, K, T, Layout>& f, const Ptr* p, unsigned ldm, bool row_major_memory,
                           const char* file, int line) {
  using Frag = fragment<Use, M, N, K, T, Layout>;
  static_assert(sizeof(Ptr) == sizeof(typename Frag::storage_type), "load_matrix_sync: pointer of the fragment's type");
  detail::check_memory_operand(p, ldm, sizeof(Ptr), "wmma::load_matrix_sync: the pointer must be 256-bit aligned and ldm a multiple of 16 bytes", file, line);
  detail::memory_rendezvous("wmma::load_matrix_sync", p, ldm, row_major_memory, file, line);
  detail::for_own_elements<Frag, Ptr>(row_major_memory, ldm, [&](int slot, int64_t offset) {
    std::memcpy(&f.x[slot], &p[offset], sizeof(Ptr));
  });
}

template <int M, int N, int K, typename T, typename Layout, typename Ptr>
void load_matrix_sync_(fragment<matrix_a, M, N, K, T, Layout>& f, const Ptr* p, unsigned ldm, const char* file, int line) {
  load_matrix_sync_impl(f, p, ldm, std::is_same_v<Layout, row_major>, file, line);
}
template <int M, int N, int K, typename T, typename Layout, typename Ptr>
void load_matrix_sync_(fragment<matrix_b, M, N, K, T, Layout>& f, const Ptr* p, unsigned ldm, const char* file, int line) {
  load_matrix_sync_impl(f, p, ldm, std::is_same_v<Layout, row_major>, file, line);
}
template <int M, int N, int K, typename T, typename Ptr>
void load_matrix_sync_(fragment<accumulator, M, N, K, T, void>& f, const Ptr* p, unsigned ldm, layout_t layout,
                       const char* file, int line) {
  load_matrix_sync_impl(f, p, ldm, layout == mem_row_major, file, line);
}

template <int M, int N, int K, typename T, typename Ptr>
void store_matrix_sync_(Ptr* p, const fragment<accumulator, M, N, K, T, void>& f, unsigned ldm, layout_t layout,
                        const char* file, int line) {
  using Frag = fragment<accumulator, M, N, K, T, void>;
  static_assert(sizeof(Ptr) == sizeof(typename Frag::storage_type), "store_matrix_sync: pointer of the fragment's type");
  detail::check_memory_operand(p, ldm, sizeof(Ptr), "wmma::store_matrix_sync: the pointer must be 256-bit aligned and ldm a multiple of 16 bytes", file, line);
  detail::memory_rendezvous("wmma::store_matrix_sync", p, ldm, layout == mem_row_major, file, line);
  detail::for_own_elements<Frag, Ptr>(layout == mem_row_major, ldm, [&](int slot, int64_t offset) {
    std::memcpy(&p[offset], &f.x[slot], sizeof(Ptr));
  });
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename V>
void fill_fragment_(fragment<Use, M, N, K, T, Layout>& f, const V& value, const char* file, int line) {
  detail::warp_rendezvous("wmma::fill_fragment", file, line);
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = static_cast<typename fragment<Use, M, N, K, T, Layout>::storage_type>(value);
}

namespace detail {
template <typename FA, typename FB, typename FC, typename FD, bool kTf32>
void mma_complete(void* const* lane_data, unsigned, const void*) {
  constexpr int Mr = FD::rows, Nc = FD::cols, Kd = FA::cols;
  static_assert(FA::rows == Mr && FB::rows == Kd && FB::cols == Nc, "mma shapes");
  const uint16_t* pa = FA::permutation();
  const uint16_t* pb = FB::permutation();
  const uint16_t* pc = FC::permutation();
  const uint16_t* pd = FD::permutation();
  auto element = [&](const auto* perm, auto member, int e, int per_lane) {
    const MmaLane* lane = static_cast<const MmaLane*>(lane_data[perm[e] / per_lane]);
    return member(lane, perm[e] % per_lane);
  };
  float result[Mr * Nc];
  for (int i = 0; i < Mr; ++i) {
    for (int j = 0; j < Nc; ++j) {
      float acc = element(pc, [](const MmaLane* l, int s) { return static_cast<float>(static_cast<const FC*>(l->c)->x[s]); }, i * Nc + j, FC::num_elements);
      for (int k = 0; k < Kd; ++k) {
        float a = element(pa, [](const MmaLane* l, int s) { return to_float(static_cast<const FA*>(l->a)->x[s]); }, i * Kd + k, FA::num_elements);
        float b = element(pb, [](const MmaLane* l, int s) { return to_float(static_cast<const FB*>(l->b)->x[s]); }, k * Nc + j, FB::num_elements);
        if constexpr (kTf32) {
          a = ::cuda_on_cpu::detail::bits_float(::cuda_on_cpu::detail::float_bits(a) & 0xffffe000u);
          b = ::cuda_on_cpu::detail::bits_float(::cuda_on_cpu::detail::float_bits(b) & 0xffffe000u);
        }
        acc += a * b;
      }
      result[i * Nc + j] = acc;
    }
  }
  // Written only after every lane's a, b and c were read: d may alias c.
  for (int e = 0; e < Mr * Nc; ++e) {
    MmaLane* lane = static_cast<MmaLane*>(lane_data[pd[e] / FD::num_elements]);
    static_cast<FD*>(lane->d)->x[pd[e] % FD::num_elements] = result[e];
  }
}
}  // namespace detail

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
void mma_sync_(fragment<accumulator, M, N, K, TC, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
               const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c,
               const char* file, int line) {
  static_assert(std::is_same_v<TA, TB>, "mma_sync: a and b of one element type");
  using FA = fragment<matrix_a, M, N, K, TA, LA>;
  using FB = fragment<matrix_b, M, N, K, TB, LB>;
  using FC = fragment<accumulator, M, N, K, TC, void>;
  detail::MmaLane me{&a, &b, &c, &d};
  ::cuda_on_cpu::warp_collective("wmma::mma_sync", 0xffffffffu, &me,
                                 &detail::mma_complete<FA, FB, FC, FC, std::is_same_v<TA, precision::tf32>>, nullptr,
                                 file, line);
}

}  // namespace wmma
}  // namespace nvcuda

#define load_matrix_sync(...) load_matrix_sync_(__VA_ARGS__, __FILE__, __LINE__)
#define store_matrix_sync(...) store_matrix_sync_(__VA_ARGS__, __FILE__, __LINE__)
#define fill_fragment(...) fill_fragment_(__VA_ARGS__, __FILE__, __LINE__)
#define mma_sync(...) mma_sync_(__VA_ARGS__, __FILE__, __LINE__)
