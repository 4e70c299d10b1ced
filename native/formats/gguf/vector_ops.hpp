// The vector operations the GGUF products (dequant_dot.cpp, dequant_gemm.cpp), their activation
// quantizers (q8_activations.hpp) and the K-quant decoders (gguf_decode.hpp) are written in, one
// struct Vec per level: at the AVX-512 levels 64-byte vectors (16 int32 / fp32 lanes), at avx2
// 32-byte ones (8 lanes). The products are templates over nothing but these, so both levels compute
// the same integer sums and apply the same fp32 scales; only the vector width differs (and, at
// avx2, how exact byte products are formed without vpdpbusd: see dpbusd and dpbusd_small).
// Compiled per level (level_namespace.hpp); for the AVX2 and AVX-512 levels only.
#pragma once

#if !defined(__AVX2__)
#error "formats/gguf/vector_ops.hpp is for sources compiled with AVX2 or AVX-512 flags"
#endif

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "formats/gguf/gguf_blocks.hpp"
#include "kernels/level_namespace.hpp"
#if defined(__AVX512F__)
#include "kernels/vnni_ops.hpp"
#else
#include "kernels/dequant_dot_rows.hpp"
#include "kernels/vnni_ops_avx2.hpp"
#endif

namespace kt_moe {
namespace KT_KERNEL_NS {

#if defined(__AVX512F__)

struct Vec {
  using I = __m512i;
  using F = __m512;
  static constexpr int kLanes = 16, kBytes = 64;

  static I zero() { return _mm512_setzero_si512(); }
  static F zero_f() { return _mm512_setzero_ps(); }
  static I load(const void* p) { return _mm512_loadu_si512(p); }
  static F load_f(const float* p) { return _mm512_loadu_ps(p); }
  static void store_f(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F to_float(I v) { return KT_KERNEL_NS::to_float(v); }
  static F add_f(F a, F b) { return _mm512_add_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static void store_i(void* p, I v) { _mm512_storeu_si512(p, v); }
  static I ones8() { return _mm512_set1_epi8(1); }
  static I sub(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I slli(I v, int n) { return _mm512_slli_epi32(v, n); }
  static I widen(__m256i v) { return _mm512_zextsi256_si512(v); }  // 8 int32 lanes, the rest zero
  static float sum(F v) { return _mm512_reduce_add_ps(v); }
  static I maddubs(I w, I a) { return _mm512_maddubs_epi16(w, a); }
  static I dpwssd(I acc, I p, I s) { return KT_KERNEL_NS::dpwssd(acc, p, s); }
  static I dpbusd(I acc, I w, I a) { return KT_KERNEL_NS::dpbusd(acc, w, a); }  // exact (vnni_ops.hpp)
  static I dpbusd_small(I acc, I w, I a) { return dpbusd(acc, w, a); }
  static I broadcast_quad(const void* p) { return KT_KERNEL_NS::broadcast_quad(p); }

  // The 64 codes of a step of 64 weights given as two halves of 32 (lo: weights 0..31): one vector.
  static constexpr int kParts = 1;
  static I part(const __m256i halves[2], int) { return _mm512_inserti64x4(_mm512_zextsi256_si512(halves[0]), halves[1], 1); }

  // A block's 16 scale words (int16) spread over the words of a step: word w of part 0 of step p
  // gets scale (64 p + 2 w) / WeightsPerScale (one word per pair of weights, vpmaddubsw's output).
  template <int WeightsPerScale>
  struct Spread {
    __m512i index[4], scales;
    Spread() {
      alignas(64) int16_t words[32];
      for (int p = 0; p < 4; ++p) {
        for (int w = 0; w < 32; ++w) words[w] = static_cast<int16_t>((64 * p + 2 * w) / WeightsPerScale);
        index[p] = _mm512_load_si512(words);
      }
    }
    void block(__m256i scales16) { scales = _mm512_zextsi256_si512(scales16); }
    I step(int p, int) const { return _mm512_permutexvar_epi16(index[p], scales); }
  };

  // 32 bytes of codes as fp32, lanes [16 k, 16 k + 16) (k = 0, 1): unsigned or signed bytes.
  static F u8_lanes(__m256i codes, int k) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(half(codes, k))); }
  static F i8_lanes(__m256i codes, int k) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(half(codes, k))); }
  static __m128i half(__m256i v, int k) { return k ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v); }
  static F fmsub(F a, F b, F c) { return _mm512_fmsub_ps(a, b, c); }

