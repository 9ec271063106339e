// DLV2_HOST_DEVICE marks inline functions that both nvcc (device and host code) and the host
// compiler (the CPU kernels, the CUDA-on-CPU checks) compile from one definition.
#pragma once

#if defined(__CUDACC__)
#define DLV2_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DLV2_HOST_DEVICE inline
#endif
