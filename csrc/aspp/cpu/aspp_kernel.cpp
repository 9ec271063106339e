// CPU kernel of the fused ASPP op: "tap-GEMM, then shift-accumulate".
//
// Every tap of every branch is a 1x1 convolution of the input followed by a spatial shift of its
// K-channel result by (dy, dx) = ((ky - 1) * rate, (kx - 1) * rate). Taps with the same offset
// (the centre tap of every branch, or repeated rates) are merged by summing their weights, and
// taps that fall entirely outside the map are dropped. The U unique offsets are grouped by dy;
// a group only needs the source rows that land inside the output, [max(0, dy), H + min(0, dy)),
// so for each group g with U_g offsets the forward is
//   Y_g = W_g [U_g*K, C] @ X [C, rows of g]          (a wide GEMM done by ATen's BLAS)
//   out[k, p] += Y_g[u*K + k, p + offset_u]          (cheap: K channels only)
// starting from out = the summed bias. The big operand (C = 2048 channels) is never shifted or
// duplicated (no im2col of the input), the GEMMs are wide (U_g*K columns instead of the skinny
// K = 21 of each separate convolution), and rows that only meet the zero padding are skipped.
// The backward uses the same decomposition: the shifted K-channel grad_output
// G_g [U_g*K, rows of g] (an "im2col" of the small side) gives
//   grad_input[rows of g] += W_g^T @ G_g      and      grad_W_g += G_g @ X[rows of g]^T.
// Rows are processed in blocks so that the U_g*K x pixels buffers stay bounded (the shift only
// moves data between rows, so row blocks are independent). GEMMs run multithreaded inside ATen;
// the shift/accumulate loops use at::parallel_for over rows/pixels that each thread owns
// exclusively (no atomics). float16/bfloat16 are computed in float32 and rounded once.
#include "aspp_kernel.h"

#include "../aspp.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

namespace deeplabv2_ext::aspp {
namespace {

// Upper bound on the elements of one U_g*K x pixels block buffer (32 MiB in float32).
constexpr int64_t kMaxBlockElements = int64_t{8} << 20;

using Offset = std::pair<int64_t, int64_t>;  // (dy, dx)

// Unique tap offsets inside the map, sorted by (dy, dx), and their grouping by dy.
struct TapLayout {
  struct RowGroup {
    int64_t dy;
    int64_t first, last;  // offsets[first, last) have this dy
    // Source rows whose shifted pixels land inside the output.
    int64_t source_row_begin() const { return std::max<int64_t>(0, dy); }
    int64_t source_row_end(int64_t height) const { return std::min(height, height + dy); }
  };
  std::vector<Offset> offsets;
  std::vector<int64_t> offset_of_tap;  // per tap r*9 + ky*3 + kx; -1 when outside the map
  std::vector<RowGroup> row_groups;
};

TapLayout tap_layout(at::IntArrayRef rates, int64_t height, int64_t width) {
  std::vector<Offset> tap_offsets;
  for (const int64_t rate : rates) {
    for (int64_t ky = 0; ky < 3; ++ky) {
      for (int64_t kx = 0; kx < 3; ++kx) tap_offsets.emplace_back((ky - 1) * rate, (kx - 1) * rate);
    }
  }
  const auto inside = [&](const Offset& o) {
    return std::abs(o.first) < height && std::abs(o.second) < width;
  };
  TapLayout layout;
  std::map<Offset, int64_t> index_of_offset;
  for (const Offset& o : tap_offsets) {
    if (inside(o)) index_of_offset.emplace(o, 0);
  }
  for (auto& [offset, index] : index_of_offset) {  // std::map iterates in (dy, dx) order
    index = static_cast<int64_t>(layout.offsets.size());
    if (layout.row_groups.empty() || layout.row_groups.back().dy != offset.first) {
      layout.row_groups.push_back({offset.first, index, index});
    }
    ++layout.row_groups.back().last;
    layout.offsets.push_back(offset);
  }
  for (const Offset& o : tap_offsets) {
    layout.offset_of_tap.push_back(inside(o) ? index_of_offset.at(o) : -1);
  }
  return layout;
}

at::Tensor long_tensor(const std::vector<int64_t>& values) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong));
}

