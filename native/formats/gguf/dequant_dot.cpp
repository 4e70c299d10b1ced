// The few-rows products (DequantDotFn, kernels/dequant_bf16.hpp) of the GGUF types a decode reads
// most (gguf_blocks.hpp): Q8_0, Q4_K, Q5_K and Q6_K (the types of Q4_K_M and Q5_K_M files, and
// llama.cpp's fallback for rows that are not whole super-blocks), at the AVX-512 levels; the other types, and slices that do
// not start at a block boundary (col0 != 0), dequantize row blocks instead. As ggml computes them:
// the activations quantized to int8 (q8_activations.hpp: scale da per 256 columns for the K-quants,
// per 32 for Q8_0), each block's integer codes multiplied with them in int32, the block's scales
// applied to the integer sums:
//   Q4_K  sum_j (d sc_j q - dmin m_j) da a = d da sum_j sc_j (sum q a) - dmin da sum_j m_j (sum a)
//         codes 0..15 as the unsigned operand of vpmaddubsw, the sub-blocks' 6-bit scales by vpdpwssd;
//   Q5_K  the same with codes 0..31;
//   Q6_K  d sc_j (u - 32): u 0..63 the same way, minus 32 sc_j (sum a) per 16 weights;
//   Q8_0  d q: q + 128 as the unsigned operand of vpdpbusd, minus 128 (sum a) per 4 weights.
// The integer sums are exact; the scales multiply in fp32. Error: the activations' int8 rounding on
// top of the weights' own.
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "formats/gguf/gguf_decode.hpp"
#include "kernels/dequant_dot_rows.hpp"
#if defined(__AVX512F__)
#include "formats/gguf/q8_activations.hpp"
#include "kernels/quant_kernel_common.hpp"
#endif

