// Small kernels with planted bugs (and their correct twins) for the tests of the checker itself
// (tests/cuda_on_cpu/test_checker.py): a checker that cannot fail checks nothing. Compiled like
// the kernels of csrc/ (same headers, same instrumentation). coc_planted(name, out, n) launches
// one of them on a device allocation `out` of n floats.
#include <cuda/atomic>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstring>
#include <vector>

#include "common/device_portability.cuh"

namespace planted {
using deeplabv2_ext::launch_kernel;
constexpr int kThreads = 64;

// Each thread publishes a value in shared memory and reads its neighbour's.
template <bool kBarrier>
__global__ void neighbour_exchange(float* out) {
  DLV2_SHARED(float[kThreads], values);
  const int t = threadIdx.x;
  values[t] = static_cast<float>(t);
  if (kBarrier) __syncthreads();
  out[t] = values[(t + 1) % kThreads];
}

// Reads shared memory nobody wrote: the poison (NaN) shows in the output.
__global__ void uninitialised_shared(float* out) {
  DLV2_SHARED(float[kThreads], values);
  out[threadIdx.x] = values[threadIdx.x];
}

// Off-by-one: thread t writes out[t + 1] (out has n = blockDim.x elements).
__global__ void global_off_by_one(float* out) { out[threadIdx.x + 1] = 1.0f; }

// Off-by-one in shared memory: thread t writes values[t + 1].
__global__ void shared_off_by_one(float* out) {
  DLV2_SHARED(float[kThreads], values);
  values[threadIdx.x + 1] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = values[threadIdx.x];
}

// A barrier inside a branch only half of the block takes.
__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < kThreads / 2) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Threads that return early while the others wait at a barrier.
__global__ void early_return_barrier(float* out) {
  if (threadIdx.x >= kThreads - 8) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// A shuffle whose mask leaves out half of the lanes that call it.
__global__ void wrong_shuffle_mask(float* out) {
  const float v = __shfl_xor_sync(0x0000ffffu, static_cast<float>(threadIdx.x), 1);
  out[threadIdx.x] = v;
}

// A correct warp reduction (control).
__global__ void warp_sum(float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[threadIdx.x] = v;
}

// Two threads store to the same global element without atomics.
__global__ void global_write_conflict(float* out) { out[threadIdx.x / 2] = static_cast<float>(threadIdx.x); }

// atomicAdd of every thread into one element (control: no race).
__global__ void global_atomic_sum(float* out) { atomicAdd(out, 1.0f); }

// One warp: C = A * B for 16 x 16 fp16 tiles (A[i][k] = i + k, B = identity) in shared memory.
// kAssumeLayout writes the accumulator assuming lane l holds row l / 2, columns 8 (l % 2) + i.
template <bool kAssumeLayout>
__global__ void wmma_identity(float* out) {
  namespace wmma = nvcuda::wmma;
  DLV2_SHARED_ALIGNED(32, __half[256], a);
  DLV2_SHARED_ALIGNED(32, __half[256], b);
  for (int e = threadIdx.x; e < 256; e += 32) {
    a[e] = __float2half_rn(static_cast<float>(e / 16 + e % 16));
    b[e] = __float2half_rn(e / 16 == e % 16 ? 1.0f : 0.0f);
  }
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  if (kAssumeLayout) {
    const int lane = threadIdx.x;
    for (int i = 0; i < acc.num_elements; ++i) out[(lane / 2) * 16 + 8 * (lane % 2) + i] = acc.x[i];
  } else {
    wmma::store_matrix_sync(out, acc, 16, wmma::mem_row_major);
  }
}

// A wmma load from a pointer that is not 256-bit aligned.
__global__ void wmma_misaligned(float* out) {
  namespace wmma = nvcuda::wmma;
  DLV2_SHARED_ALIGNED(32, __half[272], a);
  for (int e = threadIdx.x; e < 272; e += 32) a[e] = __float2half_rn(1.0f);
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a + 8, 16);
  out[threadIdx.x] = __half2float(fa.x[0]);
}

