// Decoding e4m3 bytes (layout.hpp): the byte's sign, then its 7 other bits placed 7 bits up in an
// IEEE half, whose value times 256 is the e4m3 value, exactly, for every normal and subnormal code
// (the two NaN codes decode as +-480). Shared by fp8's dequantizer and its few-rows product.
// Compiled per level (level_namespace.hpp): vcvtph2ps at avx2 and avx512, a table elsewhere.
#pragma once

#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>

#include <cstring>
#endif

#include "kernels/dequant_bf16.hpp"
#include "kernels/fp16.hpp"
#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

constexpr float kFp8HalfUnit = 256.0f;  // e4m3 value = half value * 256

// Stored row r's first byte, and the scales of its block row (blocks of w.group; layout.hpp).
inline const uint8_t* row_values(const QuantMatrixView& w, int r) { return w.values + r * w.ld_values; }
inline const float* block_scales(const QuantMatrixView& w, int r) {
  return static_cast<const float*>(w.scale) + int64_t((w.row0 + r) / w.group) * w.ld_scale;
}

#if defined(__AVX512F__)

// The half patterns of 32 bytes widened to 32 words: the sign from bit 7 to 15 (bit select), the
// other 7 bits up 7 (masked to 0x3F80).
inline __m512i fp8_halves(__m512i words) {
  return _mm512_ternarylogic_epi32(_mm512_set1_epi16(int16_t(0x8000)), _mm512_slli_epi16(words, 8),
                                   _mm512_and_si512(_mm512_slli_epi16(words, 7), _mm512_set1_epi16(0x3F80)),
                                   0xCA);  // a ? b : c, bit by bit
}

// The e4m3 values of the 32 bytes at v (those outside `mask` are not read and give 0), divided by
// 256, exactly: elements 0..15 in lo, 16..31 in hi.
inline void fp8_over_256(const uint8_t* v, __mmask32 mask, __m512& lo, __m512& hi) {
  const __m512i half = fp8_halves(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(mask, v)));
  lo = _mm512_cvtph_ps(_mm512_castsi512_si256(half));
  hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(half, 1));
}

#elif defined(__AVX2__)

// The e4m3 values of 16 bytes divided by 256, exactly: elements 0..7 in lo, 8..15 in hi. The half
// patterns as in the AVX-512 form: the sign from bit 7 to 15, the other 7 bits up 7.
inline void fp8_over_256(__m128i bytes, __m256& lo, __m256& hi) {
  const __m256i words = _mm256_cvtepu8_epi16(bytes);
  const __m256i half = _mm256_or_si256(_mm256_and_si256(_mm256_slli_epi16(words, 8), _mm256_set1_epi16(int16_t(0x8000))),
                                       _mm256_and_si256(_mm256_slli_epi16(words, 7), _mm256_set1_epi16(0x3F80)));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(half));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(half, 1));
}

// The n bytes at v (n >= 16: 16 of them; fewer: zeros after them, nothing past v + n read).
inline __m128i fp8_bytes(const uint8_t* v, int n) {
  if (n >= 16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(v));
  alignas(16) uint8_t part[16] = {};
  std::memcpy(part, v, size_t(n));
  return _mm_load_si128(reinterpret_cast<const __m128i*>(part));
}

#else

// The e4m3 value of every byte.
struct Fp8Table {
  float value[256];
  Fp8Table() {
    for (int b = 0; b < 256; ++b) {
      const fp16_t half = fp16_t(((b & 0x80) << 8) | ((b & 0x7F) << 7));
      value[b] = fp16_to_float(half) * kFp8HalfUnit;
    }
  }
};

inline const Fp8Table& fp8_table() {
  static const Fp8Table table;
  return table;
}

#endif

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
