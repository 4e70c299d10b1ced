// The activations of the GGUF few-rows products (dequant_dot.cpp) quantized to int8 as ggml does:
// each row in blocks, q = round(x / d) with d = max|x| / 127 per block (fp32), zero past cols; a
// block holding a NaN or an Inf gets d = NaN and q = 0 (its row's products are NaN).
//   Q8Blocks::k_quant  blocks of 256 (ggml's Q8_K, for the K-quants), with the sums of q over every 16
//                      columns (the K-quants' sub-blocks: their mins and offsets);
//   Q8Blocks::q8_0     blocks of 32 (ggml's Q8_0, for Q8_0 weights), with, per 4 columns (one
//                      vpdpbusd lane), their block's d and -128 times their sum of q (the correction
//                      of the weights' offset to unsigned bytes).
// Every level quantizes alike (the same max, the same fp32 product 127 / max times x rounded to
// nearest even), so the avx2 and the AVX-512 products see the same q and d. AVX2 and AVX-512 levels
// only; compiled per level (level_namespace.hpp).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "formats/gguf/vector_ops.hpp"
#include "kernels/bf16.hpp"
#include "kernels/level_namespace.hpp"
#include "kernels/scratch.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

enum class Q8Blocks { k_quant, q8_0 };

// m rows of ld = cols rounded up to 256 (row i of each array at i * its row length).
struct Q8Activations {
  const int8_t* q;  // [m, ld]
  int64_t ld;
  const float* d;          // k_quant: [m, ld / 256]
  const int16_t* sums16;   // k_quant: [m, ld / 16]
  const float* quad_d;     // q8_0: [m, ld / 4]
  const int32_t* quad_bias;  // q8_0: [m, ld / 4]

  const int8_t* q_at(int i, int col) const { return q + i * ld + col; }
  float d_at(int i, int col) const { return d[i * (ld / 256) + col / 256]; }
  const int16_t* sums16_at(int i, int col) const { return sums16 + i * (ld / 16) + col / 16; }
  const float* quad_d_at(int i, int col) const { return quad_d + i * (ld / 4) + col / 4; }
  const int32_t* quad_bias_at(int i, int col) const { return quad_bias + i * (ld / 4) + col / 4; }
};

namespace q8_detail {

inline size_t aligned(size_t bytes) { return (bytes + 63) / 64 * 64; }

// The scale of a block whose largest magnitude is max_abs, or NaN when it holds a NaN or an Inf
// (non_finite), so that the row's products are NaN, as the unquantized ones would be non-finite
// (vmaxps would drop a NaN); and the factor q = x * factor (0 for such a block and for zeros).
inline float block_scale(bool non_finite, float max_abs, float& factor) {
  factor = !non_finite && max_abs > 0.0f ? 127.0f / max_abs : 0.0f;
  return non_finite ? std::numeric_limits<float>::quiet_NaN() : max_abs / 127.0f;
}

// One block of Groups x 16 columns of row `a` (its first `count` real, the rest zero) into q and its
// d; sums16[j] = the sum of q over columns [16 j, 16 j + 16).
template <int Groups>
inline float quantize_block(const bf16_t* a, int count, int8_t* q, int16_t* sums16) {
#if defined(__AVX512F__)
  constexpr int kNonFinite = 0x01 | 0x08 | 0x10 | 0x80;  // vfpclassps: QNaN, +Inf, -Inf, SNaN
  __m512 x[Groups];
  __m512 amax = _mm512_setzero_ps();
  __mmask16 non_finite = 0;
  for (int j = 0; j < Groups; ++j) {
    const int n = std::clamp(count - 16 * j, 0, 16);
    const __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), a + 16 * j);
    x[j] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // bf16: fp32's upper half
    amax = _mm512_max_ps(amax, _mm512_abs_ps(x[j]));
    non_finite |= _mm512_fpclass_ps_mask(x[j], kNonFinite);
  }
  float factor;
  const float d = block_scale(non_finite, non_finite ? 0.0f : _mm512_reduce_max_ps(amax), factor);
  const __m512 inverse = _mm512_set1_ps(factor);
  for (int j = 0; j < Groups; ++j) {
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(x[j], inverse));  // nearest, |v| <= 127
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * j), _mm512_cvtsepi32_epi8(v));
    sums16[j] = static_cast<int16_t>(_mm512_reduce_add_epi32(v));
  }
  return d;
