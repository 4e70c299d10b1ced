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

// float_to_bf16 of 16 floats.
static inline __m256i float_to_bf16(__m512 v) { return _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_rounded_lanes(v), 16)); }

}  // namespace kt_moe
