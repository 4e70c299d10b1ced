// int8_channel's quantized GEMM (layout.hpp) on AVX2 vectors (level avx2,
// kernels/quant_gemm_vnni_loop.hpp). The stored q + 128 bytes against int8 activations would
// saturate vpmaddubsw, so both are widened to 16-bit words (even and odd bytes of each quad) and
// multiplied by vpmaddwd (kernels/vnni_ops_avx2.hpp): the same exact int32 dot products as the
// other levels. Per 64-k unit one int32 accumulator per row and column half (8 columns), then the
// fp32 step of layout.hpp in gemm_generic.cpp's order (bit-identical results).
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
    __m256 acc[R][2];  // [row][column half]
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const uint8_t* w = block + kHeaderBytes;
    for (int g = 0; g < units; ++g, w += kUnitBytes) {
      prefetch_ahead(w, end, kUnitBytes);
      QuadWords x[R];
      for (int r = 0; r < R; ++r) quad_words(a[r].q + g * kUnitK, x[r]);
      __m256i d[R][2];
      for (int r = 0; r < R; ++r) d[r][0] = d[r][1] = _mm256_setzero_si256();
      for (int j = 0; j < kUnitQuads; ++j) {
        const uint8_t* quad = w + j * kQuadBytes;
        const WordPairs w0 = unsigned_words(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad)));
        const WordPairs w1 = unsigned_words(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad + kHalfQuadBytes)));
        for (int r = 0; r < R; ++r) {
          const WordPairs xj = broadcast_words(x[r], j);
          d[r][0] = dot_words(d[r][0], w0, xj);
          d[r][1] = dot_words(d[r][1], w1, xj);
        }
      }
      for (int r = 0; r < R; ++r) {
        const __m256 s = _mm256_set1_ps(a[r].scale[g]);
        for (int h = 0; h < 2; ++h) acc[r][h] = _mm256_fmadd_ps(to_float(d[r][h]), s, acc[r][h]);
      }
    }
    const float* scales = reinterpret_cast<const float*>(block);
    for (int r = 0; r < R; ++r) {
      const __m256 offset = _mm256_set1_ps(int8_row_offset(a[r].scale, a[r].sum, units));
      for (int h = 0; h < 2; ++h)
        out[r].half[h] = _mm256_mul_ps(_mm256_sub_ps(acc[r][h], offset), _mm256_loadu_ps(scales + kHalfCols * h));
    }
  }
};

}  // namespace

void gemm_int8_channel(const QuantGemmArgs& args) { gemm_quant_vnni_loop<Int8Block>(args); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