// __trap() in one thread.
__global__ void trap_one(float* out) {
  if (threadIdx.x == 3) __trap();
  out[threadIdx.x] = 1.0f;
}

// Shared arrays over the 48 KiB static limit.
__global__ void too_much_shared(float* out) {
  DLV2_SHARED(float[8192], first);
  DLV2_SHARED(float[8192], second);
  first[threadIdx.x] = 1.0f;
  second[threadIdx.x] = 2.0f;
  out[threadIdx.x] = first[threadIdx.x] + second[threadIdx.x];
}

// Block 1 reads what block 0 writes in the same launch (blocks are not ordered).
__global__ void cross_block_read(float* out) {
  if (blockIdx.x == 0 && threadIdx.x == 0) out[0] = 1.0f;
  if (blockIdx.x == 1 && threadIdx.x == 0) out[1] = out[0];
}

// __ldg of an element another thread wrote before a barrier of this launch.
__global__ void ldg_after_write(float* out) {
  if (threadIdx.x == 0) out[0] = 2.0f;
  __syncthreads();
  if (threadIdx.x == 1) out[1] = __ldg(out);
}

// Thread 0 writes data, then publishes a flag; thread 32 waits for the flag and reads the data.
// kOrdered: release store / acquire load (correct); otherwise both relaxed (a race).
template <bool kOrdered>
__global__ void flag_handoff(float* out) {
  DLV2_SHARED(unsigned[1], flag);
  if (threadIdx.x == 0) *flag = 0;
  __syncthreads();
  cuda::atomic_ref<unsigned, cuda::thread_scope_device> published(*flag);
  if (threadIdx.x == 0) {
    out[1] = 7.0f;
    published.store(1u, kOrdered ? cuda::memory_order_release : cuda::memory_order_relaxed);
  } else if (threadIdx.x == 32) {
    while (published.load(kOrdered ? cuda::memory_order_acquire : cuda::memory_order_relaxed) == 0) __nanosleep(10);
    out[2] = out[1];
  }
}

// A 4-byte atomic at an address that is not 4-byte aligned.
__global__ void misaligned_atomic(float* out) {
  atomicAdd(reinterpret_cast<float*>(reinterpret_cast<char*>(out) + 2), 1.0f);
}

// A pointer to host memory inside a struct argument.
struct HostHolder {
  float* data;
};
__global__ void read_through_struct(HostHolder holder, float* out) { out[threadIdx.x] = holder.data[threadIdx.x]; }

// __shfl_xor_sync with width 16: lanes 16..31 read lane ^ 16, lanes 0..15 keep their value.
__global__ void shuffle_xor_width16(float* out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), 16, 16);
}

// Spins on a flag another thread sets, without __nanosleep (legal with independent scheduling).
__global__ void spin_without_sleep(float* out) {
  DLV2_SHARED(unsigned[1], flag);
  if (threadIdx.x == 0) *flag = 0;
  __syncthreads();
  cuda::atomic_ref<unsigned, cuda::thread_scope_device> ready(*flag);
  if (threadIdx.x == 1) {
    while (ready.load(cuda::memory_order_acquire) == 0) {
    }
    out[1] = 1.0f;
  } else if (threadIdx.x == 2) {
    ready.store(1u, cuda::memory_order_release);
  }
}

}  // namespace planted

