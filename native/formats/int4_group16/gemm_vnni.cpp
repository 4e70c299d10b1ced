// int4_group16's quantized GEMM (layout.hpp) on AVX-512 vectors (levels avx512 and avx512_bf16,
// kernels/quant_gemm_vnni_loop.hpp). Each nibble is taken with one and: the high nibbles stay in
// place, as 16 times the code. Per half unit (32 k) two int32 accumulators per row, one per 16-k
// group: P of the low nibbles, 16 P of the high nibbles in place. The fp32 step per group is
// D * scale with D = P - (zero / 16) * sum (low) or 16 P - zero * sum with scale / 16 (high): both
// exact, so the products equal gemm_generic.cpp's, and so do the sums, taken in its order
// (bit-identical results).
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
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8(int8_t(0xF0));
    const __m512 sixteenth = _mm512_set1_ps(1.0f / kZeroDen);
    const uint8_t* w = block;
    for (int g = 0; g < units; ++g, w += kUnitBytes) {
      prefetch_ahead(w, end, kUnitBytes);
      __m512 y[R];  // sum over the unit's groups of D * scale
#pragma GCC unroll 2
      for (int u = 0; u < 2; ++u) {
        __m512i lo[R], hi[R];  // P of group 2 u (low nibbles), 16 P of group 2 u + 1 (high nibbles in place)
        for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm512_setzero_si512();
        for (int j = 0; j < kHalfVectors; ++j) {
          const __m512i v = _mm512_loadu_si512(w + (u * kHalfVectors + j) * kQuadBytes);
          const __m512i wl = _mm512_and_si512(v, low), wh = _mm512_and_si512(v, high);
          for (int r = 0; r < R; ++r) {
            const int8_t* x = a[r].q + g * kUnitK + 32 * u + j * kQuadK;
            lo[r] = dpbusd(lo[r], wl, broadcast_quad(x));
            hi[r] = dpbusd(hi[r], wh, broadcast_quad(x + kGroup));
          }
        }
        // D * scale is the exact (P - zero / 16 * sum) * scale: low nibbles with z = zero / 16,
        // high nibbles (16 P) with z = zero and scale / 16
        const __m256i* scales = reinterpret_cast<const __m256i*>(w + kScaleOffset) + 2 * u;
        const uint8_t* zeros = w + kZeroOffset + 2 * u * kCols;
        const __m512 s_lo = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(scales));
        const __m512 s_hi = _mm512_mul_ps(_mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(scales + 1)), sixteenth);
        const __m512 z_lo = _mm512_mul_ps(to_float(widen_u8(zeros)), sixteenth), z_hi = to_float(widen_u8(zeros + kCols));
        for (int r = 0; r < R; ++r) {
          const float* sum = a[r].sum + g * kUnitGroups + 2 * u;
          const __m512 d_lo = _mm512_fnmadd_ps(z_lo, _mm512_set1_ps(sum[0]), to_float(lo[r]));  // exact
          const __m512 d_hi = _mm512_fnmadd_ps(z_hi, _mm512_set1_ps(sum[1]), to_float(hi[r]));  // exact
          y[r] = u == 0 ? _mm512_mul_ps(d_lo, s_lo) : _mm512_fmadd_ps(d_lo, s_lo, y[r]);
          y[r] = _mm512_fmadd_ps(d_hi, s_hi, y[r]);
        }
      }
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(y[r], _mm512_set1_ps(a[r].scale[g]), acc[r]);
    }
    for (int r = 0; r < R; ++r) out[r] = acc[r];
  }
};

}  // namespace

void gemm_int4_group16(const QuantGemmArgs& args) { gemm_quant_vnni_loop<Int4Block>(args); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
