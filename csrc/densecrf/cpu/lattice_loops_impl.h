// Definitions of the loops declared in lattice_loops.h, in namespace
// deeplabv2_ext::densecrf::cpu::DLV2_LOOPS_ISA. Included once by each ISA translation unit
// after all of its #includes (and, for AVX2, after the target pragma), so every function here is
// compiled for that ISA. Uses only plain loops and memcpy (no std algorithms, whose shared
// inline instantiations would otherwise be compiled for one ISA and used by the other).
//
// Every value row is `lanes` values wide so that the inner loops are whole vectors; one random
// access to a vertex serves all its values, which is what bounds the time. Lattice buffers hold
// vertex i in row i + 1; row 0 is the zero row that stands for an absent blur neighbour.

namespace deeplabv2_ext::densecrf::cpu::DLV2_LOOPS_ISA {

// Largest row width of the fused mean-field loop (labels are padded up to a multiple of 8).
constexpr int kMaxLanes = 256;

// Rows of float are handled as vectors of 8 (GCC/Clang vector extensions: one AVX register in
// the AVX2 build, two SSE registers in the baseline build), so the code is vectorised whatever
// the compiler's loop vectoriser decides.
typedef float Vec8 __attribute__((vector_size(32)));
typedef int32_t Vec8i __attribute__((vector_size(32)));
constexpr int kMaxVecs = kMaxLanes / 8;

#define DLV2_INLINE inline __attribute__((always_inline))

DLV2_INLINE Vec8 load8(const float* p) {
  Vec8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
DLV2_INLINE void store8(float* p, Vec8 v) { std::memcpy(p, &v, sizeof v); }
DLV2_INLINE Vec8 splat8(float x) { return Vec8{} + x; }

// Rows are read in an order the hardware prefetcher cannot guess: the mean-field loops ask for
// the row they will need this many items ahead.
constexpr int kPrefetchDistance = 8;
// The mean-field splat's Q rows mostly come from DRAM (Q, in the loop's point order, is the
// largest array): it prefetches further ahead (benchmarks/NOTES.md, issue 19 section).
constexpr int kSplatPrefetchDistance = 32;

// Prefetch the cache lines of a row of `width` floats: one prefetch per 16 floats and one for
// the last float cover every line the row touches (a 24-float row at a 32-byte offset spans
// two lines); with a compile-time width the loop unrolls.
DLV2_INLINE void prefetch_row(const float* row, int64_t width) {
  for (int64_t offset = 0; offset < width; offset += 16) __builtin_prefetch(row + offset);
  __builtin_prefetch(row + width - 1);
}

template <typename T>
constexpr bool kIsFloat = false;
template <>
constexpr bool kIsFloat<float> = true;

// ---------------------------------------------------------------------------------------------
// The blur of every CPU path (the filter op, the normaliser's filter of ones, the mean-field
// loop): along all D+1 axes (0..D, or D..0 when reverse), per axis
//   blurred[i] = values[i] + (values[n1] + values[n2]) / 2,
// ping-ponging between the two buffers; returns the one holding the result. Rows are `width`
// values: kLanes when kLanes > 0, else the run-time `width` (float, a multiple of 8). With
// kPrefetch the neighbour rows kPrefetchDistance vertices ahead are prefetched (the mean-field
// loop's rows of up to 256 floats; the filter op's narrow rows do without).
template <int kLanes, bool kPrefetch, typename scalar_t>
scalar_t* blur(const LatticeView& lattice, scalar_t* values, scalar_t* blurred, int64_t width,
               bool reverse) {
  static_assert(kLanes > 0 || kIsFloat<scalar_t>, "run-time row widths are float rows");
  if (kLanes > 0) width = kLanes;
  const int64_t M = lattice.M;
  for (int step = 0; step <= lattice.D; ++step) {
    const int axis = reverse ? lattice.D - step : step;
    const int32_t* neighbors = lattice.blur_neighbors + static_cast<int64_t>(axis) * M * 2;
    at::parallel_for(0, M, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if constexpr (kPrefetch) {
          if (i + kPrefetchDistance < end) {
            const int64_t ahead = i + kPrefetchDistance;
            prefetch_row(values + (static_cast<int64_t>(neighbors[2 * ahead]) + 1) * width, width);
            prefetch_row(values + (static_cast<int64_t>(neighbors[2 * ahead + 1]) + 1) * width,
                         width);
          }
        }
        const scalar_t* old_value = values + (i + 1) * width;
        const scalar_t* n1 = values + (static_cast<int64_t>(neighbors[2 * i]) + 1) * width;
        const scalar_t* n2 = values + (static_cast<int64_t>(neighbors[2 * i + 1]) + 1) * width;
        scalar_t* new_value = blurred + (i + 1) * width;
        if constexpr (kIsFloat<scalar_t> && kLanes % 8 == 0) {
          for (int64_t l = 0; l < width; l += 8) {
            store8(new_value + l, load8(old_value + l) + 0.5f * (load8(n1 + l) + load8(n2 + l)));
          }
        } else {
          for (int l = 0; l < kLanes; ++l) {
            new_value[l] = old_value[l] + scalar_t(0.5) * (n1[l] + n2[l]);
          }
        }
      }
    });
    scalar_t* t = values;
    values = blurred;
    blurred = t;
  }
  return values;
}

