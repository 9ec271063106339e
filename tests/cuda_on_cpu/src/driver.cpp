// The test driver: what the CUDA glue (csrc/*/cuda/*_cuda.cpp) does around each launcher, without
// torch: it fills the launcher's parameter struct from plain arguments, allocates the workspace
// the launcher asks for as an exact-sized device allocation (0xff-poisoned), calls the REAL
// launcher and frees the workspace. Every tensor argument is a device allocation made by the
// Python side (coc_device_alloc) holding exactly the elements its strides reach.
#include <cstdint>
#include <cstring>

#include "aspp/cuda/aspp_kernel.cuh"
#include "densecrf/cuda/permutohedral_kernel.cuh"

extern "C" {
void* coc_device_alloc(size_t bytes);
void* coc_device_alloc_filled(size_t bytes, int fill);
void coc_device_free(void* p);
}

namespace {
using namespace deeplabv2_ext;

// Integer outputs start as 0x80808080: never a valid index, unlike the -1 of 0xff bytes (a valid
// "no neighbour").
constexpr int kIntegerPoison = 0x80;
int32_t* integer_output(size_t count) {
  return static_cast<int32_t*>(coc_device_alloc_filled(sizeof(int32_t) * count, kIntegerPoison));
}

template <size_t D>
void copy_strides(int64_t (&dst)[D], const int64_t* src) {
  for (size_t i = 0; i < D; ++i) dst[i] = src[i];
}

// Runs launch(params) with a fresh workspace of workspace_bytes(params) bytes.
template <typename Params, typename Bytes, typename Launch>
int with_workspace(Params& p, Bytes workspace_bytes, Launch launch) {
  const size_t bytes = workspace_bytes(p);
  void* workspace = coc_device_alloc(bytes);
  p.workspace = workspace;
  const cudaError_t err = launch(p, static_cast<cudaStream_t>(nullptr));
  coc_device_free(workspace);
  return static_cast<int>(err);
}

// The AsppProblem part of every ASPP params struct.
void fill_common(aspp::AsppProblem& p, int64_t N, int C, int H, int W, int K, int R, const int* rates, int dtype, int allow_tf32) {
  p.N = N;
  p.C = C;
  p.H = H;
  p.W = W;
  p.K = K;
  p.R = R;
  for (int r = 0; r < R && r < aspp::kAsppMaxRates; ++r) p.rates[r] = rates[r];
  p.dtype = static_cast<DType>(dtype);
  p.allow_tf32 = allow_tf32 != 0;
}
}  // namespace

