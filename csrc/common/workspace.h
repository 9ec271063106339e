// Sizes of the device workspaces the CUDA launchers carve into regions (plain C++).
#pragma once

#include <cstddef>
#include <cstdint>

namespace deeplabv2_ext {

// Every workspace region starts at this alignment, like a cudaMalloc allocation, so that any
// region may hold any element type or vector load.
constexpr size_t kWorkspaceAlignment = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// `bytes` rounded up to a multiple of `alignment`.
inline size_t align_up(size_t bytes, size_t alignment = kWorkspaceAlignment) {
  return (bytes + alignment - 1) / alignment * alignment;
}

}  // namespace deeplabv2_ext
