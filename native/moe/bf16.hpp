// Scalar bf16 <-> fp32 conversions (round to nearest even) for the engines' elementwise code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_bf16.hpp"  // bf16_t

namespace kt_moe {

inline float bf16_to_float(bf16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline bf16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return bf16_t((bits >> 16) | 0x40u);  // NaN stays NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return bf16_t(bits >> 16);
}

// dst[i] = bf16(src[i]) for i < n.
inline void to_bf16(const float* src, bf16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
}

}  // namespace kt_moe
