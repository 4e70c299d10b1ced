// int4_kgroup's quantized GEMM (layout.hpp) on AVX2 vectors (level avx2,
// kernels/quant_gemm_vnni_loop.hpp). Both nibbles are taken down to 0..15 so that vpmaddubsw is
// exact on them (kernels/vnni_ops_avx2.hpp). Per column half (8 columns) two int16 accumulators per
// row, the low nibbles' and the high nibbles' (32 k each: at most 16 products of 15 * 127, 30480 <
// 32767), widened to int32 once per unit; then layout.hpp's fp32 steps in gemm_generic.cpp's order
// (bit-identical results).
#include "formats/int4_kgroup/int4_kgroup.hpp"
#include "formats/int4_kgroup/layout.hpp"
#include "kernels/quant_gemm_vnni_loop.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace int4_kgroup_layout;

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
        __m256i lo[R], hi[R];        // int16 words of P over the low nibbles (k < 32) and the high ones
        for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
        // kept rolled: fully unrolled, GCC reassociates the int16 sums across j and spills them
#pragma GCC unroll 1
        for (int j = 0; j < kCodeVectors; ++j) {
          const __m256i v =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * kQuadBytes + kHalfQuadBytes * h));
          const __m256i wl = _mm256_and_si256(v, nibble), wh = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
          for (int r = 0; r < R; ++r) {
            const int8_t* x = a[r].q + g * kUnitK + j * kQuadK;
            lo[r] = dot_nibbles(lo[r], wl, broadcast_quad(x));
            hi[r] = dot_nibbles(hi[r], wh, broadcast_quad(x + 32));
          }
        }
        const int col = kHalfCols * h;
        const __m256 s =
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + kScaleOffset + col * 2)));
        const __m256 z = _mm256_mul_ps(to_float(widen_u8(w + kZeroOffset + col)), sixteenth);
        for (int r = 0; r < R; ++r) {
          const __m256i p = _mm256_add_epi32(sum_word_pairs(lo[r]), sum_word_pairs(hi[r]));
          const __m256 t = _mm256_fnmadd_ps(z, _mm256_set1_ps(a[r].sum[g]), to_float(p));  // exact
          acc[r][h] = _mm256_fmadd_ps(t, _mm256_mul_ps(s, _mm256_set1_ps(a[r].scale[g])), acc[r][h]);
        }
      }
    }
    for (int r = 0; r < R; ++r) out[r] = {{acc[r][0], acc[r][1]}};
  }
};

}  // namespace

void gemm_int4_kgroup(const QuantGemmArgs& args) { gemm_quant_vnni_loop<Int4Block>(args); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
