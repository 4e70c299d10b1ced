// Dequantization to bf16 (contract: dequant_bf16.hpp), compiled three times: portable C++ for the
// generic level (no ISA flags) and, from this same source, AVX-512 (F/BW/VL/DQ flags) and
// AVX-512 + AVX512-BF16 (its vcvtneps2bf16 rounds the int4 tables in one instruction, flushing
// denormal results to zero as that level's GEMMs read them anyway). The levels give the same bits
// (but for such denormals).
//   int8, AVX-512: 32 columns per step: q to fp32 (exact), whose high halves are q as bf16 (exact,
//     |q| < 2^8), packed by one permutation; the tail through masked loads and stores.
//   int4, AVX-512: group by group. A group's 16 possible values bf16((code - zero) * scale) are
//     computed once into a table of 32 words (with groups of 32, one table serves two groups: words
//     16..31 hold the second); each step of 32 stored columns (16 bytes of codes) spreads its codes
//     over 32 words in column order and looks them up with one permutation. A step whose columns
//     reach outside [c0, c1) goes through a small buffer.
#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernels/dequant_bf16.hpp"
#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

constexpr int kSymmetricZero = 8;  // the zero point of int4 groups stored without one
constexpr int kInt4Step = 32;      // stored columns per vector step (groups are multiples of it)

// Round to nearest even; the inputs are finite products (an infinite one stays infinite).
inline bf16_t round_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return bf16_t(bits >> 16);
}

#if defined(__AVX512F__)

// Bytes ahead of the current one whose cache lines a step asks for: the stored rows follow each
// other in memory, and one row at a time is too short a stream for the hardware prefetcher to
// keep enough misses in flight (measured: 6.5 GB/s without, on one core).
constexpr int kPrefetchBytes = 4096;

// 32 words from the odd (high) words of the 32-bit lanes of lo (elements 0..15) and hi (16..31).
inline __m512i high_words(__m512i lo, __m512i hi) {
  const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27,
                                       25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  return _mm512_permutex2var_epi16(lo, odd, hi);
}

// kCodeMinusZero[z][k] = k - z: the integer values of the 16 codes of a group with zero point z.
struct CodeMinusZero {
  alignas(64) float v[16][16];
  constexpr CodeMinusZero() : v() {
    for (int z = 0; z < 16; ++z)
      for (int k = 0; k < 16; ++k) v[z][k] = float(k - z);
  }
};
constexpr CodeMinusZero kCodeMinusZero;

// The lookup table of two int4 groups: word k = bf16((k - zero0) * scale0) and word 16 + k =
// bf16((k - zero1) * scale1), k < 16 (one group: pass it twice).
inline __m512i int4_table(float scale0, int zero0, float scale1, int zero1) {
  const __m512 lo = _mm512_mul_ps(_mm512_load_ps(kCodeMinusZero.v[zero0]), _mm512_set1_ps(scale0));
  const __m512 hi = _mm512_mul_ps(_mm512_load_ps(kCodeMinusZero.v[zero1]), _mm512_set1_ps(scale1));
#if defined(__AVX512BF16__)
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // round to nearest even (denormals to zero)
#else
  auto rounded = [](__m512 v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    return _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
  };
  return high_words(rounded(lo), rounded(hi));
#endif
}

// 32 stored columns (16 bytes of codes) -> out[32] through a table, from its first group (Second
// false) or its second one. The codes become 32 words in column order: lane i = byte i | byte i <<
// 12, masked to 0x000F000F, holds the even column's code in its low word, the odd one's in its high.
template <bool Second>
inline void int4_step(const uint8_t* codes, __m512i table, bf16_t* out) {
  _mm_prefetch(reinterpret_cast<const char*>(codes) + kPrefetchBytes, _MM_HINT_T0);
  const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  __m512i index = _mm512_ternarylogic_epi32(bytes, _mm512_slli_epi32(bytes, 12), _mm512_set1_epi32(0x000F000F),
                                            0xA8);  // (a | b) & c
  if (Second) index = _mm512_or_si512(index, _mm512_set1_epi16(16));
  _mm512_storeu_si512(out, _mm512_permutexvar_epi16(index, table));
}

