// The int4 groups' few-rows product (DequantDotFn, kernels/dequant_bf16.hpp) for symmetric groups
// with bf16 scales (format int4_packed, RAWINT4's decode), at avx2 and the levels with AVX512-BF16
// (generic dequantizes row blocks; avx512 runs the avx2 one).
//   AVX2: 16 columns (8 bytes of codes) per step, inside one group (G >= 16): the codes in column
//   order minus 8 as fp32 (exact), times the group's scale (exact: 5 by 8 significant bits), one FMA
//   per 8 columns and activation row into lane-wise sums, on the fp32 activations of
//   kernels/dequant_dot_rows.hpp (zero past cols); one horizontal sum per output row and activation
//   row at the end. Takes symmetric groups of a power of two G >= 16 whose slice starts at a group
//   boundary (col0 = 0).
//   AVX512-BF16: C = A W^T straight from the codes: per 128 columns (64 bytes, the
// codes of column c in the low nibble of byte c / 2 for even c, the high one for odd c), the four
// nibbles of each 16-bit word (columns 4j .. 4j + 3 of the step) are looked up in a table of the 16
// bf16 values code - 8 (exact), one vector per column phase p = c mod 4; vdpbf16ps multiplies them
// by the activations laid out to match once per call (per 128 columns, phase p's 32 columns 4j + p),
// each fp32 lane holding the sum over 8 consecutive columns, so over one group (G >= 8). Each step's
// sums are scaled per lane by its group's scale and added up in fp32; one horizontal sum per output
// row and activation row at the end. The products are exact in fp32 and the activations are used as
// they are (bf16), so the result is the exact product up to fp32 summation (activations below 2^-126
// in magnitude count as zero). Takes symmetric groups of a power of two G >= 8 whose slice starts at
// a group boundary (col0 = 0); anything else is left to the dequantizing path.
#include <algorithm>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "formats/int4_groups/int4_groups.hpp"
#include "kernels/dequant_dot_rows.hpp"
#include "kernels/scratch.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

#if defined(__AVX512BF16__)

namespace {

constexpr int kChunk = 128;  // columns per step: 64 bytes of codes
constexpr int kPrefetchBytes = 4096;

// The activations per 128-column chunk: phase p (0..3) at words [32 p, 32 p + 32): columns
// c + 4 j + p; zero past cols; rows ld apart (a multiple of 128), in the thread's ScratchSlot::packed.
struct PhaseActivations {
  const bf16_t* x;
  int64_t ld;
};

PhaseActivations phase_activations(const bf16_t* a, int64_t lda, int m, int cols) {
  const int64_t ld = (int64_t(cols) + kChunk - 1) / kChunk * kChunk;
  auto* x = static_cast<bf16_t*>(thread_scratch(ScratchSlot::packed, sizeof(bf16_t) * size_t(m) * size_t(ld)));
  alignas(64) uint16_t index[4][32];
  for (int p = 0; p < 4; ++p)
    for (int j = 0; j < 32; ++j) index[p][j] = uint16_t((4 * j + p) % 64);  // within each half of 64 words
  for (int i = 0; i < m; ++i)
    for (int c = 0; c < ld; c += kChunk) {
      __m512i w[4];  // the chunk's 128 words, zero past cols
      for (int q = 0; q < 4; ++q) {
        const int n = std::max(0, std::min(32, cols - c - 32 * q));
        w[q] = _mm512_maskz_loadu_epi16(__mmask32(n == 32 ? ~0u : (1u << n) - 1u), a + i * lda + c + 32 * q);
      }
      for (int p = 0; p < 4; ++p) {
        const __m512i idx = _mm512_load_si512(index[p]);
        // words 0..15 of phase p come from the first 64 columns, 16..31 from the last 64
        const __m512i lo = _mm512_permutex2var_epi16(w[0], idx, w[1]), hi = _mm512_permutex2var_epi16(w[2], idx, w[3]);
        _mm512_storeu_si512(x + i * ld + c + 32 * p, _mm512_inserti64x4(lo, _mm512_castsi512_si256(hi), 1));
      }
    }
  return {x, ld};
}

template <int R>
void int4_row(const QuantMatrixView& w, int n, const PhaseActivations& x, float* out) {
  const uint8_t* codes = w.values + n * w.ld_values;
  const uint16_t* scales = static_cast<const uint16_t*>(w.scale) + n * w.ld_scale;
  const int G = w.group, groups = (w.cols + G - 1) / G;
  alignas(64) static constexpr uint16_t kCodeValues[32] = {  // bf16 of code - 8
      0xC100, 0xC0E0, 0xC0C0, 0xC0A0, 0xC080, 0xC040, 0xC000, 0xBF80,
      0x0000, 0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0};
  const __m512i table = _mm512_load_si512(kCodeValues), nibble = _mm512_set1_epi16(0x000F);
  // lane l of a step sums columns [8 l, 8 l + 8): group (c + 8 l) / G
  const __m512i lane_group = _mm512_srli_epi32(_mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                                                                     5, 4, 3, 2, 1, 0),
                                                                  _mm512_set1_epi32(8)),
                                               __builtin_ctz(unsigned(G)));
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int c = 0; c < w.cols; c += kChunk) {
    const int n_bytes = std::min(kChunk, w.cols - c) / 2 + (std::min(kChunk, w.cols - c) & 1);
    _mm_prefetch(reinterpret_cast<const char*>(codes + c / 2) + kPrefetchBytes, _MM_HINT_T0);
    const __m512i b = n_bytes == 64 ? _mm512_loadu_si512(codes + c / 2)
                                    : _mm512_maskz_loadu_epi8((__mmask64(1) << n_bytes) - 1, codes + c / 2);
    const __m512i w0 = _mm512_permutexvar_epi16(_mm512_and_si512(b, nibble), table);
    const __m512i w1 = _mm512_permutexvar_epi16(_mm512_and_si512(_mm512_srli_epi16(b, 4), nibble), table);
    const __m512i w2 = _mm512_permutexvar_epi16(_mm512_and_si512(_mm512_srli_epi16(b, 8), nibble), table);
    const __m512i w3 = _mm512_permutexvar_epi16(_mm512_srli_epi16(b, 12), table);
    // the step's group scales, one per lane (bf16 -> fp32: shifted up 16 bits); none past the row's groups
    const int g0 = c / G, count = std::min(groups - g0, std::max(1, kChunk / G));
    const __m512i s16 = _mm512_maskz_loadu_epi16(__mmask32((1u << count) - 1u), scales + g0);
    const __m512 group_scales = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(s16)), 16));
    const __m512 scale = _mm512_permutexvar_ps(lane_group, group_scales);
    for (int i = 0; i < R; ++i) {
      const bf16_t* xi = x.x + i * x.ld + c;
      __m512 a0 = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)w0, (__m512bh)_mm512_loadu_si512(xi));
      __m512 a1 = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)w1, (__m512bh)_mm512_loadu_si512(xi + 32));
      a0 = _mm512_dpbf16_ps(a0, (__m512bh)w2, (__m512bh)_mm512_loadu_si512(xi + 64));
      a1 = _mm512_dpbf16_ps(a1, (__m512bh)w3, (__m512bh)_mm512_loadu_si512(xi + 96));
      acc[i] = _mm512_fmadd_ps(_mm512_add_ps(a0, a1), scale, acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

}  // namespace

