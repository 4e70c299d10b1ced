// int4_kgroup's quantized GEMM (layout.hpp) in portable C++, level generic: the reference every
// other level matches bit for bit (the fp32 steps of layout.hpp).
#include <cstdint>
#include <cstring>

#include "formats/int4_kgroup/int4_kgroup.hpp"
#include "formats/int4_kgroup/layout.hpp"
#include "kernels/fp16.hpp"
#include "kernels/quant_gemm_generic_loop.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace int4_kgroup_layout;

// out[c] = sum_k a(k) * W[16 b + c, k]: per unit g, t = P - zero / 16 * sum (exact), then
// acc = fma(t, scale * a_s[g], acc).
void int4_block(const uint8_t* block, const QuantRow& a, int units, float (&out)[kCols]) {
  float acc[kCols] = {};
  for (int g = 0; g < units; ++g) {
    const uint8_t* unit = block + int64_t(g) * kUnitBytes;
    const int8_t* x = a.q + g * kUnitK;
    int32_t p[kCols] = {};
    for (int j = 0; j < kCodeVectors; ++j)
      for (int c = 0; c < kCols; ++c)
        for (int i = 0; i < kQuadK; ++i) {
          const int byte = unit[j * kQuadBytes + kQuadK * c + i];
          p[c] += x[kQuadK * j + i] * (byte & 0x0F) + x[32 + kQuadK * j + i] * (byte >> 4);
        }
    for (int c = 0; c < kCols; ++c) {
      fp16_t bits;
      std::memcpy(&bits, unit + kScaleOffset + c * 2, sizeof bits);
      const float z = float(unit[kZeroOffset + c]) * (1.0f / kZeroDen);
      const float t = float(p[c]) - z * a.sum[g];  // exact
      acc[c] = __builtin_fmaf(t, fp16_to_float(bits) * a.scale[g], acc[c]);
    }
  }
  std::memcpy(out, acc, sizeof acc);
}

}  // namespace

void gemm_int4_kgroup(const QuantGemmArgs& args) { gemm_quant_generic_loop(args, int4_block); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
