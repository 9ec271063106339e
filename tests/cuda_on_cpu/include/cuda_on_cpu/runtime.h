// CUDA-on-CPU: the execution model the replacement CUDA headers of this folder build on.
//
// The real .cu sources of csrc/ are compiled by g++ as host C++ (with __CUDACC__ and
// __CUDA_ARCH__ = 900 defined, so the sm_90 code paths are the ones compiled) against the
// headers next to this one instead of the CUDA toolkit's. A kernel launch runs every block of
// the grid, one block at a time; the threads of a block are fibers on one OS thread, scheduled
// deterministically from a seed. Barriers, warp collectives, atomics and shared memory are the
// runtime's (src/runtime.cpp); what it checks is listed in tests/cuda_on_cpu/README.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------------------------
// Qualifiers and built-in vector types
// ---------------------------------------------------------------------------------------------
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __grid_constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct __attribute__((aligned(8))) int2 {
  int x, y;
};
struct __attribute__((aligned(16))) uint4 {
  unsigned x, y, z, w;
};
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

typedef struct CUstream_st* cudaStream_t;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorIllegalInstruction = 715,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
};
typedef cudaError_t cudaError;

enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetLastError();
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();
const char* cudaGetErrorString(cudaError_t error);

namespace cuda_on_cpu {

// ---------------------------------------------------------------------------------------------
// Launches
// ---------------------------------------------------------------------------------------------
// Runs body(ctx) once per thread of every block of the grid (see src/runtime.cpp); the threads
// may read the ctx_bytes at ctx (the launch's arguments). `kernel_id` is the kernel's address
// (the key of cudaFuncSetAttribute), `name` its instantiation's name.
cudaError_t launch(const void* kernel_id, const char* name, dim3 grid, dim3 block,
                   size_t dynamic_smem, cudaStream_t stream, void (*body)(void*), void* ctx,
                   size_t ctx_bytes);
cudaError_t set_max_dynamic_smem(const void* kernel_id, int bytes);

// The instantiation's name out of a __PRETTY_FUNCTION__ of launch_kernel<Kernel> (g++ spells
// it "... [with auto Kernel = NAME; Args = {...}]").
const char* kernel_name_from_signature(const char* pretty_function);

template <auto Kernel>
struct KernelName {
  static const char* get() {
    static const char* name = kernel_name_from_signature(__PRETTY_FUNCTION__);
    return name;
  }
};

// launch_kernel<Kernel>(grid, block, smem, stream, args...): every thread calls Kernel with its
// own copy of the arguments converted to the parameter types (as a launch does).
template <typename... Params>
struct KernelSignature;
template <typename... Params>
struct KernelSignature<void (*)(Params...)> {
  using Arguments = std::tuple<std::decay_t<Params>...>;
};

// A pointer argument of a launch must be null or point into (or just past) a device allocation.
bool check_pointer_argument(size_t index, const void* pointer, const char* kernel);

template <typename Tuple, size_t... I>
bool check_pointer_arguments(const Tuple& arguments, const char* kernel, std::index_sequence<I...>) {
  auto check = [&](size_t index, const auto& value) {
    using Value = std::decay_t<decltype(value)>;
    if constexpr (std::is_pointer_v<Value>) {
      return check_pointer_argument(index, reinterpret_cast<const void*>(value), kernel);
    } else {
      return true;
    }
  };
  return (check(I, std::get<I>(arguments)) && ...);
}

template <auto Kernel, typename... Args>
cudaError_t launch_kernel(dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream,
                          Args&&... args) {
  using Arguments = typename KernelSignature<decltype(Kernel)>::Arguments;
  Arguments arguments(std::forward<Args>(args)...);
  if (!check_pointer_arguments(arguments, KernelName<Kernel>::get(),
                               std::make_index_sequence<std::tuple_size_v<Arguments>>{})) {
    return cudaErrorIllegalAddress;
  }
  auto body = [](void* ctx) {
    Arguments copy = *static_cast<const Arguments*>(ctx);
    std::apply(Kernel, copy);
  };
  return launch(reinterpret_cast<const void*>(Kernel), KernelName<Kernel>::get(), grid, block,
                dynamic_smem, stream, body, &arguments, sizeof(arguments));
}

// ---------------------------------------------------------------------------------------------
// Inside a kernel
// ---------------------------------------------------------------------------------------------
// By value: the runtime's own memory is not the kernel's to read.
uint3 thread_index();
uint3 block_index();
dim3 block_dimensions();
dim3 grid_dimensions();

void sync_threads(const char* file, int line);
[[noreturn]] void trap(const char* file, int line);
// A point where the scheduler may switch to another thread of the block (seeded schedules).
void scheduling_point();
// A spin-wait step (__nanosleep): always lets the other threads run.
void spin_wait();

// Shared memory: every declaration site gets one exact-sized allocation per block, filled with
// 0xff bytes (NaN for every floating type) when the block first reaches it.
struct SharedSite {
  const char* name;
  const char* file;
  int line;
  size_t bytes;
  size_t alignment;
};
void* shared_variable(const SharedSite& site);

// Warp collectives: the calling lane must be in `mask`; every lane named in `mask` must arrive at
// a collective of the same kind with the same mask. The last lane to arrive runs complete(...)
// with every lane's `data` (index = lane; nullptr for lanes outside the mask) before any of them
// goes on.
using CollectiveFn = void (*)(void* const* lane_data, unsigned mask, const void* ctx);
void warp_collective(const char* kind, unsigned mask, void* data, CollectiveFn complete,
                     const void* ctx, const char* file, int line);
unsigned lane_id();
// The scrambled element-to-lane permutation of a wmma fragment kind with `elements` elements
// (element e is held by lane perm[e] / per_lane at slot perm[e] % per_lane).
const uint16_t* fragment_permutation(const char* fragment_kind, int elements);
// Changes whenever the permutations are re-drawn (a new seed).
unsigned permutation_generation();
// Fails the launch with a message (e.g. a misaligned wmma pointer).
[[noreturn]] void fail(const char* what, const char* file, int line);

// Atomics: a scheduling point, then the operation on `address` (naturally aligned 4- or 8-byte
// words), an atomic access for the race detector. `order` says whether it acquires and/or
// releases (CUDA's atomicAdd & co. are relaxed): a plain access of another thread is ordered
// before a plain access of this one only through a release it made and this one acquired.
enum class AtomicOp : int { kLoad, kStore, kExchange, kCompareExchange, kAddInt, kAddFloat, kAddDouble, kMaxInt, kMinInt, kOr, kAnd };
enum AtomicOrder : int { kRelaxed = 0, kAcquire = 1, kRelease = 2, kAcquireRelease = 3 };
uint64_t atomic_rmw(void* address, int bytes, AtomicOp op, uint64_t operand, uint64_t compare, int order);
// __ldg: the bytes must not be written during this launch (the non-coherent path), before or after.
void note_read_only_load(const void* address, size_t bytes);

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "4- or 8-byte atomics");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace cuda_on_cpu

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::cuda_on_cpu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
}

