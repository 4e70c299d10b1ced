// A caller's buffer that an engine fills from fp32 values: bf16 (rounded to nearest even) or fp32
// (as computed). The engines' outputs and grad_input ([q, H] rows: fp32 lets expert parallel add
// the ranks' partial rows before rounding once) and the LoRA gradients use it.
#pragma once

#include <cstddef>
#include <cstring>

#include "moe/bf16.hpp"

namespace kt_moe {

struct FloatOutput {
  void* data = nullptr;
  bool bf16 = true;

  // Elements [at, at + n) = src[0, n).
  void store(size_t at, const float* src, size_t n) const {
    if (bf16)
      to_bf16(src, static_cast<bf16_t*>(data) + at, n);
    else
      std::memcpy(static_cast<float*>(data) + at, src, n * sizeof(float));
  }
};

}  // namespace kt_moe
