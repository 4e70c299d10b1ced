// The GGUF block types' decoders (layouts: gguf_blocks.hpp): decode(T{}, block, w) writes the QK
// weights of one block of type T as fp32, exactly as gguf's dequantizer computes them. For the kernel
// sources only: compiled per level, in its namespace (level_namespace.hpp), so that no level's copy of
// these inline functions is merged into another level's callers. Portable C++, but Q4_K, Q5_K and Q6_K
// in the level's vectors (vector_ops.hpp) at avx2 and the AVX-512 levels, where the codes' helpers
// (k45_codes, q6_k_unsigned_codes) also serve the products.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "formats/gguf/gguf_blocks.hpp"
#if defined(__AVX2__)
#include "formats/gguf/vector_ops.hpp"
#endif
#include "kernels/fp16.hpp"
#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace gguf_decode {

// The fp16 at p as fp32 (vcvtph2ps at the AVX-512 levels and, F16C's, at avx2: the same value as
// the portable conversion).
inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if defined(__AVX512F__)
  return _mm512_cvtss_f32(_mm512_cvtph_ps(_mm256_zextsi128_si256(_mm_cvtsi32_si128(h))));
#elif defined(__F16C__)
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
#else
  return fp16_to_float(h);
#endif
}

inline int nibble(const uint8_t* qs, int j) { return j < 16 ? qs[j] & 0xF : qs[j - 16] >> 4; }

inline int high_bit(const uint8_t* qh, int j) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  return int(bits >> j) & 1;
}

inline void decode(gguf_blocks::Q8_0, const uint8_t* b, float* w) {
  const float d = half_at(b);
  for (int j = 0; j < gguf_blocks::Q8_0::QK; ++j) w[j] = d * float(int8_t(b[2 + j]));
}

inline void decode(gguf_blocks::Q4_0, const uint8_t* b, float* w) {
  const float d = half_at(b);
  for (int j = 0; j < gguf_blocks::Q4_0::QK; ++j) w[j] = d * float(nibble(b + 2, j) - 8);
}

inline void decode(gguf_blocks::Q4_1, const uint8_t* b, float* w) {
  const float d = half_at(b), m = half_at(b + 2);
  for (int j = 0; j < gguf_blocks::Q4_1::QK; ++j) w[j] = d * float(nibble(b + 4, j)) + m;
}

inline void decode(gguf_blocks::Q5_0, const uint8_t* b, float* w) {
  const float d = half_at(b);
  for (int j = 0; j < gguf_blocks::Q5_0::QK; ++j) w[j] = d * float((nibble(b + 6, j) | high_bit(b + 2, j) << 4) - 16);
}

inline void decode(gguf_blocks::Q5_1, const uint8_t* b, float* w) {
  const float d = half_at(b), m = half_at(b + 2);
  for (int j = 0; j < gguf_blocks::Q5_1::QK; ++j) w[j] = d * float(nibble(b + 8, j) | high_bit(b + 4, j) << 4) + m;
}

// IQ4's 16 non-uniform levels.
constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

