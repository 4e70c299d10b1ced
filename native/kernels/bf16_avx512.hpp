// The AVX-512 (F/BW) form of kernels/bf16.hpp's float_to_bf16: the same bits in every lane, NaN
// and Inf included. For kernel sources compiled with AVX-512 flags only; static like the scalar one.
#pragma once

#if !defined(__AVX512F__)
#error "kernels/bf16_avx512.hpp is for sources compiled with AVX-512 flags"
#endif

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() vectors, which -Wmaybe-uninitialized
// reports (falsely) wherever they are inlined; silenced for the header's own lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace kt_moe {

// Lane i's upper 16 bits = float_to_bf16(v[i]); its lower 16 bits are not meaningful.
static inline __m512i bf16_rounded_lanes(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_or_epi32(rounded, nan, bits, _mm512_set1_epi32(0x00400000));  // NaN: set the quiet bit
}

// 32 words from the upper (odd) words of the 32-bit lanes of lo (elements 0..15) and hi (16..31).
static inline __m512i upper_words(__m512i lo, __m512i hi) {
  const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27,
                                       25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  return _mm512_permutex2var_epi16(lo, odd, hi);
}

// float_to_bf16 of 32 floats: lo (elements 0..15), hi (16..31).
static inline __m512i float_to_bf16(__m512 lo, __m512 hi) {
  return upper_words(bf16_rounded_lanes(lo), bf16_rounded_lanes(hi));
}

}  // namespace kt_moe