// ---------------------------------------------------------------------------------------------
// The permutohedral filter op: values [points, V] in chunks of kLanes values.

// Slice of the blurred rows `result` into out[p, first + l], l < width, for every point p:
// sum_r (vertex_weight * alpha) * row(vertex_index), in the v2 code's order.
template <int kLanes, typename scalar_t>
void slice_rows(const LatticeView& lat, const scalar_t* result, scalar_t* out, int64_t V,
                int64_t first, int width) {
  const int d = lat.D;
  const scalar_t alpha = static_cast<scalar_t>(slice_alpha(d));
  at::parallel_for(0, lat.points(), 1024, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      scalar_t sum[kLanes] = {};
      for (int r = 0; r <= d; ++r) {
        const int64_t e = p * (d + 1) + r;
        const scalar_t w = static_cast<scalar_t>(lat.vertex_weight[e]) * alpha;
        const scalar_t* src = result + (static_cast<int64_t>(lat.vertex_index[e]) + 1) * kLanes;
        for (int l = 0; l < kLanes; ++l) sum[l] += w * src[l];
      }
      scalar_t* dst = out + p * V + first;
      for (int l = 0; l < width; ++l) dst[l] = sum[l];
    }
  });
}

template <int kLanes, typename scalar_t>
void filter_chunk(const LatticeView& lat, const scalar_t* in, scalar_t* out, int64_t V,
                  int64_t first, int width, bool reverse, scalar_t* values, scalar_t* blurred) {
  const PointOfEntry point_of(static_cast<uint32_t>(lat.D + 1));
  at::parallel_for(0, lat.M, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t sum[kLanes] = {};
      for (int32_t k = lat.splat_offsets[i]; k < lat.splat_offsets[i + 1]; ++k) {
        const auto e = static_cast<uint32_t>(lat.splat_entries[k]);
        const auto w = static_cast<scalar_t>(lat.vertex_weight[e]);
        const scalar_t* src = in + point_of(e) * V + first;
        if (width == kLanes) {
          for (int l = 0; l < kLanes; ++l) sum[l] += w * src[l];
        } else {
          for (int l = 0; l < width; ++l) sum[l] += w * src[l];
        }
      }
      scalar_t* row = values + (i + 1) * kLanes;
      for (int l = 0; l < kLanes; ++l) row[l] = sum[l];
    }
  });
  const scalar_t* result = blur<kLanes, false>(lat, values, blurred, kLanes, reverse);
  slice_rows<kLanes>(lat, result, out, V, first, width);
}

