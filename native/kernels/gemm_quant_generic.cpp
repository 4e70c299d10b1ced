// Quantized GEMM (gemm_quant.hpp) in portable C++, level generic: the reference every other level
// must match. For each 16-column block and each row: the exact int32 group dot products from the
// packed VNNI quads, then the fp32 group sums in the order gemm_quant.hpp gives.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_quant_levels.hpp"
#include "kernels/quant_kernel_common.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace quant_layout;

// out[c] = sum_k a(k) * W[16 b + c, k] for the block at `block`, int8_channel.
void int8_block(const uint8_t* block, const QuantRow& a, int groups, float (&out)[kCols]) {
  float scales[kCols], acc[kCols] = {};
  std::memcpy(scales, block, sizeof scales);
  for (int g = 0; g < groups; ++g) {
    const uint8_t* w = block + kInt8HeaderBytes + int64_t(g) * kInt8GroupBytes;
    const int8_t* x = a.q + g * kInt8Group;
    int32_t d[kCols] = {};
    for (int j = 0; j < kInt8Group / kQuadK; ++j)
      for (int c = 0; c < kCols; ++c)
        for (int i = 0; i < kQuadK; ++i) d[c] += x[kQuadK * j + i] * w[j * kQuadBytes + kQuadK * c + i];
    for (int c = 0; c < kCols; ++c) acc[c] = __builtin_fmaf(float(d[c]), a.scale[g], acc[c]);
  }
  const float offset = int8_row_offset(a.scale, a.sum, groups);
  for (int c = 0; c < kCols; ++c) out[c] = (acc[c] - offset) * scales[c];
}

// The same for int4_group32.
void int4_block(const uint8_t* block, const QuantRow& a, int groups, float (&out)[kCols]) {
  const uint8_t* zeros = block + int64_t(groups) * kInt4GroupBytes;
  float acc[kCols] = {};
  for (int g = 0; g < groups; ++g) {
    const uint8_t* w = block + int64_t(g) * kInt4GroupBytes;
    const int8_t* x = a.q + g * kInt4Group;
    int32_t d[kCols] = {};
    for (int j = 0; j < kInt4CodeVectors; ++j)
      for (int c = 0; c < kCols; ++c)
        for (int i = 0; i < kQuadK; ++i) {
          const int byte = w[j * kQuadBytes + kQuadK * c + i];
          d[c] += x[kQuadK * j + i] * (byte & 0x0F) + x[16 + kQuadK * j + i] * (byte >> 4);
        }
    float scales[kCols];
    std::memcpy(scales, w + kInt4CodeBytes, sizeof scales);
    for (int c = 0; c < kCols; ++c) {
      const int32_t dg = d[c] - int32_t(zeros[g * kCols + c]) * int32_t(a.sum[g]);
      acc[c] = __builtin_fmaf(float(dg) * scales[c], a.scale[g], acc[c]);
    }
  }
  std::memcpy(out, acc, sizeof acc);
}

}  // namespace

void gemm_quant(const QuantGemmArgs& args) {
  validate_quant_gemm(args);
  if (args.m == 0 || args.n0 == args.n1) return;
  const QuantActLayout layout = quant_act_layout(args.a.format, args.a.k);
  const int64_t block_bytes = quant_block_bytes(args.w.format, args.w.k);
  for (int n = args.n0; n < args.n1; n += kCols) {
    const uint8_t* block = args.w.data + (n / kCols) * block_bytes;
    for (int i = 0; i < args.m; ++i) {
      const QuantRow a = quant_row(args, layout, i);
      float out[kCols];
      if (args.w.format == QuantFormat::int8_channel)
        int8_block(block, a, layout.groups, out);
      else
        int4_block(block, a, layout.groups, out);
      store_columns(args.c + i * args.ldc + n, out, std::min(kCols, args.n1 - n), args.accumulate);
    }
  }
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
