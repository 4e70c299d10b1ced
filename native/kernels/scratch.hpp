// Thread-local scratch memory for the kernels: one growable, 64-byte aligned buffer per slot and
// thread, kept for the thread's lifetime, so that steady-state calls allocate nothing. Compiled
// without ISA flags.
#pragma once

#include <cstddef>

namespace kt_moe {

// Independent buffers a single kernel call may hold at the same time.
enum class ScratchSlot : int {
  plan_operand = 0,  // gemm_bf16_plan: the operand it transposes
  packed = 1,        // a kernel's packed (VNNI) operand panel
  row_tail = 2,      // a kernel's zero-padded copies of partial row blocks
  tile_out = 3,      // a kernel's fp32 result tiles before they are written to C
  accumulators = 4,  // a kernel's fp32 partial sums kept between blocks of k
  dequantized = 5,   // moe/base_products: a block of quantized weight rows dequantized to bf16
};
constexpr int kScratchSlotCount = 6;

// At least `bytes` bytes, 64-byte aligned, owned by the calling thread; contents undefined. The
// pointer stays valid until the same thread asks the same slot for more bytes.
void* thread_scratch(ScratchSlot slot, size_t bytes);

}  // namespace kt_moe
