// Sizes of the device workspaces the CUDA launchers carve into regions (plain C++).
#pragma once

#include <cstddef>
#include <cstdint>

#include "host_device.h"

namespace deeplabv2_ext {

// Every workspace region starts at this alignment, like a cudaMalloc allocation, so that any
// region may hold any element type or vector load.
constexpr size_t kWorkspaceAlignment = 256;

// a / b rounded up, for a >= 0 and b > 0 (host and device code).
DLV2_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// `bytes` rounded up to a multiple of `alignment`.
inline size_t align_up(size_t bytes, size_t alignment = kWorkspaceAlignment) {
  return (bytes + alignment - 1) / alignment * alignment;
}

}  // namespace deeplabv2_ext