template <int kLanes, typename scalar_t>
void filter_in_chunks(const LatticeView& lat, const scalar_t* in, scalar_t* out, int64_t V,
                      bool reverse) {
  const auto rows = static_cast<size_t>((lat.M + 1) * kLanes);
  std::vector<scalar_t> values(rows, scalar_t(0));
  std::vector<scalar_t> blurred(rows, scalar_t(0));
  for (int64_t first = 0; first < V; first += kLanes) {
    const int width = static_cast<int>(V - first < kLanes ? V - first : kLanes);
    filter_chunk<kLanes>(lat, in, out, V, first, width, reverse, values.data(), blurred.data());
  }
}

template <typename scalar_t>
void filter_values(const LatticeView& lat, const scalar_t* in, scalar_t* out, int64_t V,
                   bool reverse) {
  if (V == 1) {
    filter_in_chunks<1>(lat, in, out, V, reverse);
  } else if (V <= 8) {
    filter_in_chunks<8>(lat, in, out, V, reverse);
  } else if (V <= 16) {
    filter_in_chunks<16>(lat, in, out, V, reverse);
  } else if (V <= 24) {
    filter_in_chunks<24>(lat, in, out, V, reverse);
  } else {
    filter_in_chunks<32>(lat, in, out, V, reverse);
  }
}

// K(1), the filter of the value 1 at every point (the input of the normalisers), into
// response [points]. The splat scatters each point's weights in point order, so every vertex
// adds its weights in increasing entry order like the filter op's gather, but reads the weights
// sequentially instead of through the splat plan; images run in parallel (their vertices are
// disjoint). Then the filter's blur and slice, one value per vertex.
void filter_ones_loop(const LatticeView& lat, float* response) {
  ScratchArray<float> values(static_cast<size_t>(lat.M + 1), 0.0f);
  ScratchArray<float> blurred(static_cast<size_t>(lat.M + 1));
  blurred[0] = 0.0f;  // the zero row; the blur writes the others
  const int64_t image_entries = lat.P * (lat.D + 1);
  at::parallel_for(0, lat.N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin * image_entries; e < end * image_entries; ++e) {
      values[lat.vertex_index[e] + 1] += lat.vertex_weight[e];
    }
  });
  const float* result = blur<1, false>(lat, values.data(), blurred.data(), 1, false);
  slice_rows<1>(lat, result, response, 1, 0, 1);
}

// ---------------------------------------------------------------------------------------------
// Fused mean-field inference.

// Number of 8-float vectors in a row: compile time for kLanes > 0.
template <int kLanes>
DLV2_INLINE int row_vecs(int lanes) {
  return kLanes > 0 ? kLanes / 8 : lanes / 8;
}
template <int kLanes>
constexpr int kRowVecs = kLanes > 0 ? kLanes / 8 : kMaxVecs;

// exp(x) for x <= 0: Cephes' expf polynomial after the reduction x = n ln2 + r, |r| <= ln2/2
// (relative error about 2e-7); inputs are clamped to [-87, 0] (exp(-87) ~ 1.6e-38; a padding
// lane's x can be positive, and must not overflow before it is multiplied by 0).
DLV2_INLINE Vec8 exp_nonpositive(Vec8 x) {
  const Vec8 lowest = splat8(-87.0f);
  x = x < lowest ? lowest : x;
  x = x > 0.0f ? Vec8{} : x;
  // Round to nearest with the 1.5 * 2^23 trick (exact for |x / ln2| < 2^22).
  const Vec8 magic = splat8(12582912.0f);
  const Vec8 k = (x * 1.44269504088896341f + magic) - magic;
  const Vec8 r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  Vec8 p = splat8(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const Vec8 poly = p * r * r + r + 1.0f;
  const Vec8i bits = (__builtin_convertvector(k, Vec8i) + 127) << 23;
  Vec8 scale;
  std::memcpy(&scale, &bits, sizeof scale);  // 2^k
  return poly * scale;
}

DLV2_INLINE Vec8 max8(Vec8 a, Vec8 b) { return a > b ? a : b; }

// The largest / the sum of the 8 lanes, broadcast to every lane (three butterfly steps).
DLV2_INLINE Vec8 all_lanes_max(Vec8 x) {
  x = max8(x, __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3));
  x = max8(x, __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5));
  return max8(x, __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6));
}
DLV2_INLINE Vec8 all_lanes_sum(Vec8 x) {
  x += __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3);
  x += __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5);
  return x + __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6);
}