#else
  // Two passes over the bf16 (the max, then q) instead of 2 Groups registers; a partial block is
  // copied into zeros first.
  bf16_t padded[16 * Groups];
  if (count < 16 * Groups) {
    std::memset(padded, 0, sizeof padded);
    std::memcpy(padded, a, sizeof(bf16_t) * size_t(std::max(count, 0)));
    a = padded;
  }
  auto lanes = [&](int k) {  // columns [8 k, 8 k + 8) as fp32 (bf16: fp32's upper half)
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 8 * k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  };
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i exponent = _mm256_set1_epi32(0x7F800000);
  __m256 amax = _mm256_setzero_ps();
  __m256i non_finite = _mm256_setzero_si256();  // lanes whose exponent is all ones: NaN or Inf
  for (int k = 0; k < 2 * Groups; ++k) {
    const __m256 x = lanes(k);
    amax = _mm256_max_ps(amax, _mm256_and_ps(x, magnitude));
    non_finite = _mm256_or_si256(non_finite, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(x), exponent), exponent));
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  float factor;
  const float d = block_scale(!_mm256_testz_si256(non_finite, non_finite), _mm_cvtss_f32(m), factor);
  const __m256 inverse = _mm256_set1_ps(factor);
  for (int j = 0; j < Groups; ++j) {
    const __m256i v0 = _mm256_cvtps_epi32(_mm256_mul_ps(lanes(2 * j), inverse));  // nearest, |v| <= 127
    const __m256i v1 = _mm256_cvtps_epi32(_mm256_mul_ps(lanes(2 * j + 1), inverse));
    const __m256i words = _mm256_packs_epi32(v0, v1);  // per 128-bit half: v0 0..3, v1 0..3 | v0 4..7, v1 4..7
    const __m128i bytes = _mm_packs_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
    // bytes: v0 0..3, v1 0..3, v0 4..7, v1 4..7 -> columns in order
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * j), _mm_shuffle_epi32(bytes, _MM_SHUFFLE(3, 1, 2, 0)));
    const __m256i sum8 = _mm256_add_epi32(v0, v1);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum8), _mm256_extracti128_si256(sum8, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    sums16[j] = static_cast<int16_t>(_mm_cvtsi128_si32(s));
  }
  return d;
#endif
}

}  // namespace q8_detail

// a: bf16 [m, cols] (row stride lda), in the thread's ScratchSlot::packed.
inline Q8Activations q8_activations(const bf16_t* a, int64_t lda, int m, int cols, Q8Blocks blocks) {
  using q8_detail::aligned;
  const int64_t ld = (int64_t(cols) + 255) / 256 * 256, count = int64_t(m) * ld;
  const bool k_quant = blocks == Q8Blocks::k_quant;
  const size_t q_bytes = aligned(size_t(count));
  const size_t d_bytes = k_quant ? aligned(sizeof(float) * size_t(count / 256)) : 0;
  const size_t sums_bytes = aligned(sizeof(int16_t) * size_t(count / 16));
  const size_t quad_bytes = k_quant ? 0 : sizeof(int32_t) * size_t(count / 4);
  auto* base = static_cast<uint8_t*>(thread_scratch(ScratchSlot::packed, q_bytes + d_bytes + sums_bytes + 2 * quad_bytes));
  auto* q = reinterpret_cast<int8_t*>(base);
  auto* d = k_quant ? reinterpret_cast<float*>(base + q_bytes) : nullptr;
  auto* sums16 = reinterpret_cast<int16_t*>(base + q_bytes + d_bytes);
  auto* quad_d = k_quant ? nullptr : reinterpret_cast<float*>(base + q_bytes + sums_bytes);
  auto* quad_bias = k_quant ? nullptr : reinterpret_cast<int32_t*>(base + q_bytes + sums_bytes + quad_bytes);
  for (int i = 0; i < m; ++i) {
    const bf16_t* row = a + i * lda;
    for (int64_t c = 0; c < ld; c += k_quant ? 256 : 32) {
      const int real = int(std::clamp<int64_t>(cols - c, 0, 256));
      const int64_t at = i * ld + c;
      if (k_quant) {
        d[at / 256] = q8_detail::quantize_block<16>(row + c, real, q + at, sums16 + at / 16);
      } else {
        const float block_d = q8_detail::quantize_block<2>(row + c, real, q + at, sums16 + at / 16);
        std::fill(quad_d + at / 4, quad_d + at / 4 + 8, block_d);
      }
    }
  }
  if (!k_quant)  // -128 times the sums of q per 4 columns (count is a multiple of 256)
    for (int64_t c = 0; c < count; c += Vec::kBytes) {
      const Vec::I quad_sums = Vec::dpbusd(Vec::zero(), Vec::ones8(), Vec::load(q + c));
      Vec::store_i(quad_bias + c / 4, Vec::sub(Vec::zero(), Vec::slli(quad_sums, 7)));
    }
  return {q, ld, d, k_quant ? sums16 : nullptr, quad_d, quad_bias};
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
