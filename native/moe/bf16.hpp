// Whole arrays to bf16 for the engines' elementwise code, with the scalar conversions of
// kernels/bf16.hpp (round to nearest even, NaN kept NaN).
#pragma once

#include <cstddef>

#include "kernels/bf16.hpp"

namespace kt_moe {

// dst[i] = bf16(src[i]) for i < n.
inline void to_bf16(const float* src, bf16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
}

}  // namespace kt_moe
