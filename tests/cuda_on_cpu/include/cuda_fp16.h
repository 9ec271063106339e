// CUDA-on-CPU __half: IEEE binary16 storage, conversions rounded as on the device (to nearest,
// ties to even). Only the explicit intrinsics exist (torch builds with __CUDA_NO_HALF_CONVERSIONS__
// and the kernels use the intrinsics), so an implicit float conversion does not compile here either.
#pragma once
#include <cstdint>
#include <cstring>

struct __attribute__((aligned(2))) __half {
  uint16_t bits;
};

namespace cuda_on_cpu::detail {
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace cuda_on_cpu::detail

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu;
  uint32_t mantissa = h.bits & 0x3ffu;
  uint32_t out;
  if (exponent == 0x1f) {
    out = sign | 0x7f800000u | (mantissa << 13);  // inf / NaN (payload kept)
  } else if (exponent != 0) {
    out = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    out = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    out = sign | ((112u - e) << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return ::cuda_on_cpu::detail::bits_float(out);
}

inline __half __float2half_rn(float f) {
  const uint32_t u = ::cuda_on_cpu::detail::float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  uint16_t out;
  if (abs > 0x7f800000u) {
    out = static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));  // quiet NaN
  } else if (abs >= 0x477ff000u) {
    out = static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf (>= 65520)
  } else if (abs >= 0x38800000u) {  // normal half
    const uint32_t mantissa_rounded = abs + 0x0fffu + ((abs >> 13) & 1u);
    out = static_cast<uint16_t>(sign | ((mantissa_rounded - 0x38000000u) >> 13));
  } else if (abs > 0x33000000u) {  // subnormal half (above half of the smallest subnormal)
    const uint32_t exponent = abs >> 23;
    const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exponent;  // 14 + (112 - exponent)
    const uint32_t kept = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    const uint32_t half_way = 1u << (shift - 1);
    uint32_t r = kept;
    if (rest > half_way || (rest == half_way && (kept & 1u))) ++r;
    out = static_cast<uint16_t>(sign | r);
  } else if (abs == 0x33000000u) {
    out = static_cast<uint16_t>(sign);  // exactly half of the smallest subnormal: ties to even (0)
  } else {
    out = static_cast<uint16_t>(sign);
  }
  return __half{out};
}
inline __half __float2half(float f) { return __float2half_rn(f); }
