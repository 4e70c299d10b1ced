// The few-rows products (DequantDotFn, kernels/dequant_bf16.hpp) of the GGUF types a decode reads
// most (gguf_blocks.hpp): Q8_0, Q4_K, Q5_K and Q6_K (the types of Q4_K_M and Q5_K_M files, and
// llama.cpp's fallback for rows that are not whole super-blocks), at avx2 and the AVX-512 levels;
// the other types, and slices that do not start at a block boundary (col0 != 0), dequantize row
// blocks instead. As ggml computes them: the activations quantized to int8 (q8_activations.hpp:
// scale da per 256 columns for the K-quants, per 32 for Q8_0), each block's integer codes
// multiplied with them in int32, the block's scales applied to the integer sums:
//   Q4_K  sum_j (d sc_j q - dmin m_j) da a = d da sum_j sc_j (sum q a) - dmin da sum_j m_j (sum a)
//         codes 0..15 as the unsigned operand of vpmaddubsw (pair sums exact in int16: 2 * 15 *
//         128), the sub-blocks' 6-bit scales by vpmaddwd / vpdpwssd;
//   Q5_K  the same with codes 0..31;
//   Q6_K  d sc_j (u - 32): u 0..63 the same way (2 * 63 * 128 < 32767), minus 32 sc_j (sum a) per
//         16 weights;
//   Q8_0  d q: q + 128 as the unsigned operand of vpdpbusd (at avx2 its exact emulation, even and
//         odd bytes by vpmaddwd: vpmaddubsw would saturate), minus 128 (sum a) per 4 weights.
// One template per type over the level's vectors (vector_ops.hpp: 64 weights per step in one zmm,
// or two ymm at avx2), so every level computes the same integer sums. They are exact; the scales
// multiply in fp32 (summed in a different order per width). Error: the activations' int8 rounding
// on top of the weights' own.
#include <cstdint>

#include "formats/gguf/gguf_decode.hpp"
#include "kernels/dequant_dot_rows.hpp"
#if defined(__AVX2__)
#include "formats/gguf/q8_activations.hpp"
#include "formats/gguf/vector_ops.hpp"
#include "kernels/quant_kernel_common.hpp"
#endif

namespace kt_moe {
namespace KT_KERNEL_NS {

#if defined(__AVX2__)

namespace {

// Where w's stored rows end (the prefetch's limit).
inline const uint8_t* end_of(const QuantMatrixView& w) { return w.values + w.rows * w.ld_values; }

// Q4_K (HighBit false) and Q5_K.
template <bool HighBit, int R>
void k45_row(const QuantMatrixView& w, int n, const Q8Activations& x, Vec::Spread<32>& spread,
             float* out) {
  constexpr int kBytes = HighBit ? gguf_blocks::Q5_K::Bytes : gguf_blocks::Q4_K::Bytes;
  const uint8_t* row = w.values + n * w.ld_values;
  Vec::F acc[R];
  for (int i = 0; i < R; ++i) acc[i] = Vec::zero_f();
  for (int c = 0; c < w.cols; c += 256) {
    const uint8_t* block = row + (c / 256) * kBytes;
    prefetch_ahead(block, end_of(w), kBytes);
    const float d = gguf_decode::half_at(block), dmin = gguf_decode::half_at(block + 2);
    uint64_t scale_bytes, min_bytes;
    gguf_decode::k_scales_mins(block + 4, scale_bytes, min_bytes);
    spread.block(_mm256_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(scale_bytes))));
    const __m128i mins8 = _mm_cvtsi64_si128(int64_t(min_bytes));
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins8, mins8));  // word 2j, 2j + 1: m_j
    Vec::I sums[R];
    for (int i = 0; i < R; ++i) sums[i] = Vec::zero();
    for (int p = 0; p < 4; ++p) {  // sub-blocks 2p and 2p + 1
      __m256i pair[2];
      gguf_decode::k45_codes<HighBit>(block, p, pair);
      for (int part = 0; part < Vec::kParts; ++part) {
        const Vec::I codes = Vec::part(pair, part), step_scales = spread.step(p, part);
        for (int i = 0; i < R; ++i) {
          const Vec::I a = Vec::load(x.q_at(i, c + 64 * p + Vec::kBytes * part));
          sums[i] = Vec::dpwssd(sums[i], Vec::maddubs(codes, a), step_scales);
        }
      }
    }
    for (int i = 0; i < R; ++i) {
      const float da = x.d_at(i, c);
      const __m256i min_sums = _mm256_madd_epi16(mins, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.sums16_at(i, c))));
      acc[i] = Vec::fmadd(Vec::to_float(sums[i]), Vec::set1(d * da), acc[i]);
      acc[i] = Vec::fnmadd(Vec::to_float(Vec::widen(min_sums)), Vec::set1(dmin * da), acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) out[i] = Vec::sum(acc[i]);
}

