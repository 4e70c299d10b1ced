// fp8's bf16 dequantizers (layout.hpp): scale blocks (D = bf16(value * block scale)) and a scale per
// row (D = value, exact). Compiled for generic (no ISA flags), avx512 and avx512_bf16 from this one
// source; every level gives the same bits (the values decode exactly, the block product is one fp32
// multiplication, the bf16 rounding kernels/bf16.hpp's at every level: the AVX-512 BF16 conversion
// instruction is not used, since it flushes denormal products to zero).
//   AVX-512: per row, the columns that share a scale in runs, 32 columns per step: 32 bytes decoded
//   (decode.hpp), times 256 (exact), times the scale; rounded to bf16 and stored under a mask at the
//   run's end.
#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__)
#include "kernels/bf16_avx512.hpp"
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

// out[0, n) = bf16(value(v[i]) * scale), n <= 32.
inline void fp8_step(const uint8_t* v, int n, __m512 scale, bf16_t* out) {
  const __mmask32 mask = n == kStep ? __mmask32(0xFFFFFFFFu) : __mmask32((uint64_t(1) << n) - 1);
  const __m512 unit = _mm512_set1_ps(kFp8HalfUnit);
  __m512 lo, hi;
  fp8_over_256(v, mask, lo, hi);
  lo = _mm512_mul_ps(_mm512_mul_ps(lo, unit), scale);
  hi = _mm512_mul_ps(_mm512_mul_ps(hi, unit), scale);
  _mm512_mask_storeu_epi16(out, mask, float_to_bf16(lo, hi));
}

// Columns [c0, c1) of one stored row with one scale.
inline void fp8_run(const uint8_t* v, int c0, int c1, float scale, bf16_t* out) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int c = c0; c < c1; c += kStep) {
    _mm_prefetch(reinterpret_cast<const char*>(v + c) + kPrefetchBytes, _MM_HINT_T0);
    fp8_step(v + c, std::min(kStep, c1 - c), s, out + (c - c0));
  }
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
