// Thread-local scratch buffers (see scratch.hpp).
#include "kernels/scratch.hpp"

#include <cstdlib>
#include <memory>
#include <new>

namespace kt_moe {
namespace {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

struct Buffer {
  std::unique_ptr<void, FreeDeleter> data;
  size_t bytes = 0;
};

}  // namespace

void* thread_scratch(ScratchSlot slot, size_t bytes) {
  thread_local Buffer buffers[kScratchSlotCount];
  Buffer& b = buffers[static_cast<int>(slot)];
  if (bytes > b.bytes || !b.data) {
    const size_t rounded = (bytes + 63) / 64 * 64 + 64;  // +64: a zero-size request still gets memory
    b.data.reset();
    b.data.reset(std::aligned_alloc(64, rounded));
    if (!b.data) {
      b.bytes = 0;
      throw std::bad_alloc();
    }
    b.bytes = rounded;
  }
  return b.data.get();
}

}  // namespace kt_moe
