// Permutohedral-lattice math shared by the CPU and CUDA implementations (Adams et al. 2010), in
// the exact arithmetic of Krähenbühl's v2 code that pydensecrf wraps (permutohedral.cpp, SSE
// path): float32 elevation with the same scale factors, round-half-to-even to the nearest
// 0-coloured point, rank by pairwise comparison, the same barycentric weights and the canonical
// simplex. Torch-free and __host__ __device__, so g++ and nvcc compile the same code.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/host_device.h"

namespace deeplabv2_ext::densecrf {

// Round-to-nearest products / sums / differences that nvcc never contracts into an FMA, so that
// the CUDA build embeds every point bit for bit like the CPU build and the CUDA filter keeps the
// v2 code's rounding (plain operators on the host: the x86-64 baseline the CPU files are compiled
// for has no FMA to contract into).
DLV2_HOST_DEVICE float rn_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
DLV2_HOST_DEVICE double rn_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
DLV2_HOST_DEVICE float rn_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
DLV2_HOST_DEVICE double rn_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
DLV2_HOST_DEVICE float rn_sub(float a, float b) { return rn_add(a, -b); }

// Largest feature dimension d supported (keys have d int32 coordinates, d + 1 vertices/point).
constexpr int kMaxLatticeDim = 16;

// The slice constant of the v2 code: 1 / (1 + 2^-d).
DLV2_HOST_DEVICE float slice_alpha(int d) { return 1.0f / (1.0f + powf(2.0f, -static_cast<float>(d))); }

// Diagonal of the elevation matrix times the expected standard deviation, per feature i < d:
// float(1 / sqrt((i + 2)(i + 1)) * sqrt(2/3) * (d + 1)), computed in double as the v2 code does.
DLV2_HOST_DEVICE float elevation_scale(int i, int d) {
  const double inv_std_dev = static_cast<float>(sqrt(2.0 / 3.0) * (d + 1));
  return static_cast<float>(1.0 / sqrt(static_cast<double>((i + 2) * (i + 1))) * inv_std_dev);
}

// Coordinate k of the canonical simplex's vertex `remainder` (rank k), d + 1 coordinates.
DLV2_HOST_DEVICE int canonical_coordinate(int remainder, int rank, int d) {
  return rank <= d - remainder ? remainder : remainder - (d + 1);
}

// Embeds one point: features f[0..d) (read with stride f_stride) -> for every remainder
// r in [0, d]: the lattice key (d int32 coordinates; the (d+1)-th is implied by sum = 0) in
// keys[r * d + i], and the barycentric weight in weights[r]. `scale` holds elevation_scale(i, d).
DLV2_HOST_DEVICE void embed_point(const float* f, int64_t f_stride, int d, const float* scale,
                                  int32_t* keys, float* weights) {
  float elevated[kMaxLatticeDim + 1];
  float rem0[kMaxLatticeDim + 1];
  int rank[kMaxLatticeDim + 1];
  float barycentric[kMaxLatticeDim + 2];

  // Elevate: y = E p (p.5 of Adams et al.), accumulated from the last feature down.
  float sm = 0.0f;
  for (int j = d; j > 0; --j) {
    const float cf = rn_mul(f[(j - 1) * f_stride], scale[j - 1]);
    elevated[j] = rn_sub(sm, rn_mul(static_cast<float>(j), cf));
    sm = rn_add(sm, cf);
  }
  elevated[0] = sm;

  // Closest 0-coloured lattice point, rounding half to even like _mm_round_ps.
  const float down_factor = 1.0f / static_cast<float>(d + 1);
  const float up_factor = static_cast<float>(d + 1);
  float sum = 0.0f;
  for (int i = 0; i <= d; ++i) {
    const float v = rintf(rn_mul(down_factor, elevated[i]));
    rem0[i] = rn_mul(v, up_factor);
    sum = rn_add(sum, v);
  }

  // Rank of each coordinate's remainder; bring the point back onto the plane when sum != 0.
  for (int i = 0; i <= d; ++i) rank[i] = 0;
  for (int i = 0; i < d; ++i) {
    const float di = rn_sub(elevated[i], rem0[i]);
    for (int j = i + 1; j <= d; ++j) {
      if (di < rn_sub(elevated[j], rem0[j])) {
        ++rank[i];
      } else {
        ++rank[j];
      }
    }
  }
  const int sum_int = static_cast<int>(sum);
  for (int i = 0; i <= d; ++i) {
    rank[i] += sum_int;
    if (rank[i] < 0) {
      rank[i] += d + 1;
      rem0[i] = rn_add(rem0[i], up_factor);
    } else if (rank[i] >= d + 1) {
      rank[i] -= d + 1;
      rem0[i] = rn_sub(rem0[i], up_factor);
    }
  }

  // Barycentric coordinates (p.10 of Adams et al.).
  for (int i = 0; i <= d + 1; ++i) barycentric[i] = 0.0f;
  for (int i = 0; i <= d; ++i) {
    const float v = rn_mul(rn_sub(elevated[i], rem0[i]), down_factor);
    barycentric[d - rank[i]] = rn_add(barycentric[d - rank[i]], v);
    barycentric[d - rank[i] + 1] = rn_sub(barycentric[d - rank[i] + 1], v);
  }
  barycentric[0] = rn_add(barycentric[0], rn_add(1.0f, barycentric[d + 1]));

  for (int remainder = 0; remainder <= d; ++remainder) {
    for (int i = 0; i < d; ++i) {
      keys[remainder * d + i] =
          static_cast<int32_t>(rem0[i]) + canonical_coordinate(remainder, rank[i], d);
    }
    weights[remainder] = barycentric[remainder];
  }
}

// The two blur neighbours of lattice point `key` along axis j in [0, d]: n1 = key - 1 on every
// stored coordinate but key[j] + d on axis j; n2 = key + 1 but key[j] - d on axis j (axis d only
// shifts the stored coordinates: its own coordinate is implied).
DLV2_HOST_DEVICE void blur_neighbour_keys(const int32_t* key, int d, int axis, int32_t* n1,
                                          int32_t* n2) {
  for (int k = 0; k < d; ++k) {
    n1[k] = key[k] - 1;
    n2[k] = key[k] + 1;
  }
  if (axis < d) {
    n1[axis] = key[axis] + d;
    n2[axis] = key[axis] - d;
  }
}

// Hash of a d-coordinate key (the v2 code's multiplicative hash, 64-bit).
DLV2_HOST_DEVICE uint64_t hash_key(const int32_t* key, int d) {
  uint64_t h = 0;
  for (int k = 0; k < d; ++k) {
    h += static_cast<uint64_t>(static_cast<uint32_t>(key[k]));
    h *= 1664525ull;
  }
  return h;
}

}  // namespace deeplabv2_ext::densecrf
