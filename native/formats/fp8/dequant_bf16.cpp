// fp8's bf16 dequantizers (layout.hpp): scale blocks (D = bf16(value * block scale)) and a scale per
// row (D = value, exact). Compiled for generic (no ISA flags), avx512 and avx512_bf16 from this one
// source, and avx2; every level gives the same bits (the values decode exactly, the block product is
// one fp32 multiplication, the bf16 rounding kernels/bf16.hpp's at every level; the AVX512-BF16
// conversion instruction, which flushes denormals to zero, only where no product can be denormal).
//   AVX2: per run, 16 columns per step: 16 bytes decoded (decode.hpp), times 256 (exact), times the
//   scale, kernels/bf16_avx2.hpp's rounding; the run's last step through zero-padded buffers. With a
//   finite scale of magnitude up to 2^100 (Normal): value / 256 times scale * 256 (exact), the same
//   product in one multiplication, never a NaN (the rounding skips the NaN lanes' handling).
//   AVX-512: per row, the columns that share a scale in runs, 32 columns per step: 32 bytes decoded
//   (decode.hpp), times 256 (exact), times the scale; rounded to bf16 and stored under a mask at the
//   run's end.
#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include "kernels/bf16_avx512.hpp"
#elif defined(__AVX2__)
#include <cstring>

#include "kernels/bf16_avx2.hpp"
#endif

#include "formats/fp8/decode.hpp"
#include "formats/fp8/fp8.hpp"
#include "kernels/bf16.hpp"
#include "kernels/dequant_rows.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

#if defined(__AVX512F__)

constexpr int kStep = 32;
constexpr int kPrefetchBytes = 4096;  // rows follow each other; one row is too short a stream to prefetch

// out[0, n) = bf16(value(v[i]) * scale), n <= 32: the product rounded once, then to bf16.
//   Normal (scale magnitude in [2^-117, 2^100]): value / 256 (exact) times scale * 256 (exact), and at
//   AVX512-BF16 its conversion, which rounds as kernels/bf16.hpp does every value it does not flush;
//   no product is denormal there (the smallest nonzero value is 2^-9).
//   Otherwise: value / 256 times 256 (exact), times scale; kernels/bf16_avx512.hpp's rounding.
template <bool Normal>
inline void fp8_step(const uint8_t* v, int n, float scale, bf16_t* out) {
  const __mmask32 mask = n == kStep ? __mmask32(0xFFFFFFFFu) : __mmask32((uint64_t(1) << n) - 1);
  __m512 lo, hi;
  fp8_over_256(v, mask, lo, hi);
  if constexpr (Normal) {
    const __m512 s = _mm512_set1_ps(scale * kFp8HalfUnit);
    lo = _mm512_mul_ps(lo, s);
    hi = _mm512_mul_ps(hi, s);
#if defined(__AVX512BF16__)
    _mm512_mask_storeu_epi16(out, mask, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    return;
#endif
  } else {
    const __m512 unit = _mm512_set1_ps(kFp8HalfUnit), s = _mm512_set1_ps(scale);
    lo = _mm512_mul_ps(_mm512_mul_ps(lo, unit), s);
    hi = _mm512_mul_ps(_mm512_mul_ps(hi, unit), s);
  }
  _mm512_mask_storeu_epi16(out, mask, float_to_bf16(lo, hi));
}

template <bool Normal>
inline void fp8_steps(const uint8_t* v, int c0, int c1, float scale, bf16_t* out) {
  for (int c = c0; c < c1; c += kStep) {
    _mm_prefetch(reinterpret_cast<const char*>(v + c) + kPrefetchBytes, _MM_HINT_T0);
    fp8_step<Normal>(v + c, std::min(kStep, c1 - c), scale, out + (c - c0));
  }
}

// Columns [c0, c1) of one stored row with one scale.
inline void fp8_run(const uint8_t* v, int c0, int c1, float scale, bf16_t* out) {
  constexpr float kSmallest = 6.018531076210112e-36f, kLargest = 1.2676506002282294e30f;  // 2^-117, 2^100
  if (std::fabs(scale) >= kSmallest && std::fabs(scale) <= kLargest)
    fp8_steps<true>(v, c0, c1, scale, out);
  else
    fp8_steps<false>(v, c0, c1, scale, out);
}

#elif defined(__AVX2__)

constexpr int kStep = 16;
constexpr int kPrefetchBytes = 4096;  // rows follow each other; one row is too short a stream to prefetch

// Columns [c0, c1) of one stored row with one scale: bf16(value * scale).
template <bool Normal>
inline void fp8_steps(const uint8_t* v, int c0, int c1, float scale, bf16_t* out) {
  const __m256 unit = _mm256_set1_ps(kFp8HalfUnit), s = _mm256_set1_ps(scale), s256 = _mm256_set1_ps(scale * kFp8HalfUnit);
  for (int c = c0; c < c1; c += kStep) {
    _mm_prefetch(reinterpret_cast<const char*>(v + c) + kPrefetchBytes, _MM_HINT_T0);
    __m256 lo, hi;
    fp8_over_256(fp8_bytes(v + c, c1 - c), lo, hi);
    const __m256i words = Normal ? non_nan_float_to_bf16(_mm256_mul_ps(lo, s256), _mm256_mul_ps(hi, s256))
                                 : float_to_bf16(_mm256_mul_ps(_mm256_mul_ps(lo, unit), s),
                                                 _mm256_mul_ps(_mm256_mul_ps(hi, unit), s));
    if (c1 - c >= kStep) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (c - c0)), words);
    } else {
      alignas(32) bf16_t part[kStep];
      _mm256_store_si256(reinterpret_cast<__m256i*>(part), words);
      std::memcpy(out + (c - c0), part, sizeof(bf16_t) * size_t(c1 - c));
    }
  }
}

inline void fp8_run(const uint8_t* v, int c0, int c1, float scale, bf16_t* out) {
  constexpr float kLargest = 1.2676506002282294e30f;  // 2^100
  if (std::fabs(scale) <= kLargest)  // false for Inf and NaN
    fp8_steps<true>(v, c0, c1, scale, out);
  else
    fp8_steps<false>(v, c0, c1, scale, out);
}

#else

inline void fp8_run(const uint8_t* v, int c0, int c1, float scale, bf16_t* out) {
  const Fp8Table& table = fp8_table();
  for (int c = c0; c < c1; ++c) out[c - c0] = float_to_bf16(table.value[v[c]] * scale);
}

#endif

void fp8_block_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const uint8_t* v = row_values(w, r);
  const float* scales = block_scales(w, r);
  for (int c = c0; c < c1;) {  // runs of columns that share a block
    const int block = (w.col0 + c) / w.group, end = std::min(c1, (block + 1) * w.group - w.col0);
    fp8_run(v, c, end, scales[block], dst + (c - c0));
    c = end;
  }
}

void fp8_channel_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  fp8_run(row_values(w, r), c0, c1, 1.0f, dst);
}

}  // namespace

void dequant_fp8_block(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld) {
  dequant_rows<fp8_block_row>(w, r0, r1, c0, c1, dst, ld);
}

void dequant_fp8_channel(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld) {
  dequant_rows<fp8_channel_row>(w, r0, r1, c0, c1, dst, ld);
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
