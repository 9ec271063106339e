// CPU kernel of the fused ASPP op: "tap-GEMM, then shift-accumulate".
//
// Every tap of every branch is a 1x1 convolution of the input followed by a spatial shift of its
// K-channel result by (dy, dx) = ((ky - 1) * rate, (kx - 1) * rate). Taps with the same offset
// (the centre tap of every branch, or repeated rates) are merged by summing their weights, and
// taps that fall entirely outside the map are dropped. With U unique offsets the forward is
//   Y = W_taps [U*K, C] @ X [C, pixels]           (one large GEMM, done by ATen's BLAS)
//   out[k, p] = bias_sum[k] + sum_u Y[u*K + k, p + offset_u]   (cheap, K channels only)
// so the big operand (C = 2048 channels) is read once and never shifted or duplicated (no
// im2col of the input), and the GEMM is wide (U*K = 33*21 = 693 rows for ASPP-L) instead of the
// skinny K = 21 of each separate convolution. The backward uses the same decomposition: the
// shifted K-channel grad_output G [U*K, pixels] (an "im2col" of the small side) gives
//   grad_input = W_taps^T @ G      and      grad_W_taps = G @ X^T.
// Pixels are processed in blocks of whole rows so that the U*K x pixels buffers stay bounded
// (the shift only moves data between rows, so row blocks are independent). GEMMs run
// multithreaded inside ATen; the shift/accumulate loops use at::parallel_for over rows/pixels
// that each thread owns exclusively (no atomics).
// float16/bfloat16 are computed in float32 and rounded once at the end.
#include "../aspp.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

