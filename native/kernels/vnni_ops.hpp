// The integer dot-product instructions of AVX512-VNNI, with their AVX512-BW equivalents for the
// AVX-512 level without VNNI (the same int32 results, exactly), and the operand and result helpers
// around them: the quantized GEMMs (quant_gemm_vnni_loop.hpp) and the GGUF products
// (formats/gguf/dequant_dot.cpp, dequant_gemm.cpp). The avx2 level's counterparts are in
// vnni_ops_avx2.hpp. Compiled per AVX-512 level (level_namespace.hpp).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

// acc[lane] += sum_i w.byte[4 lane + i] (unsigned) * a.byte[4 lane + i] (signed).
inline __m512i dpbusd(__m512i acc, __m512i w, __m512i a) {
#if defined(__AVX512VNNI__)
  return _mm512_dpbusd_epi32(acc, w, a);
#else
  const __m512i w_even = _mm512_and_si512(w, _mm512_set1_epi16(0x00FF)), w_odd = _mm512_srli_epi16(w, 8);
  const __m512i a_even = _mm512_srai_epi16(_mm512_slli_epi16(a, 8), 8), a_odd = _mm512_srai_epi16(a, 8);
  return _mm512_add_epi32(acc, _mm512_add_epi32(_mm512_madd_epi16(w_even, a_even), _mm512_madd_epi16(w_odd, a_odd)));
#endif
}

// dpbusd for weight bytes in 0..15 (int4 codes taken from their nibbles): without VNNI,
// vpmaddubsw's pair sums (at most 2 * 15 * 128 in magnitude) are exact in int16, so two
// instructions do what the general form widens both operands for.
inline __m512i dpbusd_nibbles(__m512i acc, __m512i w, __m512i a) {
#if defined(__AVX512VNNI__)
  return _mm512_dpbusd_epi32(acc, w, a);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(w, a), _mm512_set1_epi16(1)));
#endif
}

// acc[lane] += p.word[2 lane] * s.word[2 lane] + p.word[2 lane + 1] * s.word[2 lane + 1] (signed).
inline __m512i dpwssd(__m512i acc, __m512i p, __m512i s) {
#if defined(__AVX512VNNI__)
  return _mm512_dpwssd_epi32(acc, p, s);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(p, s));
#endif
}

// int32 -> fp32 lanes (the integer sums to their scales). The masked form: GCC 12 warns
// (-Wmaybe-uninitialized) about the undefined source vector of the unmasked intrinsic.
inline __m512 to_float(__m512i v) { return _mm512_maskz_cvtepi32_ps(0xFFFF, v); }

// The 16 bytes at p as int32 lanes (unsigned). The masked form: GCC 12 warns
// (-Wmaybe-uninitialized) about the undefined source vector of the unmasked intrinsic.
inline __m512i widen_u8(const uint8_t* p) {
  return _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// The 4 bytes at p in every lane (the broadcast operand of vpdpbusd).
inline __m512i broadcast_quad(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm512_set1_epi32(v);
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
