// One spelling for the two CUDA constructs that host C++ cannot parse, so that the same .cu
// source is compiled by nvcc for the GPU and by g++ for the CUDA-on-CPU checks of
// tests/cuda_on_cpu/ (which define DLV2_CUDA_ON_CPU and provide their own <cuda_runtime.h>):
//
//   launch_kernel<kernel<A, B>>(grid, block, dynamic_smem, stream, args...)
//       instead of kernel<A, B><<<grid, block, dynamic_smem, stream>>>(args...);
//   DLV2_SHARED(int[3][BP], s_n);  DLV2_SHARED_ALIGNED(128, unsigned char[BYTES], smem);
//       instead of __shared__ int s_n[3][BP];  __shared__ __align__(128) unsigned char smem[BYTES];
//
// Torch-free, like all device code.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

namespace deeplabv2_ext {

// The declared type of a shared array (an alias, so that array types can be macro arguments).
template <typename T>
using shared_array_t = T;

template <auto Kernel, typename... Args>
inline void launch_kernel(dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream,
                          Args&&... args) {
#if defined(DLV2_CUDA_ON_CPU)
  ::cuda_on_cpu::launch_kernel<Kernel>(grid, block, dynamic_smem, stream,
                                       std::forward<Args>(args)...);
#else
  Kernel<<<grid, block, dynamic_smem, stream>>>(std::forward<Args>(args)...);
#endif
}

}  // namespace deeplabv2_ext

#if defined(DLV2_CUDA_ON_CPU)
// One exact-sized allocation per block and declaration site (cuda_on_cpu::shared_variable).
#define DLV2_SHARED_ALIGNED(alignment, type, name)                                            \
  static const ::cuda_on_cpu::SharedSite name##_shared_site{                                \
      #name, __FILE__, __LINE__, sizeof(::deeplabv2_ext::shared_array_t<type>), (alignment)}; \
  ::deeplabv2_ext::shared_array_t<type>& name =                                             \
      *static_cast<::deeplabv2_ext::shared_array_t<type>*>(                                 \
          ::cuda_on_cpu::shared_variable(name##_shared_site))
#else
#define DLV2_SHARED_ALIGNED(alignment, type, name) \
  __shared__ __align__(alignment) ::deeplabv2_ext::shared_array_t<type> name
#endif
#define DLV2_SHARED(type, name) \
  DLV2_SHARED_ALIGNED(alignof(::deeplabv2_ext::shared_array_t<type>), type, name)
