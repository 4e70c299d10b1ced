// The activations of the GGUF few-rows products (dequant_dot.cpp) quantized to int8 as ggml does:
// each row in blocks, q = round(x / d) with d = max|x| / 127 per block (fp32), zero past cols; a
// block holding a NaN or an Inf gets d = NaN and q = 0 (its row's products are NaN).
//   Q8Blocks::k_quant  blocks of 256 (ggml's Q8_K, for the K-quants), with the sums of q over every 16
//                      columns (the K-quants' sub-blocks: their mins and offsets);
//   Q8Blocks::q8_0     blocks of 32 (ggml's Q8_0, for Q8_0 weights), with, per 4 columns (one
//                      vpdpbusd lane), their block's d and -128 times their sum of q (the correction
//                      of the weights' offset to unsigned bytes).
// AVX-512 levels only; compiled per level (level_namespace.hpp).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "kernels/bf16.hpp"
#include "kernels/level_namespace.hpp"
#include "kernels/scratch.hpp"
#include "kernels/vnni_ops.hpp"

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

// One block of Groups x 16 columns of row `a` (its first `count` real, the rest zero) into q and its
// d; sums16[j] = the sum of q over columns [16 j, 16 j + 16).
template <int Groups>
inline float quantize_block(const bf16_t* a, int count, int8_t* q, int16_t* sums16) {
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
  // A block holding a NaN or an Inf: d = NaN and q = 0, so that the row's products are NaN, as the
  // unquantized ones would be non-finite (vmaxps would drop a NaN).
  const float max_abs = non_finite ? std::numeric_limits<float>::quiet_NaN() : _mm512_reduce_max_ps(amax);
  const __m512 inverse = _mm512_set1_ps(!non_finite && max_abs > 0.0f ? 127.0f / max_abs : 0.0f);
  for (int j = 0; j < Groups; ++j) {
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(x[j], inverse));  // nearest, |v| <= 127
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * j), _mm512_cvtsepi32_epi8(v));
    sums16[j] = static_cast<int16_t>(_mm512_reduce_add_epi32(v));
  }
  return max_abs / 127.0f;
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
  if (!k_quant) {
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t c = 0; c < count; c += 64) {
      const __m512i quad_sums = dpbusd(_mm512_setzero_si512(), ones, _mm512_loadu_si512(q + c));
      _mm512_storeu_si512(quad_bias + c / 4, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(quad_sums, 7)));
    }
  }
  return {q, ld, d, k_quant ? sums16 : nullptr, quad_d, quad_bias};
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