  // Q8_0: the codes + 128 (unsigned) of the two blocks at `first` (the second one's only when
  // `second`: else codes 128, against activations that are zero there), and the lanes' scales:
  // those of the first block d0, of the second d1.
  static I q8_0_codes(const uint8_t* first, bool second) {
    constexpr int kBlock = gguf_blocks::Q8_0::Bytes;
    const __m256i hi = second ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(first + kBlock + 2)) : _mm256_setzero_si256();
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(first + 2));
    return _mm512_xor_si512(_mm512_inserti64x4(_mm512_zextsi256_si512(lo), hi, 1), _mm512_set1_epi8(static_cast<char>(0x80)));
  }
  static F q8_0_scales(float d0, float d1) { return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1)); }
};

#else  // avx2

struct Vec {
  using I = __m256i;
  using F = __m256;
  static constexpr int kLanes = 8, kBytes = 32;

  static I zero() { return _mm256_setzero_si256(); }
  static F zero_f() { return _mm256_setzero_ps(); }
  static I load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static F load_f(const float* p) { return _mm256_loadu_ps(p); }
  static void store_f(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F to_float(I v) { return _mm256_cvtepi32_ps(v); }
  static F add_f(F a, F b) { return _mm256_add_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static void store_i(void* p, I v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
  static I ones8() { return _mm256_set1_epi8(1); }
  static I sub(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I slli(I v, int n) { return _mm256_slli_epi32(v, n); }
  static I widen(__m256i v) { return v; }
  static float sum(F v) { return sum_lanes(v); }
  static I maddubs(I w, I a) { return _mm256_maddubs_epi16(w, a); }
  static I dpwssd(I acc, I p, I s) { return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s)); }
  // acc[lane] += sum_i w.byte[4 lane + i] (unsigned) * a.byte[4 lane + i] (signed), exactly for any
  // bytes (Q8_0's codes + 128 included): vpmaddubsw would saturate its int16 pair sums (2 * 255 *
  // 127 > 32767), so the even and odd bytes are widened to words and multiplied by vpmaddwd
  // (vnni_ops_avx2.hpp, as int8_channel's quantized GEMM does).
  static I dpbusd(I acc, I w, I a) { return dot_words(acc, unsigned_words(w), signed_words(a)); }
  // The same for w <= 63 (the K-quants' codes: 0..15, 0..31, 0..63): vpmaddubsw's pair sums are at
  // most 2 * 63 * 128 = 16128 in magnitude, exact in int16; vpmaddwd by ones adds the pairs.
  static I dpbusd_small(I acc, I w, I a) { return dpwssd(acc, maddubs(w, a), _mm256_set1_epi16(1)); }
  static I broadcast_quad(const void* p) {
    int32_t v;
    std::memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
  }

  // A step of 64 weights given as two halves of 32 in two parts.
  static constexpr int kParts = 2;
  static I part(const __m256i halves[2], int part) { return halves[part]; }

  // A block's 16 scale words spread over the words of a part: word w of part h of step p gets scale
  // (64 p + 32 h + 2 w) / WeightsPerScale (32: one scale; 16: words 0..7 one, 8..15 the next).
  template <int WeightsPerScale>
  struct Spread {
    alignas(32) int16_t scales[16];
    void block(__m256i scales16) { _mm256_store_si256(reinterpret_cast<__m256i*>(scales), scales16); }
    I step(int p, int part) const {
      const int s = (64 * p + 32 * part) / WeightsPerScale;
      if (WeightsPerScale == 32) return _mm256_set1_epi16(scales[s]);
      return _mm256_setr_m128i(_mm_set1_epi16(scales[s]), _mm_set1_epi16(scales[s + 1]));
    }
  };

  // 32 bytes of codes as fp32, lanes [8 k, 8 k + 8) (k = 0..3): unsigned or signed bytes.
  static F u8_lanes(__m256i codes, int k) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(quarter(codes, k))); }
  static F i8_lanes(__m256i codes, int k) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(quarter(codes, k))); }
  static __m128i quarter(__m256i v, int k) {  // bytes 8 k .. 8 k + 7 in the low 8
    const __m128i h = k >= 2 ? _mm256_extracti128_si256(v, 1) : _mm256_castsi256_si128(v);
    return k % 2 ? _mm_srli_si128(h, 8) : h;
  }
  static F fmsub(F a, F b, F c) { return _mm256_fmsub_ps(a, b, c); }

  // Q8_0: the codes + 128 (unsigned) of the one block at `first`, and its scale d0 in every lane.
  static I q8_0_codes(const uint8_t* first, bool) {
    return _mm256_xor_si256(load(first + 2), _mm256_set1_epi8(static_cast<char>(0x80)));
  }
  static F q8_0_scales(float d0, float) { return _mm256_set1_ps(d0); }
};

#endif

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