// The lanes of a row: `mask` is 1 on the first `labels` lanes and 0 beyond, `padding` 0 on them
// and -FLT_MAX beyond (so that padding lanes never win the max).
struct RowLanes {
  Vec8 mask[kMaxVecs];
  Vec8 padding[kMaxVecs];
};

DLV2_INLINE void init_row_lanes(RowLanes& lanes, int labels, int vecs) {
  for (int l = 0; l < vecs * 8; ++l) {
    lanes.mask[l / 8][l % 8] = l < labels ? 1.0f : 0.0f;
    lanes.padding[l / 8][l % 8] = l < labels ? 0.0f : -3.0e38f;
  }
}

// q = softmax(energy) over the first `labels` lanes, zero beyond.
template <int kLanes>
DLV2_INLINE void softmax_row(Vec8 (&energy)[kRowVecs<kLanes>], const RowLanes& lanes, int vecs,
                             float* q) {
  Vec8 largest = energy[0] + lanes.padding[0];
  for (int v = 1; v < vecs; ++v) largest = max8(largest, energy[v] + lanes.padding[v]);
  largest = all_lanes_max(largest);
  Vec8 total{};
  for (int v = 0; v < vecs; ++v) {
    energy[v] = exp_nonpositive(energy[v] - largest) * lanes.mask[v];
    total += energy[v];
  }
  const Vec8 inv_sum = 1.0f / all_lanes_sum(total);
  for (int v = 0; v < vecs; ++v) store8(q + v * 8, energy[v] * inv_sum);
}

template <int kLanes>
void splat_q(const MeanFieldKernel& kernel, const float* q, int lanes) {
  const int vecs = row_vecs<kLanes>(lanes);
  const int64_t width = vecs * 8;
  float* rows = kernel.buffer_a;
  at::parallel_for(0, kernel.lattice.M, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Vec8 sum[kRowVecs<kLanes>];
      for (int v = 0; v < vecs; ++v) sum[v] = Vec8{};
      for (int32_t k = kernel.lattice.splat_offsets[i]; k < kernel.lattice.splat_offsets[i + 1]; ++k) {
        if (k + kSplatPrefetchDistance < kernel.lattice.splat_offsets[end]) {
          prefetch_row(
              q + static_cast<int64_t>(kernel.splat_points[k + kSplatPrefetchDistance]) * width,
              width);
        }
        const float w = kernel.splat_weights[k];
        const float* src = q + static_cast<int64_t>(kernel.splat_points[k]) * width;
        for (int v = 0; v < vecs; ++v) sum[v] += w * load8(src + v * 8);
      }
      float* row = rows + (i + 1) * width;
      for (int v = 0; v < vecs; ++v) store8(row + v * 8, sum[v]);
    }
  });
}

// energy of point p: unary plus every kernel's message (lanes beyond `labels` are garbage).
template <int kLanes>
DLV2_INLINE void point_energy(const MeanFieldArgs& args, const float* const* filtered, int64_t p,
                              Vec8 (&energy)[kRowVecs<kLanes>]) {
  const int vecs = row_vecs<kLanes>(args.lanes);
  const int64_t width = vecs * 8;
  const float* unary = args.unary + p * width;
  for (int v = 0; v < vecs; ++v) energy[v] = load8(unary + v * 8);
  for (int k = 0; k < args.num_kernels; ++k) {
    const MeanFieldKernel& kernel = args.kernels[k];
    const int entries = kernel.lattice.D + 1;
    const int32_t* vertices = kernel.slice_vertices + p * entries;
    const float* weights = kernel.slice_weights + p * entries;
    Vec8 message[kRowVecs<kLanes>];
    for (int v = 0; v < vecs; ++v) message[v] = Vec8{};
    for (int r = 0; r < entries; ++r) {
      const float w = weights[r];
      const float* src = filtered[k] + (static_cast<int64_t>(vertices[r]) + 1) * width;
      for (int v = 0; v < vecs; ++v) message[v] += w * load8(src + v * 8);
    }
    if (kernel.compatibility == nullptr) {  // Potts: the weight is folded into the slice weights
      for (int v = 0; v < vecs; ++v) energy[v] += message[v];
    } else {
      for (int l = 0; l < args.labels; ++l) {
        const float* c = kernel.compatibility + static_cast<int64_t>(l) * args.labels;
        float dot = 0.0f;
        for (int m = 0; m < args.labels; ++m) dot += c[m] * message[m / 8][m % 8];
        energy[l / 8][l % 8] -= dot;
      }
    }
  }
}

