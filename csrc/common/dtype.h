// The element types the device code of both ops handles, as plain C++ (no torch, no CUDA
// header): the glue maps at::ScalarType to DType, the launchers dispatch on it.
#pragma once

namespace deeplabv2_ext {

// The numbering is part of the CUDA-on-CPU driver's interface (tests/cuda_on_cpu/harness.py).
enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat64 = 3,
};

// Bytes of one element of `dtype`.
inline int element_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat32:
      return 4;
    case DType::kFloat64:
      return 8;
  }
  return 4;
}

}  // namespace deeplabv2_ext
