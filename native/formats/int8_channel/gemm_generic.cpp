// int8_channel's quantized GEMM (layout.hpp) in portable C++, level generic: the reference its
// other levels match. Per 64-k unit the exact int32 dot products of the packed quads, then the
// fp32 order of layout.hpp.
#include <cstdint>
#include <cstring>

#include "formats/int8_channel/int8_channel.hpp"
#include "formats/int8_channel/row_offset.hpp"
#include "kernels/quant_gemm_generic_loop.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace int8_channel_layout;

// out[c] = sum_k a(k) * W[16 b + c, k] for the block at `block`.
void int8_block(const uint8_t* block, const QuantRow& a, int units, float (&out)[kCols]) {
  float scales[kCols], acc[kCols] = {};
  std::memcpy(scales, block, sizeof scales);
  for (int g = 0; g < units; ++g) {
    const uint8_t* w = block + kHeaderBytes + int64_t(g) * kUnitBytes;
    const int8_t* x = a.q + g * kUnitK;
    int32_t d[kCols] = {};
    for (int j = 0; j < kUnitQuads; ++j)
      for (int c = 0; c < kCols; ++c)
        for (int i = 0; i < kQuadK; ++i) d[c] += x[kQuadK * j + i] * w[j * kQuadBytes + kQuadK * c + i];
    for (int c = 0; c < kCols; ++c) acc[c] = __builtin_fmaf(float(d[c]), a.scale[g], acc[c]);
  }
  const float offset = int8_row_offset(a.scale, a.sum, units);
  for (int c = 0; c < kCols; ++c) out[c] = (acc[c] - offset) * scales[c];
}

}  // namespace

void gemm_int8_channel(const QuantGemmArgs& args) { gemm_quant_generic_loop(args, int8_block); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
