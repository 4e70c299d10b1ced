// IEEE half precision (the scales of the INT4 formats, kt_moe.quant) read as fp32: a portable
// scalar conversion, exact for every half value (subnormals, infinities and NaN included), for
// the code that has no F16C / AVX-512 (the vector levels use vcvtph2ps, which gives the same bits);
// and fp32 rounded to half (to nearest even, as torch's .to(torch.float16)).
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

static inline fp16_t float_to_fp16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const fp16_t sign = fp16_t((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return fp16_t(sign | 0x7e00u);  // NaN: quiet NaN
  if (magnitude >= 0x477ff000u) return fp16_t(sign | 0x7c00u);  // 65520 and up round to Inf
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half, in units of 2^-24
    float units;
    const uint32_t scaled = magnitude + (24u << 23);  // times 2^24, exact for a normal fp32
    std::memcpy(&units, &scaled, sizeof units);
    if (magnitude < 0x00800000u) return sign;  // fp32 subnormal: far below half a unit
    const float rounded = (units + 8388608.0f) - 8388608.0f;  // to an integer, ties to even (units < 1024)
    return fp16_t(sign | uint32_t(rounded));
  }
  // normal: rebias the exponent 127 -> 15 and round the mantissa to 10 bits, ties to even (a carry
  // reaches the exponent)
  return fp16_t(sign | ((magnitude - (112u << 23) + 0xfffu + ((magnitude >> 13) & 1u)) >> 13));
}

}  // namespace kt_moe
