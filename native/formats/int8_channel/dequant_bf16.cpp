// int8_channel's bf16 dequantizer (kernels/dequant_bf16.hpp, a row_scales format): D[r, c] = q[r, c]
// as bf16 (exact, |q| < 2^8); the products apply the fp32 row scale. Compiled for generic (no ISA
// flags), avx2, avx512 and avx512_bf16; every level gives the same bits.
//   AVX2: 16 columns per step: q to fp32 (exact), whose upper halves are q as bf16, packed; the
//   columns after the last whole step as the generic level writes them.
//   AVX-512: 32 columns per step: q to fp32 (exact), whose upper halves are q as bf16 (exact),
//   packed by one permutation; the tail through masked loads and stores.
#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__)
#include "kernels/bf16_avx512.hpp"
#elif defined(__AVX2__)
#include "kernels/bf16_avx2.hpp"
#endif

#include "formats/int8_channel/int8_channel.hpp"
#include "kernels/bf16.hpp"
#include "kernels/dequant_rows.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

// q[c0, c1) as bf16 into out[0, c1 - c0): the generic level's loop, and the AVX2 one's last columns.
inline void int8_columns(const int8_t* q, int c0, int c1, bf16_t* out) {
  for (int c = c0; c < c1; ++c) out[c - c0] = float_to_bf16(float(q[c]));
}

#if defined(__AVX512F__)

// Bytes ahead of the current ones whose cache line a step asks for (rows follow each other in
// memory; one row is too short a stream for the hardware prefetcher).
constexpr int kPrefetchBytes = 4096;

void int8_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const int8_t* q = reinterpret_cast<const int8_t*>(w.values + r * w.ld_values);
  for (int c = c0; c < c1; c += 32) {
    const int n = std::min(32, c1 - c);
    const __mmask32 mask = n == 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((uint64_t(1) << n) - 1);
    _mm_prefetch(reinterpret_cast<const char*>(q + c) + kPrefetchBytes, _MM_HINT_T0);
    const __m256i v = _mm256_maskz_loadu_epi8(mask, q + c);
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(v)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(v, 1)));
    _mm512_mask_storeu_epi16(dst + (c - c0), mask, upper_words(_mm512_castps_si512(lo), _mm512_castps_si512(hi)));
  }
}

#elif defined(__AVX2__)

constexpr int kPrefetchBytes = 4096;  // as above

void int8_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const int8_t* q = reinterpret_cast<const int8_t*>(w.values + r * w.ld_values);
  int c = c0;
  for (; c + 16 <= c1; c += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(q + c) + kPrefetchBytes, _MM_HINT_T0);
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + c));
    const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
    const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (c - c0)),
                        upper_words(_mm256_castps_si256(lo), _mm256_castps_si256(hi)));
  }
  int8_columns(q, c, c1, dst + (c - c0));
}

#else

void int8_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  int8_columns(reinterpret_cast<const int8_t*>(w.values + r * w.ld_values), c0, c1, dst);
}

#endif

}  // namespace

void dequant_int8_channel(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld) {
  dequant_rows<int8_row>(w, r0, r1, c0, c1, dst, ld);
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
