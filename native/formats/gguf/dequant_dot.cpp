// The few-rows products (DequantDotFn, kernels/dequant_bf16.hpp) of the GGUF types a decode reads
// most (gguf_blocks.hpp): Q8_0, Q4_K and Q6_K (a Q4_K_M file's three, and llama.cpp's fallback for
// rows that are not whole super-blocks), at the AVX-512 levels; the other types, and slices that do
// not start at a block boundary (col0 != 0), dequantize row blocks instead. C = A W^T straight from
// the blocks: each block's integers are widened to fp32 in registers and multiplied with the
// activations (bf16 widened to fp32 once per call, zero past cols) in fp32; per block (Q8_0) or
// sub-block (Q4_K: 32 weights; Q6_K: 16), the sum over its weights is scaled by the block's fp32
// scale d * sc, and Q4_K's min subtracts dmin * m times the sum of the sub-block's activations:
//   sum_j (d sc q_j - dmin m) x_j = d sc (sum_j q_j x_j) - dmin m (sum_j x_j).
// Every product of an integer and an activation is exact in fp32; the sums are fp32 in another order
// than the dequantizing path's, so the two agree up to fp32 rounding. At AVX512-BF16, Q4_K instead
// looks its codes up in tables of the sub-blocks' bf16 values and multiplies them with vdpbf16ps
// (q4_k_row_bf16): the weights rounded to bf16 as the dequantizing path rounds them, fewer
// instructions per weight.
#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "formats/gguf/gguf_decode.hpp"
#include "kernels/dequant_dot_rows.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

#if defined(__AVX512F__)

namespace {

using gguf_decode::i8_lanes;
using gguf_decode::u8_lanes;

template <int R>
void q8_0_row(const QuantMatrixView& w, int n, const DotActivations& x, float* out) {
  const uint8_t* row = w.values + n * w.ld_values;
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int c = 0; c < w.cols; c += 32) {
    const uint8_t* block = row + (c / 32) * gguf_blocks::Q8_0::Bytes;
    const __m512 d = _mm512_set1_ps(gguf_decode::half_at(block));
    const __m512 q0 = i8_lanes(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2)));
    const __m512 q1 = i8_lanes(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 18)));
    for (int i = 0; i < R; ++i) {
      const float* xi = x.x + i * x.ld + c;
      const __m512 s = _mm512_fmadd_ps(q0, _mm512_loadu_ps(xi), _mm512_mul_ps(q1, _mm512_loadu_ps(xi + 16)));
      acc[i] = _mm512_fmadd_ps(d, s, acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

template <int R>
void q4_k_row(const QuantMatrixView& w, int n, const DotActivations& x, float* out) {
  const uint8_t* row = w.values + n * w.ld_values;
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int c = 0; c < w.cols; c += 256) {
    const uint8_t* block = row + (c / 256) * gguf_blocks::Q4_K::Bytes;
    const float d = gguf_decode::half_at(block), dmin = gguf_decode::half_at(block + 2);
    for (int pair = 0; pair < 4 && c + 64 * pair < w.cols; ++pair) {  // sub-blocks 2 pair and 2 pair + 1
      __m256i codes[2];
      gguf_decode::q4_k_codes(block, pair, codes);
      for (int half = 0; half < 2; ++half) {
        int sc, mn;
        gguf_decode::k_scale_min(block + 4, 2 * pair + half, sc, mn);
        const __m512 ds = _mm512_set1_ps(d * float(sc)), dm = _mm512_set1_ps(dmin * float(mn));
        const __m512 q0 = u8_lanes(_mm256_castsi256_si128(codes[half]));
        const __m512 q1 = u8_lanes(_mm256_extracti128_si256(codes[half], 1));
        const int col = c + 64 * pair + 32 * half;
        for (int i = 0; i < R; ++i) {
          const float* xi = x.x + i * x.ld + col;
          const __m512 x0 = _mm512_loadu_ps(xi), x1 = _mm512_loadu_ps(xi + 16);
          const __m512 s = _mm512_fmadd_ps(q0, x0, _mm512_mul_ps(q1, x1));
          acc[i] = _mm512_fnmadd_ps(dm, _mm512_add_ps(x0, x1), _mm512_fmadd_ps(ds, s, acc[i]));
        }
      }
    }
  }
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

#if defined(__AVX512BF16__)
// The activations as bf16 rows of ld = cols rounded up to 256, zeros past cols (thread scratch).
struct Bf16Activations {
  const bf16_t* x;
  int64_t ld;
};

Bf16Activations bf16_activations(const bf16_t* a, int64_t lda, int m, int cols) {
  const int64_t ld = (int64_t(cols) + 255) / 256 * 256;
  auto* x = static_cast<bf16_t*>(thread_scratch(ScratchSlot::packed, sizeof(bf16_t) * size_t(m) * size_t(ld)));
  for (int i = 0; i < m; ++i) {
    std::memcpy(x + i * ld, a + i * lda, sizeof(bf16_t) * size_t(cols));
    std::memset(x + i * ld + cols, 0, sizeof(bf16_t) * size_t(ld - cols));
  }
  return {x, ld};
}

// Q4_K at AVX512-BF16: per pair of sub-blocks, a 32-word table of their 16 values each, bf16(d sc k -
// dmin m) (the values the dequantizing path rounds to as well), looked up by the codes and multiplied
// with the bf16 activations by vdpbf16ps, each fp32 lane summing two adjacent columns.
template <int R>
void q4_k_row_bf16(const QuantMatrixView& w, int n, const Bf16Activations& x, float* out) {
  const uint8_t* row = w.values + n * w.ld_values;
  const __m512 k = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i low_nibble = _mm512_set1_epi16(0x0F), second_table = _mm512_set1_epi16(16);
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int c = 0; c < w.cols; c += 256) {
    const uint8_t* block = row + (c / 256) * gguf_blocks::Q4_K::Bytes;
    const float d = gguf_decode::half_at(block), dmin = gguf_decode::half_at(block + 2);
    for (int pair = 0; pair < 4 && c + 64 * pair < w.cols; ++pair) {
      int sc_a, mn_a, sc_b, mn_b;
      gguf_decode::k_scale_min(block + 4, 2 * pair, sc_a, mn_a);
      gguf_decode::k_scale_min(block + 4, 2 * pair + 1, sc_b, mn_b);
      const __m512 values_a = _mm512_fmsub_ps(k, _mm512_set1_ps(d * float(sc_a)), _mm512_set1_ps(dmin * float(mn_a)));
      const __m512 values_b = _mm512_fmsub_ps(k, _mm512_set1_ps(d * float(sc_b)), _mm512_set1_ps(dmin * float(mn_b)));
      const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(values_b, values_a);  // words 0..15: a, 16..31: b
      const __m512i codes = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 16 + 32 * pair)));
      const __m512i wa = _mm512_permutexvar_epi16(_mm512_and_si512(codes, low_nibble), table);
      const __m512i wb = _mm512_permutexvar_epi16(_mm512_add_epi16(_mm512_srli_epi16(codes, 4), second_table), table);
      const int col = c + 64 * pair;
      for (int i = 0; i < R; ++i) {
        const bf16_t* xi = x.x + i * x.ld + col;
        acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)wa, (__m512bh)_mm512_loadu_si512(xi));
        acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)wb, (__m512bh)_mm512_loadu_si512(xi + 32));
      }
    }
  }
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}
#endif

