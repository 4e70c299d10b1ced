// Buffer<T>: a growable scratch array that keeps its memory between calls (no per-call
// allocation or page faults on the hot path) and never initialises what it hands out. At the end
// of each call its owner calls end_call(), which frees memory a larger earlier call left behind.
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>

namespace kt_moe {

// Memory a per-call buffer may keep beyond what the latest call needed (engines' default): enough
// for one 512-token prefill chunk's buffers at DeepSeek-V3 size (about 190 MB), so that prefills
// interleaved with decodes do not allocate and fault their buffers in again each time.
constexpr size_t kDefaultScratchKeepBytes = size_t(256) << 20;

template <class T>
class Buffer {
 public:
  // At least n elements, contents unspecified; reallocates only when n exceeds the capacity.
  T* ensure(size_t n) {
    if (n > capacity_) {
      data_.reset();  // free the old memory before taking the new
      data_.reset(new T[n]);
      capacity_ = n;
    }
    needed_ = std::max(needed_, n);
    return data_.get();
  }
  T* data() const { return data_.get(); }
  size_t capacity() const { return capacity_; }
  size_t bytes() const { return capacity_ * sizeof(T); }

  // Ends a call (the contents are dead): frees the memory when it is above both what the call
  // asked ensure() for and keep_bytes. Calls of a steady size keep reusing it; a call smaller than
  // an earlier large one gives the large one's memory back.
  void end_call(size_t keep_bytes) {
    if (capacity_ > std::max(needed_, keep_bytes / sizeof(T))) {
      data_.reset();
      capacity_ = 0;
    }
    needed_ = 0;
  }

 private:
  std::unique_ptr<T[]> data_;
  size_t capacity_ = 0;
  size_t needed_ = 0;  // the most ensure() asked for since the last end_call()
};

}  // namespace kt_moe