// Launches the planted kernel `name` with one block of `threads` threads on a device allocation
// `out`: returns the launch's error code, or -1 for an unknown name.
extern "C" __attribute__((visibility("default"))) int coc_planted(const char* name, float* out, int threads) {
  using namespace planted;
  const dim3 block(static_cast<unsigned>(threads));
  cudaError_t err = cudaSuccess;
  auto is = [&](const char* candidate) { return std::strcmp(name, candidate) == 0; };
  if (is("missing_barrier")) launch_kernel<neighbour_exchange<false>>(1, block, 0, nullptr, out);
  else if (is("with_barrier")) launch_kernel<neighbour_exchange<true>>(1, block, 0, nullptr, out);
  else if (is("uninitialised_shared")) launch_kernel<uninitialised_shared>(1, block, 0, nullptr, out);
  else if (is("global_off_by_one")) launch_kernel<global_off_by_one>(1, block, 0, nullptr, out);
  else if (is("shared_off_by_one")) launch_kernel<shared_off_by_one>(1, block, 0, nullptr, out);
  else if (is("divergent_barrier")) launch_kernel<divergent_barrier>(1, block, 0, nullptr, out);
  else if (is("early_return_barrier")) launch_kernel<early_return_barrier>(1, block, 0, nullptr, out);
  else if (is("wrong_shuffle_mask")) launch_kernel<wrong_shuffle_mask>(1, block, 0, nullptr, out);
  else if (is("warp_sum")) launch_kernel<warp_sum>(1, block, 0, nullptr, out);
  else if (is("global_write_conflict")) launch_kernel<global_write_conflict>(1, block, 0, nullptr, out);
  else if (is("global_atomic_sum")) launch_kernel<global_atomic_sum>(1, block, 0, nullptr, out);
  else if (is("wmma_store")) launch_kernel<wmma_identity<false>>(1, block, 0, nullptr, out);
  else if (is("wmma_assume_layout")) launch_kernel<wmma_identity<true>>(1, block, 0, nullptr, out);
  else if (is("wmma_misaligned")) launch_kernel<wmma_misaligned>(1, block, 0, nullptr, out);
  else if (is("trap")) launch_kernel<trap_one>(1, block, 0, nullptr, out);
  else if (is("too_much_shared")) launch_kernel<too_much_shared>(1, block, 0, nullptr, out);
  else if (is("cross_block_read")) launch_kernel<cross_block_read>(2, block, 0, nullptr, out);
  else if (is("ldg_after_write")) launch_kernel<ldg_after_write>(1, block, 0, nullptr, out);
  else if (is("flag_release_acquire")) launch_kernel<flag_handoff<true>>(1, block, 0, nullptr, out);
  else if (is("flag_relaxed")) launch_kernel<flag_handoff<false>>(1, block, 0, nullptr, out);
  else if (is("misaligned_atomic")) launch_kernel<misaligned_atomic>(1, block, 0, nullptr, out);
  else if (is("shuffle_xor_width16")) launch_kernel<shuffle_xor_width16>(1, block, 0, nullptr, out);
  else if (is("spin_without_sleep")) launch_kernel<spin_without_sleep>(1, block, 0, nullptr, out);
  else if (is("host_pointer_in_struct")) {
    std::vector<float> host(static_cast<size_t>(threads), 1.0f);
    launch_kernel<read_through_struct>(1, block, 0, nullptr, HostHolder{host.data()}, out);
  } else if (is("host_pointer_argument")) {
    std::vector<float> host(static_cast<size_t>(threads), 1.0f);
    launch_kernel<warp_sum>(1, block, 0, nullptr, host.data());
  } else if (is("dynamic_smem_without_opt_in")) {
    launch_kernel<warp_sum>(1, block, 64 * 1024, nullptr, out);
  } else if (is("dynamic_smem_with_opt_in")) {
    cudaFuncSetAttribute(&warp_sum, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
    launch_kernel<warp_sum>(1, block, 64 * 1024, nullptr, out);
  } else if (is("block_too_large")) launch_kernel<warp_sum>(1, dim3(2048), 0, nullptr, out);
  else if (is("grid_y_too_large")) launch_kernel<warp_sum>(dim3(1, 70000), block, 0, nullptr, out);
  else return -1;
  err = cudaPeekAtLastError();
  return static_cast<int>(err);
}
