// Limits of the ASPP op shared by the CUDA kernels (aspp_kernel.cuh), the CUDA glue and the
// Python wrapper (exported as deeplabv2_ext._C.ASPP_MAX_RATES by python_module.cpp). Plain C++:
// no torch and no CUDA header, so the CPU-only build, nvcc and the CUDA-on-CPU layer all see it.
#pragma once

namespace deeplabv2_ext {
namespace aspp {

// Max number of branches (rates) of one call of the CUDA op: the kernels take the rates by
// value in their parameter structs. deeplabv2_ext.aspp() splits more rates into groups of at
// most this many (one op call each, outputs summed), on every device.
constexpr int kAsppMaxRates = 64;

}  // namespace aspp
}  // namespace deeplabv2_ext
