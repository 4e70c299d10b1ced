// int4_group16's quantized GEMM (layout.hpp) in portable C++, level generic: the reference its
// avx2 and VNNI levels match bit for bit (same fp32 order as gemm_avx2.cpp and gemm_vnni.cpp).
#include <cstdint>
#include <cstring>

#include "formats/int4_group16/int4_group16.hpp"
#include "formats/int4_group16/layout.hpp"
#include "kernels/fp16.hpp"
#include "kernels/quant_gemm_generic_loop.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace int4_group16_layout;

// out[c] = sum_k a(k) * W[16 b + c, k]: per unit g and column, y = sum_h (P_h - z_h * sum_h) *
// scale_h in the order h = 0..3 (the first a product, then FMAs), then acc = fma(y, a_s[g], acc).
void int4_block(const uint8_t* block, const QuantRow& a, int units, float (&out)[kCols]) {
  float acc[kCols] = {};
  for (int g = 0; g < units; ++g) {
    const uint8_t* unit = block + int64_t(g) * kUnitBytes;
    const int8_t* x = a.q + g * kUnitK;
    int32_t p[kUnitGroups][kCols] = {};  // P_h: group 2 u = low nibbles, 2 u + 1 = high nibbles
    for (int u = 0; u < 2; ++u)
      for (int j = 0; j < kHalfVectors; ++j) {
        const uint8_t* v = unit + (u * kHalfVectors + j) * kQuadBytes;
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
      for (int h = 0; h < kUnitGroups; ++h) {
        fp16_t bits;
        std::memcpy(&bits, unit + kScaleOffset + (h * kCols + c) * 2, sizeof bits);
        const float z = float(unit[kZeroOffset + h * kCols + c]) * (1.0f / kZeroDen);
        const float d = float(p[h][c]) - z * a.sum[g * kUnitGroups + h];  // exact
        y = h == 0 ? d * fp16_to_float(bits) : __builtin_fmaf(d, fp16_to_float(bits), y);
      }
      acc[c] = __builtin_fmaf(y, a.scale[g], acc[c]);
    }
  }
  std::memcpy(out, acc, sizeof acc);
}

}  // namespace

void gemm_int4_group16(const QuantGemmArgs& args) { gemm_quant_generic_loop(args, int4_block); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
