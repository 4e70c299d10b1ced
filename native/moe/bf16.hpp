// Scalar bf16 <-> fp32 conversions (round to nearest even) for the engines' elementwise code.
#pragma once

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

}  // namespace kt_moe
