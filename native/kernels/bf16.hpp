// Scalar bf16 <-> fp32 conversions, the one definition every kernel and engine uses. bf16 is the
// upper half of an fp32; rounding to it is round to nearest even, with overflow to +-Inf as that
// rounding gives (above the largest finite bf16 by half an ulp or more), Inf kept Inf and NaN kept
// NaN (quiet, the payload's upper bits kept). The AVX-512 kernels round with kernels/bf16_avx512.hpp
// (the same bits) or vcvtneps2bf16 (the same bits except that it flushes denormals to zero).
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/gemm_bf16.hpp"  // bf16_t

namespace kt_moe {

// static: each translation unit (ISA flags) its own copy, so the linker never hands a caller that
// must run on any x86-64 CPU a copy compiled with AVX-512 flags.
static inline float bf16_to_float(bf16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

static inline bf16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return bf16_t((bits >> 16) | 0x40u);  // NaN: quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // a tie goes to the even upper half; carries reach the exponent
  return bf16_t(bits >> 16);
}

}  // namespace kt_moe
