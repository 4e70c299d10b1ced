// IEEE half precision (the scales of the INT4 formats, kt_moe.quant) read as fp32: a portable
// scalar conversion, exact for every half value (subnormals, infinities and NaN included), for
// the code that has no F16C / AVX-512 (the vector levels use vcvtph2ps, which gives the same bits).
#pragma once

#include <cstdint>
#include <cstring>

namespace kt_moe {

using fp16_t = uint16_t;  // the bits of an IEEE binary16 value

static inline float fp16_to_float(fp16_t h) {  // static: each translation unit (ISA flags) its own copy
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu, bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf / NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);  // normal: rebias 15 -> 127
  } else if (mantissa == 0) {
    bits = sign;  // +-0
  } else {  // subnormal: mantissa * 2^-24, normalised
    exponent = 113u;
    while (!(mantissa & 0x400u)) mantissa <<= 1, --exponent;
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace kt_moe
