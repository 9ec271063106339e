// A query of the CPU ASPP kernel (aspp_kernel.cpp), for the tests and for diagnostics.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace deeplabv2_ext::aspp {

// The row blocks that the CPU kernels (forward and backward) visit for each image of `input`
// with `weight` and `rates`, in visiting order: (dy of the row group, first source row, end
// source row). Computed by the kernels' own block loop, so it is the plan they run; a row group
// split into several blocks is the row-block path taken when its U_g*K x pixels buffer would
// exceed the scratch cap. The arguments are checked like the op's (their data is not read).
std::vector<std::tuple<int64_t, int64_t, int64_t>> cpu_row_blocks(const at::Tensor& input,
                                                                  const at::Tensor& weight,
                                                                  at::IntArrayRef rates);

}  // namespace deeplabv2_ext::aspp
