// The deeplabv2_ext operator library. Each op adds its schema with TORCH_LIBRARY_FRAGMENT in
// csrc/<op>/<op>.cpp and its kernels with TORCH_LIBRARY_IMPL in csrc/<op>/{cpu,cuda}/.
#include "deeplabv2_ext.h"

#include <torch/library.h>

namespace deeplabv2_ext {

bool cuda_kernels_available() {
#ifdef DEEPLABV2_EXT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(deeplabv2_ext, m) {
  m.def("cuda_kernels_available() -> bool", &cuda_kernels_available);
}

}  // namespace deeplabv2_ext
