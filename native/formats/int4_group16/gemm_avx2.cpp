// int4_group16's quantized GEMM (layout.hpp) on AVX2 vectors (level avx2,
// kernels/quant_gemm_vnni_loop.hpp). Both nibbles are taken down to 0..15 (an and, a shift and an
// and), so that vpmaddubsw is exact on them (kernels/vnni_ops_avx2.hpp: the high nibbles in place,
// 16 times the code, as the VNNI levels keep them, would saturate its int16 pair sums). Per column
// half (8 columns) and half unit (32 k) two int16 accumulators per row, one per 16-k group (P of
// the low nibbles, P of the high nibbles), widened to int32 once per group. The fp32 step per group
// is D * scale with D = P - (zero / 16) * sum (exact), and the sums are taken in gemm_generic.cpp's
// order: bit-identical results.
#include "formats/int4_group16/int4_group16.hpp"
#include "formats/int4_group16/layout.hpp"
#include "kernels/quant_gemm_vnni_loop.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace int4_group16_layout;

struct Int4Block {
  template <int R>
  __attribute__((noinline)) static void run(const uint8_t* block, const uint8_t* end, const Rows<R>& a, int units,
                                            BlockOut (&out)[kVnniMaxRows]) {
    __m256 acc[R][2];  // [row][column half]
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256 sixteenth = _mm256_set1_ps(1.0f / kZeroDen);
    const uint8_t* w = block;
    for (int g = 0; g < units; ++g, w += kUnitBytes) {
      prefetch_ahead(w, end, kUnitBytes);
      for (int h = 0; h < 2; ++h) {  // columns kHalfCols h .. kHalfCols (h + 1) - 1
        __m256 y[R];                 // sum over the unit's groups of D * scale
#pragma GCC unroll 2
        for (int u = 0; u < 2; ++u) {
          __m256i lo[R], hi[R];  // int16 words of P of group 2 u (low nibbles) and 2 u + 1 (high nibbles)
          for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
          // kept rolled: fully unrolled, GCC reassociates the int16 sums across j and spills them
#pragma GCC unroll 1
          for (int j = 0; j < kHalfVectors; ++j) {
            const __m256i v =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (u * kHalfVectors + j) * kQuadBytes + kHalfQuadBytes * h));
            const __m256i wl = _mm256_and_si256(v, nibble), wh = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
            for (int r = 0; r < R; ++r) {
              const int8_t* x = a[r].q + g * kUnitK + 32 * u + j * kQuadK;
              lo[r] = dot_nibbles(lo[r], wl, broadcast_quad(x));
              hi[r] = dot_nibbles(hi[r], wh, broadcast_quad(x + kGroup));
            }
          }
          const int col = kHalfCols * h;
          const __m256 s_lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
              w + kScaleOffset + (2 * u * kCols + col) * 2)));
          const __m256 s_hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
              w + kScaleOffset + ((2 * u + 1) * kCols + col) * 2)));
          const __m256 z_lo = _mm256_mul_ps(to_float(widen_u8(w + kZeroOffset + 2 * u * kCols + col)), sixteenth);
          const __m256 z_hi = _mm256_mul_ps(to_float(widen_u8(w + kZeroOffset + (2 * u + 1) * kCols + col)), sixteenth);
          for (int r = 0; r < R; ++r) {
            const float* sum = a[r].sum + g * kUnitGroups + 2 * u;
            // D = P - (zero / 16) * sum, exact
            const __m256 d_lo = _mm256_fnmadd_ps(z_lo, _mm256_set1_ps(sum[0]), to_float(sum_word_pairs(lo[r])));
            const __m256 d_hi = _mm256_fnmadd_ps(z_hi, _mm256_set1_ps(sum[1]), to_float(sum_word_pairs(hi[r])));
            y[r] = u == 0 ? _mm256_mul_ps(d_lo, s_lo) : _mm256_fmadd_ps(d_lo, s_lo, y[r]);
            y[r] = _mm256_fmadd_ps(d_hi, s_hi, y[r]);
          }
        }
        for (int r = 0; r < R; ++r) acc[r][h] = _mm256_fmadd_ps(y[r], _mm256_set1_ps(a[r].scale[g]), acc[r][h]);
      }
    }
    for (int r = 0; r < R; ++r) out[r] = {{acc[r][0], acc[r][1]}};
  }
};

}  // namespace

void gemm_int4_group16(const QuantGemmArgs& args) { gemm_quant_vnni_loop<Int4Block>(args); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