#define threadIdx (::cuda_on_cpu::thread_index())
#define blockIdx (::cuda_on_cpu::block_index())
#define blockDim (::cuda_on_cpu::block_dimensions())
#define gridDim (::cuda_on_cpu::grid_dimensions())
#define warpSize 32

#define __syncthreads() ::cuda_on_cpu::sync_threads(__FILE__, __LINE__)
#define __trap() ::cuda_on_cpu::trap(__FILE__, __LINE__)
inline void __nanosleep(unsigned) { ::cuda_on_cpu::spin_wait(); }

template <typename T>
inline T __ldg(const T* p) {
  ::cuda_on_cpu::note_read_only_load(p, sizeof(T));
  return *p;
}

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }

// Round-to-nearest arithmetic (compiled with -ffp-contract=off: never contracted into an FMA).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }

// ---------------------------------------------------------------------------------------------
// Atomics
// ---------------------------------------------------------------------------------------------
namespace cuda_on_cpu::detail {
template <typename T>
T atomic_add(T* address, T value) {
  AtomicOp op;
  if constexpr (std::is_same_v<T, float>) {
    op = AtomicOp::kAddFloat;
  } else if constexpr (std::is_same_v<T, double>) {
    op = AtomicOp::kAddDouble;
  } else {
    static_assert(std::is_integral_v<T>, "atomicAdd on an integer, float or double");
    op = AtomicOp::kAddInt;
  }
  return from_bits<T>(atomic_rmw(address, sizeof(T), op, to_bits(value), 0, kRelaxed));
}
}  // namespace cuda_on_cpu::detail

