// CUDA-on-CPU __nv_bfloat16: the upper 16 bits of a float32, rounded to nearest even as on the
// device (explicit intrinsics only, like cuda_fp16.h here).
#pragma once
#include "cuda_fp16.h"

struct __attribute__((aligned(2))) __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  return ::cuda_on_cpu::detail::bits_float(static_cast<uint32_t>(h.bits) << 16);
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = ::cuda_on_cpu::detail::float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>(rounded >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