namespace kt_moe {
namespace KT_KERNEL_NS {

#if defined(__AVX512F__)

namespace {

// 64 codes from two 32-byte halves: lo in bytes 0..31, hi in 32..63.
inline __m512i join(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_zextsi256_si512(lo), hi, 1); }

// Where w's stored rows end (the prefetch's limit).
inline const uint8_t* end_of(const QuantMatrixView& w) { return w.values + w.rows * w.ld_values; }

// The word index vectors that spread `scales` (words 0..15) over the 32 words of a 64-weight step:
// Q4_K step p: words 0..15 <- 2p, 16..31 <- 2p + 1 (32 weights per scale);
// Q6_K step p: words 8s..8s+7 <- 4p + s (16 weights per scale).
template <int WeightsPerScale>
inline __m512i scale_index(int step) {
  alignas(64) int16_t index[32];
  for (int w = 0; w < 32; ++w) index[w] = static_cast<int16_t>(step * (64 / WeightsPerScale) + 2 * w / WeightsPerScale);
  return _mm512_load_si512(index);
}

template <int WeightsPerScale>
struct ScaleIndex {
  __m512i step[4];
  ScaleIndex() {
    for (int p = 0; p < 4; ++p) step[p] = scale_index<WeightsPerScale>(p);
  }
};

// Q4_K (HighBit false) and Q5_K.
template <bool HighBit, int R>
void k45_row(const QuantMatrixView& w, int n, const Q8Activations& x, const ScaleIndex<32>& index, float* out) {
  constexpr int kBytes = HighBit ? gguf_blocks::Q5_K::Bytes : gguf_blocks::Q4_K::Bytes;
  const uint8_t* row = w.values + n * w.ld_values;
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int c = 0; c < w.cols; c += 256) {
    const uint8_t* block = row + (c / 256) * kBytes;
    prefetch_ahead(block, end_of(w), kBytes);
    const float d = gguf_decode::half_at(block), dmin = gguf_decode::half_at(block + 2);
    uint64_t scale_bytes, min_bytes;
    gguf_decode::k_scales_mins(block + 4, scale_bytes, min_bytes);
    const __m512i scales = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(scale_bytes))));
    const __m128i mins8 = _mm_cvtsi64_si128(int64_t(min_bytes));
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins8, mins8));  // word 2j, 2j + 1: m_j
    __m512i sums[R];
    for (int i = 0; i < R; ++i) sums[i] = _mm512_setzero_si512();
    for (int p = 0; p < 4; ++p) {  // sub-blocks 2p and 2p + 1
      __m256i pair[2];
      gguf_decode::k45_codes<HighBit>(block, p, pair);
      const __m512i codes = join(pair[0], pair[1]);
      const __m512i step_scales = _mm512_permutexvar_epi16(index.step[p], scales);
      for (int i = 0; i < R; ++i) {
        const __m512i a = _mm512_loadu_si512(x.q_at(i, c + 64 * p));
        sums[i] = dpwssd(sums[i], _mm512_maddubs_epi16(codes, a), step_scales);
      }
    }
    for (int i = 0; i < R; ++i) {
      const float da = x.d_at(i, c);
      const __m256i min_sums = _mm256_madd_epi16(mins, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.sums16_at(i, c))));
      acc[i] = _mm512_fmadd_ps(to_float(sums[i]), _mm512_set1_ps(d * da), acc[i]);
      acc[i] = _mm512_fnmadd_ps(to_float(_mm512_zextsi256_si512(min_sums)), _mm512_set1_ps(dmin * da), acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

template <int R>
void q6_k_row(const QuantMatrixView& w, int n, const Q8Activations& x, const ScaleIndex<16>& index, float* out) {
  const uint8_t* row = w.values + n * w.ld_values;
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int c = 0; c < w.cols; c += 256) {
    const uint8_t* block = row + (c / 256) * gguf_blocks::Q6_K::Bytes;
    prefetch_ahead(block, end_of(w), gguf_blocks::Q6_K::Bytes);
    const float d = gguf_decode::half_at(block + 208);
    const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 192)));
    const __m512i scales = _mm512_zextsi256_si512(scales16);
    __m512i sums[R];
    for (int i = 0; i < R; ++i) sums[i] = _mm512_setzero_si512();
    for (int p = 0; p < 4; ++p) {  // weights [64p, 64p + 64): chunks 2p and 2p + 1
      const __m512i codes = join(gguf_decode::q6_k_unsigned_codes(block, 2 * p), gguf_decode::q6_k_unsigned_codes(block, 2 * p + 1));
      const __m512i step_scales = _mm512_permutexvar_epi16(index.step[p], scales);
      for (int i = 0; i < R; ++i) {
        const __m512i a = _mm512_loadu_si512(x.q_at(i, c + 64 * p));
        sums[i] = dpwssd(sums[i], _mm512_maddubs_epi16(codes, a), step_scales);
      }
    }
    for (int i = 0; i < R; ++i) {  // the codes' offset: - 32 sum_j sc_j (sum of its 16 activations)
      const __m256i offset = _mm256_madd_epi16(scales16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.sums16_at(i, c))));
      sums[i] = _mm512_sub_epi32(sums[i], _mm512_zextsi256_si512(_mm256_slli_epi32(offset, 5)));
      acc[i] = _mm512_fmadd_ps(to_float(sums[i]), _mm512_set1_ps(d * x.d_at(i, c)), acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

template <int R>
void q8_0_row(const QuantMatrixView& w, int n, const Q8Activations& x, float* out) {
  const uint8_t* row = w.values + n * w.ld_values;
  const int blocks = (w.cols + 31) / 32;
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  constexpr int64_t kBytes = gguf_blocks::Q8_0::Bytes;
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int col = 0; col < w.cols; col += 64) {  // blocks b and b + 1 (when there is one)
    const int b = col / 32;
    const uint8_t* first = row + b * kBytes;
    const bool second = b + 1 < blocks;
    prefetch_ahead(first, end_of(w), 2 * kBytes);
    const __m256i hi = second ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(first + kBytes + 2)) : _mm256_setzero_si256();
    const __m512i codes = _mm512_xor_si512(join(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(first + 2)), hi), offset);
    const __m512 scales = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(gguf_decode::half_at(first)),
                                               _mm512_set1_ps(second ? gguf_decode::half_at(first + kBytes) : 0.0f));
    for (int i = 0; i < R; ++i) {
      const __m512i sums = dpbusd(_mm512_loadu_si512(x.quad_bias_at(i, col)), codes, _mm512_loadu_si512(x.q_at(i, col)));
      acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(scales, _mm512_loadu_ps(x.quad_d_at(i, col))), to_float(sums), acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

}  // namespace

bool dot_gguf_q8_0(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                   int64_t ldc) {
  if (w.col0 != 0) return false;
  const Q8Activations x = q8_activations(a, lda, m, w.cols, Q8Blocks::q8_0);
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { q8_0_row<r()>(w, n, x, out); });
  return true;
}

bool dot_gguf_q4_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                   int64_t ldc) {
  if (w.col0 != 0) return false;
  const Q8Activations x = q8_activations(a, lda, m, w.cols, Q8Blocks::k_quant);
  const ScaleIndex<32> index;
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { k45_row<false, r()>(w, n, x, index, out); });
  return true;
}

bool dot_gguf_q5_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                   int64_t ldc) {
  if (w.col0 != 0) return false;
  const Q8Activations x = q8_activations(a, lda, m, w.cols, Q8Blocks::k_quant);
  const ScaleIndex<32> index;
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { k45_row<true, r()>(w, n, x, index, out); });
  return true;
}

bool dot_gguf_q6_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                   int64_t ldc) {
  if (w.col0 != 0) return false;
  const Q8Activations x = q8_activations(a, lda, m, w.cols, Q8Blocks::k_quant);
  const ScaleIndex<16> index;
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { q6_k_row<r()>(w, n, x, index, out); });
  return true;
}

#endif

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
