#pragma once

namespace deeplabv2_ext {

// True when the library was compiled with its CUDA kernels (DEEPLABV2_EXT_WITH_CUDA).
bool cuda_kernels_available();

}  // namespace deeplabv2_ext
