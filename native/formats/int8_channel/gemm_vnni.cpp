// int8_channel's quantized GEMM (layout.hpp) on AVX-512 vectors (levels avx512 and avx512_bf16,
// kernels/quant_gemm_vnni_loop.hpp): the stored q + 128 bytes are the unsigned operand as they are;
// per 64-k unit two int32 accumulators per row (even and odd quads, for latency), then the fp32
// step of layout.hpp.
#include "formats/int8_channel/int8_channel.hpp"
#include "formats/int8_channel/row_offset.hpp"
#include "kernels/quant_gemm_vnni_loop.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace int8_channel_layout;

struct Int8Block {
  template <int R>
  __attribute__((noinline)) static void run(const uint8_t* block, const uint8_t* end, const Rows<R>& a, int units,
                                            BlockOut (&out)[kVnniMaxRows]) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const uint8_t* w = block + kHeaderBytes;
    for (int g = 0; g < units; ++g, w += kUnitBytes) {
      prefetch_ahead(w, end, kUnitBytes);
      __m512i d0[R], d1[R];
      for (int r = 0; r < R; ++r) d0[r] = d1[r] = _mm512_setzero_si512();
      for (int j = 0; j < kUnitQuads; j += 2) {
        const __m512i w0 = _mm512_loadu_si512(w + j * kQuadBytes), w1 = _mm512_loadu_si512(w + (j + 1) * kQuadBytes);
        for (int r = 0; r < R; ++r) {
          const int8_t* x = a[r].q + g * kUnitK + j * kQuadK;
          d0[r] = dpbusd(d0[r], w0, broadcast_quad(x));
          d1[r] = dpbusd(d1[r], w1, broadcast_quad(x + kQuadK));
        }
      }
      for (int r = 0; r < R; ++r)
        acc[r] = _mm512_fmadd_ps(to_float(_mm512_add_epi32(d0[r], d1[r])), _mm512_set1_ps(a[r].scale[g]), acc[r]);
    }
    const __m512 scales = _mm512_loadu_ps(block);
    for (int r = 0; r < R; ++r)
      out[r] = _mm512_mul_ps(_mm512_sub_ps(acc[r], _mm512_set1_ps(int8_row_offset(a[r].scale, a[r].sum, units))),
                             scales);
  }
};

}  // namespace

void gemm_int8_channel(const QuantGemmArgs& args) { gemm_quant_vnni_loop<Int8Block>(args); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