namespace deeplabv2_ext::aspp {
namespace {

// Upper bound on the elements of one U*K x pixels block buffer (32 MiB in float32).
constexpr int64_t kMaxBlockElements = int64_t{8} << 20;

// Tap offsets shared by all branches and the grouping of taps into them.
struct TapGroups {
  std::vector<std::pair<int64_t, int64_t>> offsets;  // unique (dy, dx) inside the map
  std::vector<int64_t> group_of_tap;                 // per tap r*9 + ky*3 + kx; -1 = outside
};

TapGroups group_taps(at::IntArrayRef rates, int64_t height, int64_t width) {
  TapGroups groups;
  std::map<std::pair<int64_t, int64_t>, int64_t> index_of_offset;
  for (const int64_t rate : rates) {
    for (int64_t ky = 0; ky < 3; ++ky) {
      for (int64_t kx = 0; kx < 3; ++kx) {
        const std::pair<int64_t, int64_t> offset{(ky - 1) * rate, (kx - 1) * rate};
        if (std::abs(offset.first) >= height || std::abs(offset.second) >= width) {
          groups.group_of_tap.push_back(-1);
          continue;
        }
        auto [it, inserted] =
            index_of_offset.emplace(offset, static_cast<int64_t>(groups.offsets.size()));
        if (inserted) groups.offsets.push_back(offset);
        groups.group_of_tap.push_back(it->second);
      }
    }
  }
  return groups;
}

// [U*K, C] weight of the merged taps, in the compute dtype.
at::Tensor merged_tap_weight(const at::Tensor& weight, const TapGroups& groups,
                             at::ScalarType compute_dtype) {
  const int64_t K = weight.size(1), C = weight.size(2);
  const auto per_tap = weight.to(compute_dtype).permute({0, 3, 4, 1, 2}).reshape({-1, K, C});
  std::vector<int64_t> taps, tap_groups;
  for (int64_t t = 0; t < static_cast<int64_t>(groups.group_of_tap.size()); ++t) {
    if (groups.group_of_tap[t] >= 0) {
      taps.push_back(t);
      tap_groups.push_back(groups.group_of_tap[t]);
    }
  }
  const auto long_options = at::TensorOptions().dtype(at::kLong);
  const auto merged = at::zeros({static_cast<int64_t>(groups.offsets.size()), K, C},
                                per_tap.options());
  merged.index_add_(0, at::tensor(tap_groups, long_options),
                    per_tap.index_select(0, at::tensor(taps, long_options)));
  return merged.view({-1, C});
}

// Rows [row_begin, row_end) of every image form one block; block_rows keeps U*K*pixels bounded.
int64_t rows_per_block(int64_t height, int64_t width, int64_t merged_rows) {
  const int64_t per_row = std::max<int64_t>(1, merged_rows * width);
  return std::clamp<int64_t>(kMaxBlockElements / per_row, 1, height);
}

// View of image n's pixels in rows [row_begin, row_end) as a matrix: [C, P] when channels-first,
// [P, C] when channels-last (both are plain strided views, no copy).
at::Tensor pixel_block(const at::Tensor& image_batch, int64_t n, int64_t row_begin,
                       int64_t row_end, bool channels_last) {
  const auto rows = image_batch[n].narrow(1, row_begin, row_end - row_begin);
  const int64_t channels = image_batch.size(1);
  return channels_last ? rows.permute({1, 2, 0}).reshape({-1, channels})
                       : rows.reshape({channels, -1});
}

template <typename scalar_t>
void shift_accumulate_forward(const scalar_t* block, scalar_t* out, const TapGroups& groups,
                              int64_t K, int64_t H, int64_t W, int64_t row_begin,
                              int64_t row_end, bool channels_last) {
  // block holds Y for input rows [row_begin, row_end): Y[(u*K + k), p] at
  //   channels-first: block[(u*K + k) * P + p],  channels-last: block[p * U*K + u*K + k].
  // out is one image, [K, H, W] or [H, W, K]. Output pixel (y, x) takes Y at (y + dy, x + dx).
  const int64_t U = static_cast<int64_t>(groups.offsets.size());
  const int64_t P = (row_end - row_begin) * W;
  if (!channels_last) {
    at::parallel_for(0, K * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t ky_row = begin; ky_row < end; ++ky_row) {
        const int64_t k = ky_row / H, y = ky_row % H;
        scalar_t* out_row = out + (k * H + y) * W;
        for (int64_t u = 0; u < U; ++u) {
          const auto [dy, dx] = groups.offsets[u];
          const int64_t src_y = y + dy;
          if (src_y < row_begin || src_y >= row_end) continue;
          const int64_t x_begin = std::max<int64_t>(0, -dx), x_end = std::min(W, W - dx);
          const scalar_t* src_row = block + (u * K + k) * P + (src_y - row_begin) * W;
          for (int64_t x = x_begin; x < x_end; ++x) out_row[x] += src_row[x + dx];
        }
      }
    });
  } else {
    const int64_t UK = U * K;
    at::parallel_for(0, H * W, 64, [&](int64_t begin, int64_t end) {
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        const int64_t y = pixel / W, x = pixel % W;
        scalar_t* out_pixel = out + pixel * K;
        for (int64_t u = 0; u < U; ++u) {
          const auto [dy, dx] = groups.offsets[u];
          const int64_t src_y = y + dy, src_x = x + dx;
          if (src_y < row_begin || src_y >= row_end || src_x < 0 || src_x >= W) continue;
          const scalar_t* src = block + ((src_y - row_begin) * W + src_x) * UK + u * K;
          for (int64_t k = 0; k < K; ++k) out_pixel[k] += src[k];
        }
      }
    });
  }
}