inline void decode(gguf_blocks::IQ4_NL, const uint8_t* b, float* w) {
  const float d = half_at(b);
  for (int j = 0; j < gguf_blocks::IQ4_NL::QK; ++j) w[j] = d * float(kIq4Values[nibble(b + 2, j)]);
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block i (0..7) from the 12 packed bytes.
inline void k_scale_min(const uint8_t* s, int i, int& scale, int& min) {
  if (i < 4) {
    scale = s[i] & 63;
    min = s[i + 4] & 63;
  } else {
    scale = (s[i + 4] & 0xF) | ((s[i - 4] >> 6) << 4);
    min = (s[i + 4] >> 4) | ((s[i] >> 6) << 4);
  }
}

inline void decode(gguf_blocks::Q2_K, const uint8_t* b, float* w) {
  const uint8_t *scales = b, *qs = b + 16;
  const float d = half_at(b + 80), dmin = half_at(b + 82);
  for (int j = 0; j < gguf_blocks::Q2_K::QK; ++j) {
    const int h = j / 128, s = (j % 128) / 32, l = j % 32, sc = scales[j / 16];
    w[j] = d * float(sc & 0xF) * float(qs[32 * h + l] >> (2 * s) & 3) - dmin * float(sc >> 4);
  }
}

inline void decode(gguf_blocks::Q3_K, const uint8_t* b, float* w) {
  const uint8_t *hmask = b, *qs = b + 32, *scales = b + 96;
  const float d = half_at(b + 108);
  int sc[16];
  for (int i = 0; i < 16; ++i) {
    const int low = (i < 8 ? scales[i] : scales[i - 8] >> 4) & 0xF;
    const int high = scales[8 + i % 4] >> (2 * (i / 4)) & 3;
    sc[i] = (low | high << 4) - 32;
  }
  for (int j = 0; j < gguf_blocks::Q3_K::QK; ++j) {
    const int h = j / 128, s = (j % 128) / 32, l = j % 32;
    const int q = (qs[32 * h + l] >> (2 * s) & 3) - ((hmask[l] >> (j / 32) & 1) ? 0 : 4);
    w[j] = d * float(sc[j / 16]) * float(q);
  }
}

// Q4_K / Q5_K: the eight 6-bit scales and mins (k_scale_min of sub-blocks 0..7) as bytes 0..7.
inline void k_scales_mins(const uint8_t* s, uint64_t& scales, uint64_t& mins) {
  uint32_t w[3];
  std::memcpy(w, s, 12);
  const uint32_t low6 = 0x3F3F3F3Fu, low4 = 0x0F0F0F0Fu, low2 = 0x03030303u;
  scales = (w[0] & low6) | uint64_t((w[2] & low4) | ((w[0] >> 6) & low2) << 4) << 32;
  mins = (w[1] & low6) | uint64_t(((w[2] >> 4) & low4) | ((w[1] >> 6) & low2) << 4) << 32;
}

template <bool HighBit>  // Q4_K, or Q5_K: a fifth bit from qh
inline void decode_k45(const uint8_t* b, float* w) {
  const float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + (HighBit ? 48 : 16);
  for (int i = 0; i < 8; ++i) {
    int scale, min;
    k_scale_min(scales, i, scale, min);
    const float ds = d * float(scale), dm = dmin * float(min);
    for (int j = 32 * i; j < 32 * i + 32; ++j) {
      const int l = j % 32;
      int q = qs[32 * (j / 64) + l] >> (4 * ((j % 64) / 32)) & 0xF;
      if (HighBit) q |= (qh[l] >> i & 1) << 4;
      w[j] = ds * float(q) - dm;
    }
  }
}

#if defined(__AVX2__)
// Q4_K / Q5_K: the codes of sub-blocks 2 pair (codes[0], from the low nibbles) and 2 pair + 1
// (codes[1]) of a block, 32 bytes each, in weight order: 0..15, or 0..31 with Q5_K's fifth bit
// (bit i of qh byte l for weight l of sub-block i).
template <bool HighBit>
inline void k45_codes(const uint8_t* b, int pair, __m256i codes[2]) {
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + (HighBit ? 48 : 16) + 32 * pair));
  codes[0] = _mm256_and_si256(bytes, low_nibbles);
  codes[1] = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low_nibbles);
  if (HighBit) {
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16)), one = _mm256_set1_epi8(1);
    for (int half = 0; half < 2; ++half) {  // bit 2 pair + half of each byte, to bit 4
      const __m256i bit = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * pair + half), one);
      codes[half] = _mm256_or_si256(codes[half], _mm256_slli_epi16(bit, 4));
    }
  }
}

// Q6_K: the unsigned codes u (0..63) of weights [32 chunk, 32 chunk + 32) of a block, in weight order.
inline __m256i q6_k_unsigned_codes(const uint8_t* b, int chunk) {
  const int h = chunk / 4, s = chunk % 4;
  const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * h + 32 * (s % 2)));
  const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * h));
  const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(ql, 4 * (s / 2)), _mm256_set1_epi8(0x0F));
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * s), _mm256_set1_epi8(0x03));
  return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
}

// Q6_K: the signed codes (u - 32) of the same weights.
inline __m256i q6_k_codes(const uint8_t* b, int chunk) {
  return _mm256_sub_epi8(q6_k_unsigned_codes(b, chunk), _mm256_set1_epi8(32));
}