void int4_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const int G = w.group, j0 = w.col0 + c0, j1 = w.col0 + c1;
  const int shift = __builtin_ctz(unsigned(G));  // groups are powers of two (32, 64, 128)
  const uint8_t* codes = w.values + r * w.ld_values;
  const float* scale = w.scale + r * w.ld_scale;
  const uint8_t* zero = w.zero ? w.zero + r * w.ld_zero : nullptr;
  auto zero_of = [&](int g) { return zero ? int(zero[g]) : kSymmetricZero; };
  auto table = [&](int g) { return int4_table(scale[g], zero_of(g), scale[g], zero_of(g)); };
  // A step that covers only part of [j0, j1): the first and the last one.
  auto partial = [&](int j) {
    alignas(64) bf16_t part[kInt4Step];
    int4_step<false>(codes + j / 2, table(j >> shift), part);
    const int lo = std::max(j, j0), hi = std::min(j + kInt4Step, j1);
    std::memcpy(dst + (lo - j0), part + (lo - j), sizeof(bf16_t) * (hi - lo));
  };
  int j = j0 / kInt4Step * kInt4Step;
  if (j < j0) {
    partial(j);
    j += kInt4Step;
  }
  const int body_end = j1 / kInt4Step * kInt4Step;
  if (G == kInt4Step)  // one step per group: two groups share a table
    for (; j + 2 * kInt4Step <= body_end; j += 2 * kInt4Step) {
      const int g = j >> shift;
      const __m512i t = int4_table(scale[g], zero_of(g), scale[g + 1], zero_of(g + 1));
      int4_step<false>(codes + j / 2, t, dst + (j - j0));
      int4_step<true>(codes + j / 2 + kInt4Step / 2, t, dst + (j + kInt4Step - j0));
    }
  while (j < body_end) {  // whole steps, group by group
    const __m512i t = table(j >> shift);
    const int group_end = std::min(((j >> shift) + 1) << shift, body_end);
    for (; j < group_end; j += kInt4Step) int4_step<false>(codes + j / 2, t, dst + (j - j0));
  }
  if (j < j1) partial(j);
}

void int8_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const int8_t* q = reinterpret_cast<const int8_t*>(w.values + r * w.ld_values);
  for (int c = c0; c < c1; c += 32) {
    const int n = std::min(32, c1 - c);
    const __mmask32 mask = n == 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((uint64_t(1) << n) - 1);
    _mm_prefetch(reinterpret_cast<const char*>(q + c) + kPrefetchBytes, _MM_HINT_T0);
    const __m256i v = _mm256_maskz_loadu_epi8(mask, q + c);
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(v)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(v, 1)));
    _mm512_mask_storeu_epi16(dst + (c - c0), mask, high_words(_mm512_castps_si512(lo), _mm512_castps_si512(hi)));
  }
}

#else

void int4_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const uint8_t* codes = w.values + r * w.ld_values;
  const float* scale = w.scale + r * w.ld_scale;
  const uint8_t* zero = w.zero ? w.zero + r * w.ld_zero : nullptr;
  for (int c = c0; c < c1; ++c) {
    const int j = w.col0 + c, g = j / w.group;
    const int code = (j & 1) ? codes[j >> 1] >> 4 : codes[j >> 1] & 0xF;
    dst[c - c0] = round_bf16(float(code - (zero ? zero[g] : kSymmetricZero)) * scale[g]);
  }
}

void int8_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const int8_t* q = reinterpret_cast<const int8_t*>(w.values + r * w.ld_values);
  for (int c = c0; c < c1; ++c) dst[c - c0] = round_bf16(float(q[c]));
}

#endif

}  // namespace

void dequant_bf16(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld) {
  if (c0 >= c1) return;
  for (int r = r0; r < r1; ++r) {
    bf16_t* row = dst + (r - r0) * ld;
    if (w.format == DequantFormat::int8_channel)
      int8_row(w, r, c0, c1, row);
    else
      int4_row(w, r, c0, c1, row);
  }
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
