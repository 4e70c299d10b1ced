// Buffer<T>: a growable scratch array that keeps its memory between calls (no per-call
// allocation or page faults on the hot path) and never initialises what it hands out.
#pragma once

#include <cstddef>
#include <memory>

namespace kt_moe {

template <class T>
class Buffer {
 public:
  // At least n elements, contents unspecified; reallocates only when n exceeds the capacity.
  T* ensure(size_t n) {
    if (n > capacity_) {
      data_.reset(new T[n]);
      capacity_ = n;
    }
    return data_.get();
  }
  T* data() const { return data_.get(); }
  size_t capacity() const { return capacity_; }

 private:
  std::unique_ptr<T[]> data_;
  size_t capacity_ = 0;
};

}  // namespace kt_moe