bool dot_int4_groups_bf16(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                          int64_t ldc) {
  if (w.zero || w.col0 != 0 || w.group < 8 || (w.group & (w.group - 1)) != 0) return false;
  const PhaseActivations x = phase_activations(a, lda, m, w.cols);
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { int4_row<r()>(w, n, x, out); });
  return true;
}

#elif defined(__AVX2__) && !defined(__AVX512F__)  // the avx512 level runs the avx2 kernel

namespace {

constexpr int kStep = 16;  // columns per step: 8 bytes of codes
constexpr int kPrefetchBytes = 4096;

template <int R>
void int4_row(const QuantMatrixView& w, int n, const DotActivations& x, float* out) {
  const uint8_t* codes = w.values + n * w.ld_values;
  const uint16_t* scales = static_cast<const uint16_t*>(w.scale) + n * w.ld_scale;
  const __m128i nibble = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
  __m256 lo[R], hi[R];
  for (int i = 0; i < R; ++i) lo[i] = hi[i] = _mm256_setzero_ps();
  for (int c = 0; c < w.cols; c += kStep) {  // a step lies in one group; the stored groups cover it
    if (c % 128 == 0) _mm_prefetch(reinterpret_cast<const char*>(codes + c / 2) + kPrefetchBytes, _MM_HINT_T0);
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + c / 2));
    const __m128i code = _mm_unpacklo_epi8(_mm_and_si128(b, nibble), _mm_and_si128(_mm_srli_epi16(b, 4), nibble));
    const __m128i v = _mm_sub_epi8(code, eight);  // code - 8 in [-8, 7], columns in order
    const __m256 s = _mm256_set1_ps(bf16_to_float(scales[c / w.group]));
    const __m256 w_lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), s);
    const __m256 w_hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8))), s);
    for (int i = 0; i < R; ++i) {
      const float* xi = x.x + i * x.ld + c;
      lo[i] = _mm256_fmadd_ps(w_lo, _mm256_loadu_ps(xi), lo[i]);
      hi[i] = _mm256_fmadd_ps(w_hi, _mm256_loadu_ps(xi + 8), hi[i]);
    }
  }
  for (int i = 0; i < R; ++i) out[i] = sum_lanes(_mm256_add_ps(lo[i], hi[i]));
}

}  // namespace

bool dot_int4_groups_bf16(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                          int64_t ldc) {
  if (w.zero || w.col0 != 0 || w.group < kStep || (w.group & (w.group - 1)) != 0) return false;
  const DotActivations x = dot_activations(a, lda, m, w.cols, kStep);
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { int4_row<r()>(w, n, x, out); });
  return true;
}

#endif

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