extern "C" {

__attribute__((visibility("default"))) int coc_aspp_forward(const void* input, const int64_t* in_stride,
                                                            const void* weight, const int64_t* w_stride,
                                                            const void* bias, const int64_t* b_stride, void* output,
                                                            const int64_t* out_stride, int64_t N, int C, int H, int W,
                                                            int K, int R, const int* rates, int dtype, int allow_tf32) {
  aspp::AsppFwdParams p;
  p.input = input;
  copy_strides(p.in_stride, in_stride);
  p.weight = weight;
  copy_strides(p.w_stride, w_stride);
  p.bias = bias;
  if (bias != nullptr) copy_strides(p.b_stride, b_stride);
  p.output = output;
  copy_strides(p.out_stride, out_stride);
  fill_common(p, N, C, H, W, K, R, rates, dtype, allow_tf32);
  return with_workspace(p, aspp::aspp_fwd_workspace_bytes, aspp::launch_aspp_forward);
}

__attribute__((visibility("default"))) int coc_aspp_dgrad(const void* grad_output, const int64_t* go_stride,
                                                          const void* weight, const int64_t* w_stride, void* grad_input,
                                                          const int64_t* gi_stride, int64_t N, int C, int H, int W,
                                                          int K, int R, const int* rates, int dtype, int allow_tf32) {
  aspp::AsppDgradParams p;
  p.grad_output = grad_output;
  copy_strides(p.go_stride, go_stride);
  p.weight = weight;
  copy_strides(p.w_stride, w_stride);
  p.grad_input = grad_input;
  copy_strides(p.gi_stride, gi_stride);
  fill_common(p, N, C, H, W, K, R, rates, dtype, allow_tf32);
  return with_workspace(p, aspp::aspp_dgrad_workspace_bytes, aspp::launch_aspp_dgrad);
}

__attribute__((visibility("default"))) int coc_aspp_wgrad(const void* grad_output, const int64_t* go_stride,
                                                          const void* input, const int64_t* in_stride,
                                                          void* grad_weight, const int64_t* gw_stride, void* grad_bias,
                                                          const int64_t* gb_stride, int64_t N, int C, int H, int W,
                                                          int K, int R, const int* rates, int dtype, int allow_tf32) {
  aspp::AsppWgradParams p;
  p.grad_output = grad_output;
  copy_strides(p.go_stride, go_stride);
  p.input = input;
  if (input != nullptr) copy_strides(p.in_stride, in_stride);
  p.grad_weight = grad_weight;
  if (grad_weight != nullptr) copy_strides(p.gw_stride, gw_stride);
  p.grad_bias = grad_bias;
  if (grad_bias != nullptr) copy_strides(p.gb_stride, gb_stride);
  fill_common(p, N, C, H, W, K, R, rates, dtype, allow_tf32);
  return with_workspace(p, aspp::aspp_wgrad_workspace_bytes, aspp::launch_aspp_wgrad);
}

// The lattice build as permutohedral_lattice_cuda does it: build, read info back, allocate the
// M-sized outputs (returned through the out-pointers, freed by the caller), finish.
// *overflow gets info[kLatticeInfoError]; *vertices gets M.
__attribute__((visibility("default"))) int coc_lattice(const float* features, int64_t N, int D, int64_t P,
                                                       int64_t hash_capacity, int32_t* vertex_index,
                                                       float* vertex_weight, int32_t** blur_neighbors,
                                                       int32_t** splat_offsets, int32_t** splat_entries,
                                                       int64_t* vertices, int* overflow) {
  densecrf::LatticeParams p;
  p.features = features;
  p.vertex_index = vertex_index;
  p.vertex_weight = vertex_weight;
  p.N = N;
  p.P = P;
  p.D = D;
  p.hash_capacity = hash_capacity;
  int32_t* info = integer_output(densecrf::kLatticeInfoSize);
  p.info = info;
  *blur_neighbors = *splat_offsets = *splat_entries = nullptr;
  void* workspace = coc_device_alloc(densecrf::lattice_workspace_bytes(p));
  p.workspace = workspace;
  cudaError_t err = densecrf::launch_lattice_build(p, nullptr);
  *overflow = info[densecrf::kLatticeInfoError];
  *vertices = info[densecrf::kLatticeInfoVertices];
  const int64_t entries = N * P * (D + 1);
  if (err == cudaSuccess && *overflow == 0 && *vertices >= 1 && *vertices <= entries) {
    p.M = *vertices;
    *blur_neighbors = integer_output(static_cast<size_t>((D + 1) * p.M * 2));
    *splat_offsets = integer_output(static_cast<size_t>(p.M + 1));
    *splat_entries = integer_output(static_cast<size_t>(entries));
    p.blur_neighbors = *blur_neighbors;
    p.splat_offsets = *splat_offsets;
    p.splat_entries = *splat_entries;
    void* finish_workspace = coc_device_alloc(densecrf::lattice_finish_workspace_bytes(p));
    p.finish_workspace = finish_workspace;
    err = densecrf::launch_lattice_finish(p, nullptr);
    coc_device_free(finish_workspace);
  }
  coc_device_free(workspace);
  coc_device_free(info);
  return static_cast<int>(err);
}

__attribute__((visibility("default"))) int coc_filter(const void* values, void* output, int dtype, int64_t N,
                                                      int64_t P, int64_t V, int D, int64_t M,
                                                      const int32_t* vertex_index, const float* vertex_weight,
                                                      const float* splat_weight, const float* slice_weight,
                                                      int accumulate, const int32_t* blur_neighbors,
                                                      const int32_t* splat_offsets, const int32_t* splat_entries,
                                                      int reverse) {
  densecrf::FilterParams p;
  p.values = values;
  p.output = output;
  p.dtype = static_cast<DType>(dtype);
  p.lattice.vertex_index = vertex_index;
  p.lattice.vertex_weight = vertex_weight;
  p.lattice.blur_neighbors = blur_neighbors;
  p.lattice.splat_offsets = splat_offsets;
  p.lattice.splat_entries = splat_entries;
  p.lattice.N = N;
  p.lattice.P = P;
  p.lattice.M = M;
  p.lattice.D = D;
  p.V = V;
  p.splat_weight = splat_weight;
  p.slice_weight = slice_weight;
  p.accumulate = accumulate != 0;
  p.reverse = reverse != 0;
  return with_workspace(p, densecrf::filter_workspace_bytes, densecrf::launch_filter);
}

}  // extern "C"