template <int R>
void q6_k_row(const QuantMatrixView& w, int n, const DotActivations& x, float* out) {
  const uint8_t* row = w.values + n * w.ld_values;
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int c = 0; c < w.cols; c += 256) {
    const uint8_t* block = row + (c / 256) * gguf_blocks::Q6_K::Bytes;
    const int8_t* scales = reinterpret_cast<const int8_t*>(block + 192);
    const float d = gguf_decode::half_at(block + 208);
    for (int chunk = 0; chunk < 8 && c + 32 * chunk < w.cols; ++chunk) {  // weights [32 chunk, 32 chunk + 32)
      const __m256i q = gguf_decode::q6_k_codes(block, chunk);
      const __m512 q0 = i8_lanes(_mm256_castsi256_si128(q)), q1 = i8_lanes(_mm256_extracti128_si256(q, 1));
      const __m512 s0 = _mm512_set1_ps(d * float(scales[2 * chunk])), s1 = _mm512_set1_ps(d * float(scales[2 * chunk + 1]));
      const int col = c + 32 * chunk;
      for (int i = 0; i < R; ++i) {
        const float* xi = x.x + i * x.ld + col;
        acc[i] = _mm512_fmadd_ps(s0, _mm512_mul_ps(q0, _mm512_loadu_ps(xi)), acc[i]);
        acc[i] = _mm512_fmadd_ps(s1, _mm512_mul_ps(q1, _mm512_loadu_ps(xi + 16)), acc[i]);
      }
    }
  }
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

// The entry point of a row kernel over activations widened to fp32 rows of whole steps.
template <int Step, template <int> class Row>
bool fp32_dot(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c, int64_t ldc) {
  if (w.col0 != 0) return false;
  const DotActivations x = dot_activations(a, lda, m, w.cols, Step);
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { Row<r()>::run(w, n, x, out); });
  return true;
}

template <int R>
struct Q8_0Row {
  static void run(const QuantMatrixView& w, int n, const DotActivations& x, float* out) { q8_0_row<R>(w, n, x, out); }
};
template <int R>
struct Q4_KRow {
  static void run(const QuantMatrixView& w, int n, const DotActivations& x, float* out) { q4_k_row<R>(w, n, x, out); }
};
template <int R>
struct Q6_KRow {
  static void run(const QuantMatrixView& w, int n, const DotActivations& x, float* out) { q6_k_row<R>(w, n, x, out); }
};

}  // namespace

bool dot_gguf_q8_0(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                   int64_t ldc) {
  return fp32_dot<32, Q8_0Row>(w, m, n0, n1, a, lda, c, ldc);
}

bool dot_gguf_q4_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                   int64_t ldc) {
#if defined(__AVX512BF16__)
  if (w.col0 != 0) return false;
  const Bf16Activations x = bf16_activations(a, lda, m, w.cols);
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { q4_k_row_bf16<r()>(w, n, x, out); });
  return true;
#else
  return fp32_dot<256, Q4_KRow>(w, m, n0, n1, a, lda, c, ldc);
#endif
}

bool dot_gguf_q6_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                   int64_t ldc) {
  return fp32_dot<256, Q6_KRow>(w, m, n0, n1, a, lda, c, ldc);
}

#endif

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
