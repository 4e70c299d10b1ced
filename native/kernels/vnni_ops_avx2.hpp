// The integer dot products of the quantized GEMMs at the avx2 level (formats/*/gemm_avx2.cpp over
// quant_gemm_vnni_loop.hpp) on 256-bit vectors, the AVX2 counterpart of vnni_ops.hpp: the
// weights are the packed quads (one ymm = 8 columns x 4 k, byte 4 c + i = column c, k i of the
// quad), the activation quad's 4 bytes are broadcast to every int32 lane. AVX2 has no vpdpbusd,
// and its byte product vpmaddubsw (u8 x s8, each pair of products summed into an int16) SATURATES
// when a pair sum leaves [-32768, 32767]; which form is exact depends on the operands' ranges:
//   int8_channel  stored bytes q + 128 in 0..255 against activations in -127..127: a pair reaches
//                 2 * 255 * 127 = 64770, so vpmaddubsw would saturate. The even and odd bytes of
//                 each int32 lane are widened to 16-bit words instead (weights zero-extended,
//                 activations sign-extended) and multiplied by vpmaddwd, whose int16 x int16 pair
//                 sums go into int32 exactly: WordPairs, dot_words (vnni_ops.hpp's AVX512-BW form
//                 of dpbusd).
//   int4_group16  codes 0..15: a pair is at most 2 * 15 * 127 = 3810, so vpmaddubsw is exact, and
//                 the int16 words may even add up the 4 quads of a 16-k group (8 products, at most
//                 8 * 15 * 127 = 15240) before one vpmaddwd by ones widens them to int32:
//                 dot_nibbles, sum_word_pairs.
// Compiled at the avx2 level only (level_namespace.hpp).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/level_namespace.hpp"
#include "kernels/quant_layout.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

// A packed quad (16 columns) is two ymm halves: columns 8 h .. 8 h + 7 at byte 32 h.
constexpr int kHalfCols = quant_layout::kCols / 2;
constexpr int kHalfQuadBytes = quant_layout::kQuadBytes / 2;

// ---- int8 x int8 through 16-bit words (operands up to 255 x 127) -------------------------------

// A vector's bytes as 16-bit words: `even` holds bytes 0 and 2 of every int32 lane, `odd` bytes 1
// and 3.
struct WordPairs {
  __m256i even, odd;
};

// Unsigned bytes (the stored weights), zero-extended.
inline WordPairs unsigned_words(__m256i v) {
  return {_mm256_and_si256(v, _mm256_set1_epi16(0x00FF)), _mm256_srli_epi16(v, 8)};
}

// Signed bytes (the activations), sign-extended.
inline WordPairs signed_words(__m256i v) {
  return {_mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8), _mm256_srai_epi16(v, 8)};
}

// acc[lane] += sum_i w.byte[4 lane + i] * a.byte[4 lane + i], exact (each vpmaddwd product is at
// most 255 * 128 in magnitude, each pair sum fits int32): dpbusd of w unsigned and a signed.
inline __m256i dot_words(__m256i acc, const WordPairs& w, const WordPairs& a) {
  return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(w.even, a.even), _mm256_madd_epi16(w.odd, a.odd)));
}

// The signed words of the 16 quads of one 64-k activation unit, each quad's even and odd word
// pairs as one int32, so that one broadcast from memory (vpbroadcastd) gives a quad's operand of
// dot_words: computed once per row and unit, used for every weight vector of the unit.
struct QuadWords {
  int32_t even[quant_layout::kUnitQuads], odd[quant_layout::kUnitQuads];
};

// x [64]: one activation unit (int8).
inline void quad_words(const int8_t* x, QuadWords& out) {
  for (int i = 0; i < quant_layout::kUnitQuads; i += 8) {  // 8 quads per ymm
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + quant_layout::kQuadK * i));
    const WordPairs p = signed_words(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.even + i), p.even);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.odd + i), p.odd);
  }
}

// Quad j of the unit in every lane.
inline WordPairs broadcast_words(const QuadWords& q, int j) {
  return {_mm256_set1_epi32(q.even[j]), _mm256_set1_epi32(q.odd[j])};
}

// ---- small unsigned x int8 through vpmaddubsw (operands up to 15 x 127) ------------------------

// acc.word[2 lane + t] += w.byte[4 lane + 2 t] * a.byte[4 lane + 2 t] + w.byte[4 lane + 2 t + 1] *
// a.byte[4 lane + 2 t + 1] (w unsigned, a signed): exact only while every pair sum and the
// accumulated word stay within int16 (the callers' codes are 0..15, see above).
inline __m256i dot_nibbles(__m256i acc, __m256i w, __m256i a) {
  return _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, a));
}

// int16 words -> int32 lanes: lane = word 2 lane + word 2 lane + 1 (exact).
inline __m256i sum_word_pairs(__m256i v) { return _mm256_madd_epi16(v, _mm256_set1_epi16(1)); }

// ---- operands and results ----------------------------------------------------------------------

// The 4 bytes at p in every lane.
inline __m256i broadcast_quad(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm256_set1_epi32(v);
}

// The 8 bytes at p as int32 lanes (unsigned).
inline __m256i widen_u8(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// int32 -> fp32 lanes (the integer sums to their scales).
inline __m256 to_float(__m256i v) { return _mm256_cvtepi32_ps(v); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
