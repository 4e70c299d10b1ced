// int4_kgroup's quantized GEMM (layout.hpp) on AVX-512 vectors (levels avx512 and avx512_bf16,
// kernels/quant_gemm_vnni_loop.hpp): both nibbles taken down to 0..15 bytes (the low with an and,
// the high with a shift and an and; dpbusd_nibbles, which the avx512 level does with vpmaddubsw), P per row and unit in two or four int32 accumulators (exact in
// any order), then layout.hpp's fp32 steps in gemm_generic.cpp's order (bit-identical results).
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
    // independent vpdpbusd chains per row: 16 dependent ones per unit would bind the decode (one row)
    constexpr int kChains = R == 1 ? 4 : 2;
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    const __m512 sixteenth = _mm512_set1_ps(1.0f / kZeroDen);
    const uint8_t* w = block;
    for (int g = 0; g < units; ++g, w += kUnitBytes) {
      prefetch_ahead(w, end, kUnitBytes);
      __m512i p[R][kChains];  // partial sums of P: chain c takes the low (c even) or high nibbles of every other j
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < kChains; ++c) p[r][c] = _mm512_setzero_si512();
      for (int j = 0; j < kCodeVectors; ++j) {
        const __m512i v = _mm512_loadu_si512(w + j * kQuadBytes);
        const __m512i wl = _mm512_and_si512(v, nibble);
        const __m512i wh = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
        const int c = (2 * j) % kChains;
        for (int r = 0; r < R; ++r) {
          const int8_t* x = a[r].q + g * kUnitK + j * kQuadK;
          p[r][c] = dpbusd_nibbles(p[r][c], wl, broadcast_quad(x));
          p[r][c + 1] = dpbusd_nibbles(p[r][c + 1], wh, broadcast_quad(x + 32));
        }
      }
      const __m512 s = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + kScaleOffset)));
      const __m512 z = _mm512_mul_ps(to_float(widen_u8(w + kZeroOffset)), sixteenth);
      for (int r = 0; r < R; ++r) {
        __m512i sum = p[r][0];
        for (int c = 1; c < kChains; ++c) sum = _mm512_add_epi32(sum, p[r][c]);
        const __m512 t = _mm512_fnmadd_ps(z, _mm512_set1_ps(a[r].sum[g]), to_float(sum));  // exact
        acc[r] = _mm512_fmadd_ps(t, _mm512_mul_ps(s, _mm512_set1_ps(a[r].scale[g])), acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) out[r] = acc[r];
  }
};

}  // namespace

void gemm_int4_kgroup(const QuantGemmArgs& args) { gemm_quant_vnni_loop<Int4Block>(args); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
