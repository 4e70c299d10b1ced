// Where the SFT backward's tasks leave the LoRA gradients (moe/sft_engine.cpp). With one slice a
// task's block is final: it is computed into the thread's fp32 scratch and stored in the caller's
// buffer at once (rounded to bf16 where asked) while it is in cache, so the gradients never make a
// round trip through memory in fp32. With several slices the blocks are fp32 in the engine's sums
// (LoraGradients), which SftEngine::write_gradients stores once the slices' shares are added.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "moe/bf16.hpp"
#include "moe/expert_tasks.hpp"
#include "moe/sft_engine.hpp"

namespace kt_moe {

// The gradients in GradientOutputs order.
enum GradientIndex : int { kGateA = 0, kGateB = 1, kUpA = 2, kUpB = 3, kDownA = 4, kDownB = 5 };

class GradientBlocks {
 public:
  // direct: one slice, the caller's buffers are final; else `sums` (all six non-null) are.
  GradientBlocks(const LoraGradients& sums, const GradientOutputs& out, bool direct)
      : out_(out), direct_(direct), sums_{sums.gate_a, sums.gate_b, sums.up_a, sums.up_b, sums.down_a, sums.down_b} {}

  float* sum(int which) const { return sums_[which]; }

  // Block [rows, cols] of gradient `which` whose first element is `at` of the tensor, rows ld apart
  // there: compute(c, ldc) writes it in fp32 to c (row stride ldc), which is then stored where it
  // belongs. compute runs on the calling thread; it may not use thread_floats().
  template <class Compute>
  void compute(int which, size_t at, int rows, int cols, int64_t ld, Compute&& compute_block) const {
    if (!direct_) {
      compute_block(sums_[which] + at, ld);
      return;
    }
    float* block = thread_floats(size_t(rows) * cols);
    compute_block(block, int64_t(cols));
    for (int i = 0; i < rows; ++i) out_[which].store(at + size_t(i) * ld, block + size_t(i) * cols, cols);
  }

  // Elements [at, at + n) of gradient `which` are zero (the experts without rows).
  void zero(int which, size_t at, size_t n) const {
    if (!direct_)
      std::fill_n(sums_[which] + at, n, 0.0f);
    else if (out_[which].bf16)
      std::fill_n(static_cast<bf16_t*>(out_[which].data) + at, n, bf16_t(0));
    else
      std::fill_n(static_cast<float*>(out_[which].data) + at, n, 0.0f);
  }

 private:
  const GradientOutputs& out_;
  bool direct_;
  float* sums_[6];
};

}  // namespace kt_moe
