// CUDA-on-CPU cub::DeviceRadixSort::SortPairs with CUB's two-call protocol: a call with
// d_temp_storage == nullptr only sets temp_storage_bytes; the second call checks that the
// storage it gets is that large and lies in one device allocation, uses all of it as the
// alternate key/value buffers, and sorts stably on bits [begin_bit, end_bit) of the keys (bits
// outside the range are ignored, as CUB does).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../../cuda_on_cpu/runtime.h"

namespace cuda_on_cpu {
// Checks that [p, p + bytes) lies inside one device allocation (false and a recorded error if not).
bool check_device_range(const void* p, size_t bytes, const char* what);
void record_error(cudaError_t error, const char* message);
void note_library_call(const char* name);
}  // namespace cuda_on_cpu

namespace cub {
struct DeviceRadixSort {
  template <typename Key, typename Value>
  static size_t required_temp_bytes(int num_items) {
    return static_cast<size_t>(num_items) * (sizeof(Key) + sizeof(Value)) + 256;
  }

  template <typename Key, typename Value>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const Key* d_keys_in,
                               Key* d_keys_out, const Value* d_values_in, Value* d_values_out,
                               int num_items, int begin_bit = 0, int end_bit = sizeof(Key) * 8,
                               cudaStream_t stream = nullptr) {
    (void)stream;
    static_assert(std::is_unsigned_v<Key>, "unsigned keys");
    const size_t required = required_temp_bytes<Key, Value>(num_items);
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = required;
      return cudaSuccess;
    }
    ::cuda_on_cpu::note_library_call("cub::DeviceRadixSort::SortPairs");
    if (num_items < 0 || begin_bit < 0 || end_bit > static_cast<int>(sizeof(Key) * 8) || begin_bit >= end_bit) {
      ::cuda_on_cpu::record_error(cudaErrorInvalidValue, "cub::DeviceRadixSort::SortPairs: invalid bit range or item count");
      return cudaErrorInvalidValue;
    }
    if (temp_storage_bytes < required) {
      ::cuda_on_cpu::record_error(cudaErrorInvalidValue, "cub::DeviceRadixSort::SortPairs: temp_storage_bytes is smaller than the sizing call asked for");
      return cudaErrorInvalidValue;
    }
    const size_t n = static_cast<size_t>(num_items);
    if (!::cuda_on_cpu::check_device_range(d_temp_storage, temp_storage_bytes, "cub::DeviceRadixSort::SortPairs d_temp_storage") ||
        !::cuda_on_cpu::check_device_range(d_keys_in, n * sizeof(Key), "cub::DeviceRadixSort::SortPairs d_keys_in") ||
        !::cuda_on_cpu::check_device_range(d_keys_out, n * sizeof(Key), "cub::DeviceRadixSort::SortPairs d_keys_out") ||
        !::cuda_on_cpu::check_device_range(d_values_in, n * sizeof(Value), "cub::DeviceRadixSort::SortPairs d_values_in") ||
        !::cuda_on_cpu::check_device_range(d_values_out, n * sizeof(Value), "cub::DeviceRadixSort::SortPairs d_values_out")) {
      return cudaErrorIllegalAddress;
    }
    // CUB requires the input, output and temp ranges not to overlap.
    const struct Span {
      const char* begin;
      size_t bytes;
    } spans[] = {{reinterpret_cast<const char*>(d_keys_in), n * sizeof(Key)},
                 {reinterpret_cast<const char*>(d_keys_out), n * sizeof(Key)},
                 {reinterpret_cast<const char*>(d_values_in), n * sizeof(Value)},
                 {reinterpret_cast<const char*>(d_values_out), n * sizeof(Value)},
                 {static_cast<const char*>(d_temp_storage), temp_storage_bytes}};
    for (int i = 0; i < 5; ++i) {
      for (int j = i + 1; j < 5; ++j) {
        if (spans[i].bytes > 0 && spans[j].bytes > 0 && spans[i].begin < spans[j].begin + spans[j].bytes &&
            spans[j].begin < spans[i].begin + spans[i].bytes) {
          ::cuda_on_cpu::record_error(cudaErrorInvalidValue, "cub::DeviceRadixSort::SortPairs: input, output and temp ranges overlap");
          return cudaErrorInvalidValue;
        }
      }
    }
    // LSD radix sort, one bit at a time, through the temp storage (stable).
    Key* alt_keys = static_cast<Key*>(d_temp_storage);
    Value* alt_values = reinterpret_cast<Value*>(static_cast<char*>(d_temp_storage) + n * sizeof(Key));
    for (size_t i = 0; i < n; ++i) {
      d_keys_out[i] = d_keys_in[i];
      d_values_out[i] = d_values_in[i];
    }
    for (int bit = begin_bit; bit < end_bit; ++bit) {
      size_t zeros = 0;
      for (size_t i = 0; i < n; ++i) zeros += ((d_keys_out[i] >> bit) & 1u) == 0 ? 1 : 0;
      size_t next_zero = 0, next_one = zeros;
      for (size_t i = 0; i < n; ++i) {
        const size_t to = ((d_keys_out[i] >> bit) & 1u) == 0 ? next_zero++ : next_one++;
        alt_keys[to] = d_keys_out[i];
        alt_values[to] = d_values_out[i];
      }
      for (size_t i = 0; i < n; ++i) {
        d_keys_out[i] = alt_keys[i];
        d_values_out[i] = alt_values[i];
      }
    }
    // The rest of the storage is CUB's histogram space: touch it so an undersized one shows.
    std::memset(static_cast<char*>(d_temp_storage) + n * (sizeof(Key) + sizeof(Value)), 0, required - n * (sizeof(Key) + sizeof(Value)));
    return cudaSuccess;
  }
};
}  // namespace cub
