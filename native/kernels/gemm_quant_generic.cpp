// Quantized GEMM (gemm_quant.hpp) in portable C++, level generic: the reference every other level
// must match. For each 16-column block and each row: the exact int32 dot products from the packed
// VNNI quads, then the fp32 sums in the order gemm_quant.hpp gives (for int4_group16 the same
// order as gemm_quant_vnni.cpp, so that the results are bit-identical).
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
void int8_block(const uint8_t* block, const QuantRow& a, int units, float (&out)[kCols]) {
  float scales[kCols], acc[kCols] = {};
  std::memcpy(scales, block, sizeof scales);
  for (int g = 0; g < units; ++g) {
    const uint8_t* w = block + kInt8HeaderBytes + int64_t(g) * kInt8UnitBytes;
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

// The same for int4_group16: per unit g and column, y = sum_h (P_h - z_h * sum_h) * scale_h in the
// order h = 0..3 (the first a product, then FMAs), then acc = fma(y, a_s[g], acc).
void int4_block(const uint8_t* block, const QuantRow& a, int units, float (&out)[kCols]) {
  float acc[kCols] = {};
  for (int g = 0; g < units; ++g) {
    const uint8_t* unit = block + int64_t(g) * kInt4UnitBytes;
    const int8_t* x = a.q + g * kUnitK;
    int32_t p[kInt4UnitGroups][kCols] = {};  // P_h: group 2 u = low nibbles, 2 u + 1 = high nibbles
    for (int u = 0; u < 2; ++u)
      for (int j = 0; j < kInt4HalfVectors; ++j) {
        const uint8_t* v = unit + (u * kInt4HalfVectors + j) * kQuadBytes;
        const int8_t* xl = x + 32 * u + kQuadK * j;  // the low nibbles' k; the high ones' are 16 further
        for (int c = 0; c < kCols; ++c)
          for (int i = 0; i < kQuadK; ++i) {
            const int byte = v[kQuadK * c + i];
            p[2 * u][c] += xl[i] * (byte & 0x0F);
            p[2 * u + 1][c] += xl[16 + i] * (byte >> 4);
          }
      }
    for (int c = 0; c < kCols; ++c) {
      float y = 0.0f;
      for (int h = 0; h < kInt4UnitGroups; ++h) {
        fp16_t bits;
        std::memcpy(&bits, unit + kInt4ScaleOffset + (h * kCols + c) * 2, sizeof bits);
        const float z = float(unit[kInt4ZeroOffset + h * kCols + c]) * (1.0f / kInt4ZeroDen);
        const float d = float(p[h][c]) - z * a.sum[g * kInt4UnitGroups + h];  // exact
        y = h == 0 ? d * fp16_to_float(bits) : __builtin_fmaf(d, fp16_to_float(bits), y);
      }
      acc[c] = __builtin_fmaf(y, a.scale[g], acc[c]);
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