// [U*K, C] weight of the merged taps (row u*K + k), in the compute dtype.
at::Tensor merged_tap_weight(const at::Tensor& weight, const TapLayout& layout,
                             at::ScalarType compute_dtype) {
  const int64_t K = weight.size(1), C = weight.size(2);
  const auto per_tap = weight.to(compute_dtype).permute({0, 3, 4, 1, 2}).reshape({-1, K, C});
  std::vector<int64_t> taps, offsets;
  for (int64_t t = 0; t < static_cast<int64_t>(layout.offset_of_tap.size()); ++t) {
    if (layout.offset_of_tap[t] >= 0) {
      taps.push_back(t);
      offsets.push_back(layout.offset_of_tap[t]);
    }
  }
  const auto merged =
      at::zeros({static_cast<int64_t>(layout.offsets.size()), K, C}, per_tap.options());
  merged.index_add_(0, long_tensor(offsets), per_tap.index_select(0, long_tensor(taps)));
  return merged.view({-1, C});
}

// Rows per block so that a block buffer of merged_rows x (rows * width) stays bounded.
int64_t rows_per_block(int64_t width, int64_t merged_rows) {
  return std::max<int64_t>(1, kMaxBlockElements / std::max<int64_t>(1, merged_rows * width));
}

// View of image n's pixels in rows [row_begin, row_end) as a matrix: [C, P] when channels-first,
// [P, C] when channels-last (plain strided views of a contiguous tensor, no copy).
at::Tensor pixel_block(const at::Tensor& image_batch, int64_t n, int64_t row_begin,
                       int64_t row_end, bool channels_last) {
  const auto rows = image_batch[n].narrow(1, row_begin, row_end - row_begin);
  const int64_t channels = image_batch.size(1);
  return channels_last ? rows.permute({1, 2, 0}).reshape({-1, channels})
                       : rows.reshape({channels, -1});
}

// One image of a channels-first [K, H, W] or channels-last [H, W, K] contiguous tensor.
template <typename scalar_t>
scalar_t* image_ptr(const at::Tensor& batch, int64_t n) {
  return batch.data_ptr<scalar_t>() + n * batch.size(1) * batch.size(2) * batch.size(3);
}

// What the shift loops of one row group and one block of source rows need to know.
struct ShiftBlock {
  const Offset* offsets;  // the group's offsets, all with the same dy
  int64_t first_offset;   // index of offsets[0] among all unique offsets
  int64_t num_offsets, K, H, W;
  int64_t row_begin, row_end;  // source rows of the block
  bool channels_last;
  int64_t pixels() const { return (row_end - row_begin) * W; }
  int64_t dy() const { return offsets[0].first; }
};

template <typename scalar_t>
void shift_accumulate_forward(const scalar_t* block, scalar_t* out, const ShiftBlock& b) {
  // block holds Y for the block's source rows: Y[(u*K + k), p] at
  //   channels-first: block[(u*K + k) * P + p],  channels-last: block[p * U_g*K + u*K + k].
  // out is one image, [K, H, W] or [H, W, K]; output pixel (y, x) takes Y at (y + dy, x + dx),
  // so the block feeds output rows [row_begin - dy, row_end - dy) (inside the map by
  // construction of the row group).
  const int64_t K = b.K, W = b.W, P = b.pixels(), rows = b.row_end - b.row_begin;
  const int64_t out_row_begin = b.row_begin - b.dy();
  if (!b.channels_last) {
    at::parallel_for(0, K * rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t k = index / rows, row = index % rows;
        scalar_t* out_row = out + (k * b.H + out_row_begin + row) * W;
        for (int64_t u = 0; u < b.num_offsets; ++u) {
          const int64_t dx = b.offsets[u].second;
          const int64_t x_begin = std::max<int64_t>(0, -dx), x_end = std::min(W, W - dx);
          const scalar_t* src_row = block + (u * K + k) * P + row * W;
          for (int64_t x = x_begin; x < x_end; ++x) out_row[x] += src_row[x + dx];
        }
      }
    });
  } else {
    const int64_t UK = b.num_offsets * K;
    at::parallel_for(0, P, 64, [&](int64_t begin, int64_t end) {
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        const int64_t row = pixel / W, x = pixel % W;
        scalar_t* out_pixel = out + ((out_row_begin + row) * W + x) * K;
        for (int64_t u = 0; u < b.num_offsets; ++u) {
          const int64_t src_x = x + b.offsets[u].second;
          if (src_x < 0 || src_x >= W) continue;
          const scalar_t* src = block + (row * W + src_x) * UK + u * K;
          for (int64_t k = 0; k < K; ++k) out_pixel[k] += src[k];
        }
      }
    });
  }
}

