// Launch-shape and workspace helpers shared by the permutohedral CUDA kernels (torch-free).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../../common/workspace.h"

namespace deeplabv2_ext {
namespace densecrf {
namespace launch {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride loops beyond this

// Blocks of kThreads covering `work` items, at least 1 and at most kMaxBlocks.
inline int blocks_for(int64_t work) {
  int64_t b = ceil_div(work, kThreads);
  if (b < 1) b = 1;
  if (b > kMaxBlocks) b = kMaxBlocks;
  return static_cast<int>(b);
}

}  // namespace launch
}  // namespace densecrf
}  // namespace deeplabv2_ext
