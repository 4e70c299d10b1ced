// The AVX2 form of kernels/bf16.hpp's float_to_bf16: the same bits in every lane, NaN and Inf
// included (denormals rounded, not flushed). For kernel sources compiled with AVX2 flags only;
// static like the scalar one.
#pragma once

#if !defined(__AVX2__)
#error "kernels/bf16_avx2.hpp is for sources compiled with AVX2 flags"
#endif

#include <immintrin.h>

namespace kt_moe {

// Lane i's upper 16 bits = float_to_bf16(v[i]) where v[i] is not a NaN; the lower 16 bits are not
// meaningful.
static inline __m256i bf16_rounded_non_nan_lanes(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
}

// Lane i's upper 16 bits = float_to_bf16(v[i]); its lower 16 bits are not meaningful.
static inline __m256i bf16_rounded_lanes(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i rounded = bf16_rounded_non_nan_lanes(v);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_or_si256(bits, _mm256_set1_epi32(0x00400000)), nan);  // NaN: quiet bit
}

// 16 words from the upper words of the 32-bit lanes of lo (elements 0..7) and hi (8..15).
static inline __m256i upper_words(__m256i lo, __m256i hi) {
  // packus works per 128-bit half: [lo 0..3, hi 0..3, lo 4..7, hi 4..7] -> reorder the quarters
  const __m256i packed = _mm256_packus_epi32(_mm256_srli_epi32(lo, 16), _mm256_srli_epi32(hi, 16));
  return _mm256_permute4x64_epi64(packed, 0xD8);
}

// float_to_bf16 of 16 floats: lo (elements 0..7), hi (8..15).
static inline __m256i float_to_bf16(__m256 lo, __m256 hi) {
  return upper_words(bf16_rounded_lanes(lo), bf16_rounded_lanes(hi));
}

// The same for 16 floats none of which is a NaN (three operations fewer per 8 lanes).
static inline __m256i non_nan_float_to_bf16(__m256 lo, __m256 hi) {
  return upper_words(bf16_rounded_non_nan_lanes(lo), bf16_rounded_non_nan_lanes(hi));
}

}  // namespace kt_moe