template <typename scalar_t>
void gather_shifted_grad(const scalar_t* grad_out, scalar_t* block, const ShiftBlock& b) {
  // The adjoint of the forward shift: for input pixel q = (y, x) of the block's rows,
  //   G[(u*K + k), q] = grad_out[k, y - dy, x - dx]   (0 when x - dx is outside the map),
  // stored like the forward's Y block. grad_out is one image, [K, H, W] or [H, W, K].
  const int64_t K = b.K, W = b.W, P = b.pixels(), rows = b.row_end - b.row_begin;
  const int64_t grad_row_begin = b.row_begin - b.dy();
  if (!b.channels_last) {
    at::parallel_for(0, b.num_offsets * K * rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t uk = index / rows, row = index % rows;
        const int64_t dx = b.offsets[uk / K].second, k = uk % K;
        scalar_t* dst = block + uk * P + row * W;
        const scalar_t* src_row = grad_out + (k * b.H + grad_row_begin + row) * W;
        const int64_t x_begin = std::max<int64_t>(0, dx), x_end = std::min(W, W + dx);
        std::fill(dst, dst + x_begin, scalar_t(0));
        for (int64_t x = x_begin; x < x_end; ++x) dst[x] = src_row[x - dx];
        std::fill(dst + x_end, dst + W, scalar_t(0));
      }
    });
  } else {
    const int64_t UK = b.num_offsets * K;
    at::parallel_for(0, P, 64, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const int64_t row = q / W, x = q % W;
        scalar_t* dst = block + q * UK;
        for (int64_t u = 0; u < b.num_offsets; ++u) {
          const int64_t src_x = x - b.offsets[u].second;
          if (src_x < 0 || src_x >= W) {
            std::fill(dst + u * K, dst + (u + 1) * K, scalar_t(0));
          } else {
            const scalar_t* src = grad_out + ((grad_row_begin + row) * W + src_x) * K;
            std::copy(src, src + K, dst + u * K);
          }
        }
      }
    });
  }
}

// Y = the group's taps applied to the block's source rows of image n, laid out as
// [U_g*K, P] (channels-first) or [P, U_g*K] (channels-last), contiguous.
at::Tensor tap_gemm(const at::Tensor& x, int64_t n, const at::Tensor& group_weight,
                    const ShiftBlock& b) {
  if (x.scalar_type() == at::kFloat) {
    // Issued as a 1x1 convolution so that ATen runs it with oneDNN, which is faster than the
    // BLAS sgemm behind at::mm for these shapes (measured on AMD EPYC: see benchmarks/NOTES.md).
    // The output [1, U_g*K, rows, W] in x's memory format has exactly the layout above.
    const auto rows = x.narrow(0, n, 1).narrow(2, b.row_begin, b.row_end - b.row_begin);
    return at::conv2d(rows, group_weight.view({group_weight.size(0), group_weight.size(1), 1, 1}))
        .contiguous(b.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  }
  const auto pixels = pixel_block(x, n, b.row_begin, b.row_end, b.channels_last);
  return b.channels_last ? at::mm(pixels, group_weight.t()) : at::mm(group_weight, pixels);
}

// The CPU kernel's own limits, on top of check_forward_args / check_backward_args (which put
// every tensor on input's device): the tensors are on the CPU. It takes any number of rates.
void check_cpu_args(const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.device().is_cpu(), "aspp: the CPU kernel got a tensor on ",
                    input.device());
}

