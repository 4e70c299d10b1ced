// fp8's bf16 dequantizers (layout.hpp): scale blocks (D = bf16(value * block scale)) and a scale per
// row (D = value, exact). Compiled for generic (no ISA flags), avx512 and avx512_bf16 from this one
// source; every level gives the same bits (the values decode exactly, the block product is one fp32
// multiplication, the bf16 rounding kernels/bf16.hpp's at every level: the AVX-512 BF16 conversion
// instruction is not used, since it flushes denormal products to zero).
//   AVX-512: per row, the columns that share a scale in runs, 32 columns per step: 32 bytes widened
//   to 32 words, each turned into the half-precision pattern of layout.hpp (sign up 8 bits, the
//   other 7 bits up 7), converted by vcvtph2ps in two halves of 16, times 256 (exact), times the
//   scale; rounded to bf16 and stored under a mask at the run's end.
#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__)
#include "kernels/bf16_avx512.hpp"
#endif

#include "formats/fp8/fp8.hpp"
#include "kernels/bf16.hpp"
#include "kernels/dequant_rows.hpp"
#include "kernels/fp16.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

// The fp16 bits whose value times 256 is the e4m3 value of `byte` (layout.hpp).
constexpr fp16_t half_pattern(uint8_t byte) { return fp16_t(((byte & 0x80u) << 8) | ((byte & 0x7Fu) << 7)); }

// Stored row r's first byte, and the scales of its block row (blocks) or its scale (channels).
inline const uint8_t* row_values(const QuantMatrixView& w, int r) { return w.values + r * w.ld_values; }
inline const float* block_scales(const QuantMatrixView& w, int r) {
  return static_cast<const float*>(w.scale) + int64_t((w.row0 + r) / w.group) * w.ld_scale;
}

#if defined(__AVX512F__)

constexpr int kStep = 32;
constexpr int kPrefetchBytes = 4096;  // rows follow each other; one row is too short a stream to prefetch

// out[0, n) = bf16(value(v[i]) * scale), n <= 32.
inline void fp8_step(const uint8_t* v, int n, __m512 scale, bf16_t* out) {
  const __mmask32 mask = n == kStep ? __mmask32(0xFFFFFFFFu) : __mmask32((uint64_t(1) << n) - 1);
  const __m512i bytes = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(mask, v));
  const __m512i half = _mm512_or_si512(_mm512_and_si512(_mm512_slli_epi16(bytes, 8), _mm512_set1_epi16(int16_t(0x8000))),
                                       _mm512_and_si512(_mm512_slli_epi16(bytes, 7), _mm512_set1_epi16(0x3F80)));
  const __m512 unit = _mm512_set1_ps(256.0f);
  const __m512 lo = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(half)), unit), scale);
  const __m512 hi = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(half, 1)), unit), scale);
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

// The e4m3 value of every byte, decoded as layout.hpp says.
struct Fp8Table {
  float value[256];
  Fp8Table() {
    for (int b = 0; b < 256; ++b) value[b] = fp16_to_float(half_pattern(uint8_t(b))) * 256.0f;
  }
};

inline void fp8_run(const uint8_t* v, int c0, int c1, float scale, bf16_t* out) {
  static const Fp8Table table;
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
