// The zero-point term of an int8_channel product (layout.hpp): the format stores q + 128, so every
// 64-k dot product of a row carries 128 * a_s * a_sum too. Computed in this order at every level.
// Compiled per level (level_namespace.hpp).
#pragma once

#include "formats/int8_channel/layout.hpp"
#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

inline float int8_row_offset(const float* scale, const float* sum, int groups) {
  float s = 0.0f;
  for (int g = 0; g < groups; ++g) s = __builtin_fmaf(scale[g], sum[g], s);
  return float(int8_channel_layout::kZero) * s;
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