// Prefetch the vertex rows that point p's slices will read.
DLV2_INLINE void prefetch_slice(const MeanFieldArgs& args, const float* const* filtered,
                                int64_t p) {
  for (int k = 0; k < args.num_kernels; ++k) {
    const MeanFieldKernel& kernel = args.kernels[k];
    const int32_t* vertices = kernel.slice_vertices + p * (kernel.lattice.D + 1);
    for (int r = 0; r <= kernel.lattice.D; ++r) {
      prefetch_row(filtered[k] + (static_cast<int64_t>(vertices[r]) + 1) * args.lanes,
                   args.lanes);
    }
  }
}

template <int kLanes>
void mean_field_lanes_fixed(const MeanFieldArgs& args) {
  const int vecs = row_vecs<kLanes>(args.lanes);
  RowLanes lanes;
  init_row_lanes(lanes, args.labels, vecs);
  at::parallel_for(0, args.points, 256, [&](int64_t begin, int64_t end) {
    Vec8 energy[kRowVecs<kLanes>] = {};
    for (int64_t p = begin; p < end; ++p) {
      const float* unary = args.unary + p * args.lanes;
      for (int v = 0; v < vecs; ++v) energy[v] = load8(unary + v * 8);
      softmax_row<kLanes>(energy, lanes, vecs, args.q + p * args.lanes);
    }
  });
  std::vector<const float*> filtered(static_cast<size_t>(args.num_kernels));
  for (int it = 0; it < args.iterations; ++it) {
    for (int k = 0; k < args.num_kernels; ++k) {
      splat_q<kLanes>(args.kernels[k], args.q, args.lanes);
      const MeanFieldKernel& kernel = args.kernels[k];
      filtered[k] = blur<kLanes, true>(kernel.lattice, kernel.buffer_a, kernel.buffer_b,
                                       args.lanes, false);
    }
    at::parallel_for(0, args.points, 256, [&](int64_t begin, int64_t end) {
      Vec8 energy[kRowVecs<kLanes>] = {};
      for (int64_t p = begin; p < end; ++p) {
        if (p + kPrefetchDistance < end) prefetch_slice(args, filtered.data(), p + kPrefetchDistance);
        point_energy<kLanes>(args, filtered.data(), p, energy);
        softmax_row<kLanes>(energy, lanes, vecs, args.q + p * args.lanes);
      }
    });
  }
}

inline void mean_field_loop(const MeanFieldArgs& args) {
  switch (args.lanes) {
    case 8: return mean_field_lanes_fixed<8>(args);
    case 16: return mean_field_lanes_fixed<16>(args);
    case 24: return mean_field_lanes_fixed<24>(args);
    case 32: return mean_field_lanes_fixed<32>(args);
    default: return mean_field_lanes_fixed<0>(args);
  }
}

// The entry points of this ISA's build, called by lattice_loops_dispatch.cpp.
void filter_f32(const LatticeView& lattice, const float* in, float* out, int64_t V, bool reverse) {
  filter_values(lattice, in, out, V, reverse);
}
void filter_f64(const LatticeView& lattice, const double* in, double* out, int64_t V,
                bool reverse) {
  filter_values(lattice, in, out, V, reverse);
}
void mean_field(const MeanFieldArgs& args) { mean_field_loop(args); }
#if defined(DLV2_LOOPS_WITH_FILTER_ONES)
void filter_ones(const LatticeView& lattice, float* response) {
  filter_ones_loop(lattice, response);
}
#endif

}  // namespace deeplabv2_ext::densecrf::cpu::DLV2_LOOPS_ISA