// Calls visit(group_weight [U_g*K, C], ShiftBlock) for every row group and row block.
template <typename Visit>
void for_each_block(const TapLayout& layout, const at::Tensor& w_taps, int64_t K, int64_t H,
                    int64_t W, bool channels_last, const Visit& visit) {
  for (const auto& group : layout.row_groups) {
    const int64_t num_offsets = group.last - group.first;
    const auto group_weight = w_taps.narrow(0, group.first * K, num_offsets * K);
    const int64_t rows_end = group.source_row_end(H);
    const int64_t block_rows = rows_per_block(W, num_offsets * K);
    for (int64_t row = group.source_row_begin(); row < rows_end; row += block_rows) {
      const int64_t row_end = std::min(rows_end, row + block_rows);
      visit(group_weight, ShiftBlock{layout.offsets.data() + group.first, group.first,
                                     num_offsets, K, H, W, row, row_end, channels_last});
    }
  }
}

at::Tensor aspp_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef rates) {
  check_forward_args(input, weight, bias, rates);
  check_cpu_args(input);
  const auto memory_format = output_memory_format(input);
  const bool channels_last = memory_format == at::MemoryFormat::ChannelsLast;
  const int64_t N = input.size(0), H = input.size(2), W = input.size(3);
  const int64_t K = weight.size(1);
  auto output = at::empty({N, K, H, W}, input.options().memory_format(memory_format));
  if (output.numel() == 0) return output;

  const auto compute_dtype = at::toOpMathType(input.scalar_type());
  const auto layout = tap_layout(rates, H, W);
  const auto x = input.to(compute_dtype).contiguous(memory_format);
  const auto w_taps = merged_tap_weight(weight, layout, compute_dtype);  // [U*K, C]

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
  AT_DISPATCH_FLOATING_TYPES(compute_dtype, "aspp_forward_cpu", [&] {
    for (int64_t n = 0; n < N; ++n) {
      for_each_block(layout, w_taps, K, H, W, channels_last,
                     [&](const at::Tensor& group_weight, const ShiftBlock& b) {
        const auto y = tap_gemm(x, n, group_weight, b);
        shift_accumulate_forward<scalar_t>(y.data_ptr<scalar_t>(), image_ptr<scalar_t>(acc, n), b);
      });
    }
  });
  if (!acc.is_same(output)) output.copy_(acc);
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> aspp_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef rates, std::array<bool, 3> output_mask) {
  check_backward_args(grad_output, input, weight, rates);
  check_cpu_args(input);
  const auto memory_format = output_memory_format(input);
  const bool channels_last = memory_format == at::MemoryFormat::ChannelsLast;
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t R = weight.size(0), K = weight.size(1);
  const auto compute_dtype = at::toOpMathType(input.scalar_type());
  // Each gradient that was not asked for is its own empty tensor (outputs must not alias).
  const auto not_requested = [&] { return at::empty({0}, input.options()); };

  at::Tensor grad_bias = not_requested();
  if (output_mask[2]) {
    grad_bias = grad_output.to(compute_dtype).sum({0, 2, 3}).view({1, K}).expand({R, K})
                    .to(input.scalar_type()).contiguous();
  }
  if (!output_mask[0] && !output_mask[1]) return {not_requested(), not_requested(), grad_bias};

  const auto layout = tap_layout(rates, H, W);
  const int64_t U = static_cast<int64_t>(layout.offsets.size());
  const auto g = grad_output.to(compute_dtype).contiguous(memory_format);
  const auto x = input.to(compute_dtype).contiguous(memory_format);
  const auto w_taps = merged_tap_weight(weight, layout, compute_dtype);  // [U*K, C]

  at::Tensor grad_input_acc, grad_w_taps;
  if (output_mask[0]) {
    grad_input_acc = at::empty(input.sizes(), x.options().memory_format(memory_format)).zero_();
  }
  if (output_mask[1]) grad_w_taps = at::zeros({U * K, C}, x.options());

  AT_DISPATCH_FLOATING_TYPES(compute_dtype, "aspp_backward_cpu", [&] {
    for (int64_t n = 0; n < N; ++n) {
      for_each_block(layout, w_taps, K, H, W, channels_last,
                     [&](const at::Tensor& group_weight, const ShiftBlock& b) {
        const int64_t UK = b.num_offsets * K;
        auto shifted = channels_last ? at::empty({b.pixels(), UK}, x.options())
                                     : at::empty({UK, b.pixels()}, x.options());
        gather_shifted_grad<scalar_t>(image_ptr<scalar_t>(g, n), shifted.data_ptr<scalar_t>(), b);
        if (output_mask[0]) {
          // pixel_block of a contiguous tensor is a view, so addmm_ accumulates in place.
          auto grad_pixels = pixel_block(grad_input_acc, n, b.row_begin, b.row_end, channels_last);
          if (channels_last) {
            grad_pixels.addmm_(shifted, group_weight);
          } else {
            grad_pixels.addmm_(group_weight.t(), shifted);
          }
        }
        if (output_mask[1]) {
          const auto pixels = pixel_block(x, n, b.row_begin, b.row_end, channels_last);
          auto grad_group_weight = grad_w_taps.narrow(0, b.first_offset * K, UK);
          if (channels_last) {
            grad_group_weight.addmm_(shifted.t(), pixels);
          } else {
            grad_group_weight.addmm_(shifted, pixels.t());
          }
        }
      });
    }
  });

  at::Tensor grad_input = not_requested(), grad_weight = not_requested();
  if (output_mask[0]) grad_input = grad_input_acc.to(input.scalar_type());
  if (output_mask[1]) {
    // Every tap receives the gradient of its offset; taps outside the map receive zero.
    const auto padded = at::cat({grad_w_taps.view({U, K, C}), at::zeros({1, K, C}, x.options())});
    std::vector<int64_t> rows;
    for (const int64_t offset : layout.offset_of_tap) rows.push_back(offset >= 0 ? offset : U);
    grad_weight = padded.index_select(0, long_tensor(rows))
                      .view({R, 3, 3, K, C})
                      .permute({0, 3, 4, 1, 2})
                      .to(input.scalar_type())
                      .contiguous();
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

std::vector<std::tuple<int64_t, int64_t, int64_t>> cpu_row_blocks(const at::Tensor& input,
                                                                  const at::Tensor& weight,
                                                                  at::IntArrayRef rates) {
  check_forward_args(input, weight, std::nullopt, rates);
  const int64_t K = weight.size(1), H = input.size(2), W = input.size(3);
  const auto layout = tap_layout(rates, H, W);
  // for_each_block only narrows the merged weight: an empty [U*K, 0] one stands in for it.
  const auto no_weight = at::empty({static_cast<int64_t>(layout.offsets.size()) * K, 0});
  std::vector<std::tuple<int64_t, int64_t, int64_t>> blocks;
  for_each_block(layout, no_weight, K, H, W, /*channels_last=*/false,
                 [&](const at::Tensor&, const ShiftBlock& b) {
                   blocks.emplace_back(b.dy(), b.row_begin, b.row_end);
                 });
  return blocks;
}

TORCH_LIBRARY_IMPL(deeplabv2_ext, CPU, m) {
  m.impl("aspp", &aspp_forward_cpu);
  m.impl("aspp_backward", &aspp_backward_cpu);
}

}  // namespace deeplabv2_ext::aspp