template <int R>
void q6_k_row(const QuantMatrixView& w, int n, const Q8Activations& x, Vec::Spread<16>& spread,
              float* out) {
  const uint8_t* row = w.values + n * w.ld_values;
  Vec::F acc[R];
  for (int i = 0; i < R; ++i) acc[i] = Vec::zero_f();
  for (int c = 0; c < w.cols; c += 256) {
    const uint8_t* block = row + (c / 256) * gguf_blocks::Q6_K::Bytes;
    prefetch_ahead(block, end_of(w), gguf_blocks::Q6_K::Bytes);
    const float d = gguf_decode::half_at(block + 208);
    const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 192)));
    spread.block(scales16);
    Vec::I sums[R];
    for (int i = 0; i < R; ++i) sums[i] = Vec::zero();
    for (int p = 0; p < 4; ++p) {  // weights [64p, 64p + 64): chunks 2p and 2p + 1
      const __m256i halves[2] = {gguf_decode::q6_k_unsigned_codes(block, 2 * p), gguf_decode::q6_k_unsigned_codes(block, 2 * p + 1)};
      for (int part = 0; part < Vec::kParts; ++part) {
        const Vec::I codes = Vec::part(halves, part), step_scales = spread.step(p, part);
        for (int i = 0; i < R; ++i) {
          const Vec::I a = Vec::load(x.q_at(i, c + 64 * p + Vec::kBytes * part));
          sums[i] = Vec::dpwssd(sums[i], Vec::maddubs(codes, a), step_scales);
        }
      }
    }
    for (int i = 0; i < R; ++i) {  // the codes' offset: - 32 sum_j sc_j (sum of its 16 activations)
      const __m256i offset = _mm256_madd_epi16(scales16, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.sums16_at(i, c))));
      sums[i] = Vec::sub(sums[i], Vec::widen(_mm256_slli_epi32(offset, 5)));
      acc[i] = Vec::fmadd(Vec::to_float(sums[i]), Vec::set1(d * x.d_at(i, c)), acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) out[i] = Vec::sum(acc[i]);
}

// Vec::kBytes / 32 blocks per step (two at the AVX-512 levels, one at avx2).
template <int R>
void q8_0_row(const QuantMatrixView& w, int n, const Q8Activations& x, float* out) {
  const uint8_t* row = w.values + n * w.ld_values;
  const int blocks = (w.cols + 31) / 32;
  constexpr int64_t kBytes = gguf_blocks::Q8_0::Bytes;
  Vec::F acc[R];
  for (int i = 0; i < R; ++i) acc[i] = Vec::zero_f();
  for (int col = 0; col < w.cols; col += Vec::kBytes) {  // blocks b and, at the AVX-512 levels, b + 1 (when there is one)
    const int b = col / 32;
    const uint8_t* first = row + b * kBytes;
    const bool second = Vec::kBytes == 64 && b + 1 < blocks;
    prefetch_ahead(first, end_of(w), Vec::kBytes / 32 * kBytes);
    const Vec::I codes = Vec::q8_0_codes(first, second);
    const Vec::F scales = Vec::q8_0_scales(gguf_decode::half_at(first), second ? gguf_decode::half_at(first + kBytes) : 0.0f);
    for (int i = 0; i < R; ++i) {
      const Vec::I sums = Vec::dpbusd(Vec::load(x.quad_bias_at(i, col)), codes, Vec::load(x.q_at(i, col)));
      acc[i] = Vec::fmadd(Vec::mul(scales, Vec::load_f(x.quad_d_at(i, col))), Vec::to_float(sums), acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) out[i] = Vec::sum(acc[i]);
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
  Vec::Spread<32> spread;
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { k45_row<false, r()>(w, n, x, spread, out); });
  return true;
}

bool dot_gguf_q5_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                   int64_t ldc) {
  if (w.col0 != 0) return false;
  const Q8Activations x = q8_activations(a, lda, m, w.cols, Q8Blocks::k_quant);
  Vec::Spread<32> spread;
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { k45_row<true, r()>(w, n, x, spread, out); });
  return true;
}

bool dot_gguf_q6_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                   int64_t ldc) {
  if (w.col0 != 0) return false;
  const Q8Activations x = q8_activations(a, lda, m, w.cols, Q8Blocks::k_quant);
  Vec::Spread<16> spread;
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { q6_k_row<r()>(w, n, x, spread, out); });
  return true;
}

#endif

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
