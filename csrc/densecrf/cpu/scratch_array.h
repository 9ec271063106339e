// Uninitialised scratch arrays for the CPU lattice code.
//
// The mean-field op and the lattice build allocate a few arrays of tens of MB per call. With
// 4 KiB pages, first touching them costs one page fault per page, a large part of the mean-field
// op's setup (benchmarks/NOTES.md). Arrays of 2 MiB or more are therefore
// aligned to 2 MiB and marked MADV_HUGEPAGE, which Linux honours when transparent huge pages are
// in "madvise" or "always" mode (elsewhere, or when the kernel says no, they are plain pages).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../../common/workspace.h"

namespace deeplabv2_ext::densecrf::cpu {

template <typename T>
class ScratchArray {
  static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_default_constructible_v<T>,
                "ScratchArray holds plain values only (its elements are not initialised)");

 public:
  ScratchArray() = default;

  // `size` elements, not initialised.
  explicit ScratchArray(size_t size) : size_(size) {
    constexpr size_t kHugePage = size_t{2} << 20;
    constexpr size_t kCacheLine = 64;
    const size_t bytes = std::max<size_t>(size * sizeof(T), 1);
    const size_t alignment = bytes >= kHugePage ? kHugePage : kCacheLine;
    const size_t rounded = align_up(bytes, alignment);
    void* memory = std::aligned_alloc(alignment, rounded);
    if (memory == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (alignment == kHugePage) madvise(memory, rounded, MADV_HUGEPAGE);  // a hint: may fail
#endif
    data_.reset(static_cast<T*>(memory));
  }

  // `size` copies of `value`.
  ScratchArray(size_t size, T value) : ScratchArray(size) { std::fill_n(data(), size, value); }

  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_.get()[i]; }
  const T& operator[](size_t i) const { return data_.get()[i]; }

 private:
  struct Free {
    void operator()(T* memory) const { std::free(memory); }
  };
  std::unique_ptr<T, Free> data_;
  size_t size_ = 0;
};

}  // namespace deeplabv2_ext::densecrf::cpu