template <typename scalar_t>
void gather_shifted_grad(const scalar_t* grad_out, scalar_t* block, const TapGroups& groups,
                         int64_t K, int64_t H, int64_t W, int64_t row_begin, int64_t row_end,
                         bool channels_last) {
  // The adjoint of the forward shift: for input pixel q = (y, x) in rows [row_begin, row_end),
  //   G[(u*K + k), q] = grad_out[k, y - dy, x - dx]   (0 when outside the map),
  // stored like the forward's Y block. grad_out is one image, [K, H, W] or [H, W, K].
  const int64_t U = static_cast<int64_t>(groups.offsets.size());
  const int64_t rows = row_end - row_begin, P = rows * W;
  if (!channels_last) {
    at::parallel_for(0, U * K * rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t uk = index / rows, y = row_begin + index % rows;
        const int64_t u = uk / K, k = uk % K;
        const auto [dy, dx] = groups.offsets[u];
        scalar_t* dst = block + uk * P + (y - row_begin) * W;
        const int64_t src_y = y - dy;
        if (src_y < 0 || src_y >= H) {
          std::fill(dst, dst + W, scalar_t(0));
          continue;
        }
        const int64_t x_begin = std::max<int64_t>(0, dx), x_end = std::min(W, W + dx);
        const scalar_t* src_row = grad_out + (k * H + src_y) * W;
        std::fill(dst, dst + x_begin, scalar_t(0));
        for (int64_t x = x_begin; x < x_end; ++x) dst[x] = src_row[x - dx];
        std::fill(dst + x_end, dst + W, scalar_t(0));
      }
    });
  } else {
    const int64_t UK = U * K;
    at::parallel_for(0, P, 64, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const int64_t y = row_begin + q / W, x = q % W;
        scalar_t* dst = block + q * UK;
        for (int64_t u = 0; u < U; ++u) {
          const auto [dy, dx] = groups.offsets[u];
          const int64_t src_y = y - dy, src_x = x - dx;
          if (src_y < 0 || src_y >= H || src_x < 0 || src_x >= W) {
            std::fill(dst + u * K, dst + (u + 1) * K, scalar_t(0));
            continue;
          }
          const scalar_t* src = grad_out + (src_y * W + src_x) * K;
          std::copy(src, src + K, dst + u * K);
        }
      }
    });
  }
}

// One image of a channels-first [K, H, W] or channels-last [H, W, K] contiguous tensor.
template <typename scalar_t>
scalar_t* image_ptr(const at::Tensor& batch, int64_t n) {
  return batch.data_ptr<scalar_t>() + n * batch.size(1) * batch.size(2) * batch.size(3);
}