inline float atomicAdd(float* a, float v) { return ::cuda_on_cpu::detail::atomic_add(a, v); }
inline double atomicAdd(double* a, double v) { return ::cuda_on_cpu::detail::atomic_add(a, v); }
inline int atomicAdd(int* a, int v) { return ::cuda_on_cpu::detail::atomic_add(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return ::cuda_on_cpu::detail::atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return ::cuda_on_cpu::detail::atomic_add(a, v);
}
template <typename T>
inline T atomicExch(T* a, T v) {
  using namespace ::cuda_on_cpu;
  return from_bits<T>(atomic_rmw(a, sizeof(T), AtomicOp::kExchange, to_bits(v), 0, kRelaxed));
}
template <typename T>
inline T atomicCAS(T* a, T compare, T v) {
  using namespace ::cuda_on_cpu;
  return from_bits<T>(atomic_rmw(a, sizeof(T), AtomicOp::kCompareExchange, to_bits(v), to_bits(compare), kRelaxed));
}
inline int atomicMax(int* a, int v) {
  using namespace ::cuda_on_cpu;
  return from_bits<int>(atomic_rmw(a, 4, AtomicOp::kMaxInt, to_bits(v), 0, kRelaxed));
}
inline int atomicMin(int* a, int v) {
  using namespace ::cuda_on_cpu;
  return from_bits<int>(atomic_rmw(a, 4, AtomicOp::kMinInt, to_bits(v), 0, kRelaxed));
}

// ---------------------------------------------------------------------------------------------
// Warp intrinsics (*_sync): rendezvous of the lanes named in the mask
// ---------------------------------------------------------------------------------------------
namespace cuda_on_cpu::detail {
struct ShuffleLane {
  uint64_t value;
  int source;  // lane to read, or -1: keep the own value
  uint64_t result;
};
void shuffle_complete(void* const* lane_data, unsigned mask, const void* ctx);
struct VoteLane {
  bool predicate;
  unsigned result;
};
void ballot_complete(void* const* lane_data, unsigned mask, const void* ctx);

// Source lane of lane `lane` for the shuffle variants, or -1 (keep the own value): PTX's
// shfl.sync pseudo-code with the c operand CUDA passes ((32 - width) << 8 | 0 or 0x1f).
inline int shuffle_source(const char* kind, int lane, int arg, int width) {
  const int segmask = (32 - width) & 31;
  const int bval = arg & 31;
  const int clamp = kind[7] == 'u' ? 0 : 31;
  const int max_lane = (lane & segmask) | (clamp & ~segmask);
  const int min_lane = lane & segmask;
  int j;
  bool valid;
  switch (kind[7]) {  // "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"
    case 'u': j = lane - bval; valid = j >= max_lane; break;
    case 'd': j = lane + bval; valid = j <= max_lane; break;
    case 'x': j = lane ^ bval; valid = j <= max_lane; break;
    default: j = min_lane | (bval & ~segmask); valid = j <= max_lane; break;
  }
  return valid ? j : -1;
}

template <typename T>
T shuffle(const char* kind, unsigned mask, T value, int arg, int width, const char* file, int line) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a scalar");
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) fail("shuffle width must be a power of 2 <= 32", file, line);
  ShuffleLane me{0, shuffle_source(kind, static_cast<int>(lane_id()), arg, width), 0};
  std::memcpy(&me.value, &value, sizeof(T));
  warp_collective(kind, mask, &me, &shuffle_complete, nullptr, file, line);
  T out;
  std::memcpy(&out, &me.result, sizeof(T));
  return out;
}
}  // namespace cuda_on_cpu::detail

#define __shfl_sync(mask, v, lane, ...) \
  ::cuda_on_cpu::detail::shuffle("__shfl_sync", mask, v, lane, ::cuda_on_cpu::detail::width_or_32(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, delta, ...) \
  ::cuda_on_cpu::detail::shuffle("__shfl_up_sync", mask, v, delta, ::cuda_on_cpu::detail::width_or_32(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, delta, ...) \
  ::cuda_on_cpu::detail::shuffle("__shfl_down_sync", mask, v, delta, ::cuda_on_cpu::detail::width_or_32(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, lanemask, ...) \
  ::cuda_on_cpu::detail::shuffle("__shfl_xor_sync", mask, v, lanemask, ::cuda_on_cpu::detail::width_or_32(__VA_ARGS__), __FILE__, __LINE__)
#define __ballot_sync(mask, predicate) ::cuda_on_cpu::detail::ballot(mask, predicate, __FILE__, __LINE__)
#define __syncwarp(...) ::cuda_on_cpu::detail::sync_warp(::cuda_on_cpu::detail::mask_or_full(__VA_ARGS__), __FILE__, __LINE__)

namespace cuda_on_cpu::detail {
constexpr int width_or_32() { return 32; }
constexpr int width_or_32(int width) { return width; }
constexpr unsigned mask_or_full() { return 0xffffffffu; }
constexpr unsigned mask_or_full(unsigned mask) { return mask; }
inline unsigned ballot(unsigned mask, bool predicate, const char* file, int line) {
  VoteLane me{predicate, 0};
  warp_collective("__ballot_sync", mask, &me, &ballot_complete, nullptr, file, line);
  return me.result;
}
inline void sync_warp(unsigned mask, const char* file, int line) {
  warp_collective("__syncwarp", mask, nullptr, nullptr, nullptr, file, line);
}
}  // namespace cuda_on_cpu::detail