// Q4_K / Q5_K in the level's vectors (vector_ops.hpp): the same values (d sc q is exact in fp32, so
// w is rounded once whether the subtraction is fused or not, as in decode_k45).
template <bool HighBit>
inline void decode_k45_vectors(const uint8_t* b, float* w) {
  const float d = half_at(b), dmin = half_at(b + 2);
  for (int pair = 0; pair < 4; ++pair) {
    __m256i codes[2];
    k45_codes<HighBit>(b, pair, codes);
    for (int half = 0; half < 2; ++half) {
      int scale, min;
      k_scale_min(b + 4, 2 * pair + half, scale, min);
      const Vec::F ds = Vec::set1(d * float(scale)), dm = Vec::set1(dmin * float(min));
      float* out = w + 64 * pair + 32 * half;
      for (int k = 0; k < 32 / Vec::kLanes; ++k)
        Vec::store_f(out + Vec::kLanes * k, Vec::fmsub(Vec::u8_lanes(codes[half], k), ds, dm));
    }
  }
}
inline void decode(gguf_blocks::Q4_K, const uint8_t* b, float* w) { decode_k45_vectors<false>(b, w); }
inline void decode(gguf_blocks::Q5_K, const uint8_t* b, float* w) { decode_k45_vectors<true>(b, w); }

// Q6_K in the level's vectors: the same products, (d sc) q, in the same order.
inline void decode(gguf_blocks::Q6_K, const uint8_t* b, float* w) {
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half_at(b + 208);
  for (int chunk = 0; chunk < 8; ++chunk) {
    const __m256i q = q6_k_codes(b, chunk);
    for (int k = 0; k < 32 / Vec::kLanes; ++k) {  // scale 2 chunk for the first 16 weights, 2 chunk + 1 after
      const Vec::F ds = Vec::set1(d * float(scales[2 * chunk + Vec::kLanes * k / 16]));
      Vec::store_f(w + 32 * chunk + Vec::kLanes * k, Vec::mul(ds, Vec::i8_lanes(q, k)));
    }
  }
}
#else
inline void decode(gguf_blocks::Q4_K, const uint8_t* b, float* w) { decode_k45<false>(b, w); }
inline void decode(gguf_blocks::Q5_K, const uint8_t* b, float* w) { decode_k45<true>(b, w); }

inline void decode(gguf_blocks::Q6_K, const uint8_t* b, float* w) {
  const uint8_t *ql = b, *qh = b + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half_at(b + 208);
  for (int j = 0; j < gguf_blocks::Q6_K::QK; ++j) {
    const int h = j / 128, k = j % 128, s = k / 32, l = j % 32;
    const int low = ql[64 * h + k % 64] >> (4 * (k / 64)) & 0xF, high = qh[32 * h + l] >> (2 * s) & 3;
    w[j] = d * float(scales[j / 16]) * float((low | high << 4) - 32);
  }
}
#endif

inline void decode(gguf_blocks::IQ4_XS, const uint8_t* b, float* w) {
  const float d = half_at(b);
  uint16_t scales_h;
  std::memcpy(&scales_h, b + 2, 2);
  const uint8_t *scales_l = b + 4, *qs = b + 8;
  for (int sb = 0; sb < 8; ++sb) {
    const int scale = ((scales_l[sb / 2] >> (4 * (sb % 2)) & 0xF) | (scales_h >> (2 * sb) & 3) << 4) - 32;
    const float ds = d * float(scale);
    for (int k = 0; k < 32; ++k) w[32 * sb + k] = ds * float(kIq4Values[qs[16 * sb + k % 16] >> (4 * (k / 16)) & 0xF]);
  }
}

inline void decode(gguf_blocks::F32, const uint8_t* b, float* w) { std::memcpy(w, b, 4); }

inline void decode(gguf_blocks::F16, const uint8_t* b, float* w) { w[0] = half_at(b); }

inline void decode(gguf_blocks::BF16, const uint8_t* b, float* w) {
  uint16_t h;
  std::memcpy(&h, b, 2);
  const uint32_t bits = uint32_t(h) << 16;
  std::memcpy(w, &bits, 4);
}

}  // namespace gguf_decode
}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