at::Tensor aspp_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef rates) {
  check_forward_args(input, weight, bias, rates);
  TORCH_CHECK_VALUE(input.device().is_cpu(), "aspp: the CPU kernel got a tensor on ",
                    input.device());
  const auto memory_format = output_memory_format(input);
  const bool channels_last = memory_format == at::MemoryFormat::ChannelsLast;
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3);
  const int64_t K = weight.size(1);
  auto output = at::empty({N, K, H, W}, input.options().memory_format(memory_format));
  if (output.numel() == 0) return output;

  const auto compute_dtype = at::toOpMathType(input.scalar_type());
  const auto groups = group_taps(rates, H, W);
  const int64_t U = static_cast<int64_t>(groups.offsets.size());
  const auto x = input.to(compute_dtype).contiguous(memory_format);
  const auto w_taps = merged_tap_weight(weight, groups, compute_dtype);  // [U*K, C]
  const auto w_taps_t = w_taps.t();

  // Accumulate in the compute dtype, starting from the summed bias.
  auto acc = compute_dtype == input.scalar_type()
                 ? output
                 : at::empty(output.sizes(), output.options().dtype(compute_dtype)
                                                  .memory_format(memory_format));
  if (bias.has_value() && bias->defined()) {
    acc.copy_(bias->to(compute_dtype).sum(0).view({1, K, 1, 1}).expand_as(acc));
  } else {
    acc.zero_();
  }
  const int64_t block_rows = rows_per_block(H, W, U * K);
  AT_DISPATCH_FLOATING_TYPES(compute_dtype, "aspp_forward_cpu", [&] {
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t row_begin = 0; row_begin < H; row_begin += block_rows) {
        const int64_t row_end = std::min(H, row_begin + block_rows);
        const auto pixels = pixel_block(x, n, row_begin, row_end, channels_last);
        const auto block = channels_last ? at::mm(pixels, w_taps_t) : at::mm(w_taps, pixels);
        shift_accumulate_forward<scalar_t>(block.data_ptr<scalar_t>(), image_ptr<scalar_t>(acc, n),
                                           groups, K, H, W, row_begin, row_end, channels_last);
      }
    }
  });
  if (!acc.is_same(output)) output.copy_(acc);
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> aspp_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef rates, std::array<bool, 3> output_mask) {
  check_backward_args(grad_output, input, weight, rates);
  TORCH_CHECK_VALUE(input.device().is_cpu(), "aspp_backward: the CPU kernel got a tensor on ",
                    input.device());
  const auto memory_format = output_memory_format(input);
  const bool channels_last = memory_format == at::MemoryFormat::ChannelsLast;
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t R = weight.size(0), K = weight.size(1);
  const auto compute_dtype = at::toOpMathType(input.scalar_type());
  const auto empty = at::empty({0}, input.options());

  at::Tensor grad_bias = empty;
  if (output_mask[2]) {
    grad_bias = grad_output.to(compute_dtype).sum({0, 2, 3}).view({1, K}).expand({R, K})
                    .to(input.scalar_type()).contiguous();
  }
  if (!output_mask[0] && !output_mask[1]) return {empty, empty, grad_bias};

  const auto groups = group_taps(rates, H, W);
  const int64_t U = static_cast<int64_t>(groups.offsets.size());
  const auto g = grad_output.to(compute_dtype).contiguous(memory_format);
  const auto x = input.to(compute_dtype).contiguous(memory_format);
  const auto w_taps = merged_tap_weight(weight, groups, compute_dtype);  // [U*K, C]

  at::Tensor grad_input_acc, grad_w_taps;
  if (output_mask[0]) {
    grad_input_acc = at::empty(input.sizes(), x.options().memory_format(memory_format));
  }
  if (output_mask[1]) grad_w_taps = at::zeros({U * K, C}, x.options());

  const int64_t block_rows = rows_per_block(H, W, U * K);
  AT_DISPATCH_FLOATING_TYPES(compute_dtype, "aspp_backward_cpu", [&] {
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t row_begin = 0; row_begin < H; row_begin += block_rows) {
        const int64_t row_end = std::min(H, row_begin + block_rows);
        const int64_t P = (row_end - row_begin) * W;
        auto block = channels_last ? at::empty({P, U * K}, x.options())
                                   : at::empty({U * K, P}, x.options());
        gather_shifted_grad<scalar_t>(image_ptr<scalar_t>(g, n), block.data_ptr<scalar_t>(),
                                      groups, K, H, W, row_begin, row_end, channels_last);
        if (output_mask[0]) {
          auto grad_pixels = pixel_block(grad_input_acc, n, row_begin, row_end, channels_last);
          // pixel_block of a contiguous tensor is a view, so mm_out writes in place.
          if (channels_last) {
            at::mm_out(grad_pixels, block, w_taps);
          } else {
            at::mm_out(grad_pixels, w_taps.t(), block);
          }
        }
        if (output_mask[1]) {
          const auto pixels = pixel_block(x, n, row_begin, row_end, channels_last);
          if (channels_last) {
            grad_w_taps.addmm_(block.t(), pixels);
          } else {
            grad_w_taps.addmm_(block, pixels.t());
          }
        }
      }
    }
  });

  at::Tensor grad_input = empty, grad_weight = empty;
  if (output_mask[0]) {
    grad_input = grad_input_acc.to(input.scalar_type());
  }
  if (output_mask[1]) {
    // Every tap receives the gradient of its offset group; taps outside the map receive zero.
    const auto padded = at::cat({grad_w_taps.view({U, K, C}), at::zeros({1, K, C}, x.options())});
    std::vector<int64_t> rows;
    for (const int64_t group : groups.group_of_tap) rows.push_back(group >= 0 ? group : U);
    grad_weight = padded.index_select(0, at::tensor(rows, at::TensorOptions().dtype(at::kLong)))
                      .view({R, 3, 3, K, C})
                      .permute({0, 3, 4, 1, 2})
                      .to(input.scalar_type())
                      .contiguous();
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(deeplabv2_ext, CPU, m) {
  m.impl("aspp", &aspp_forward_cpu);
  m.impl("aspp_backward", &aspp_backward_cpu);
}

}  // namespace deeplabv2_ext::aspp
