// int8_channel: one int8 code per weight and an fp32 scale per output channel (methods AMXINT8 and
// AMXINT8_SFT; kt_moe/quant/int8_channel.py writes it).
//   canonical parts   q int8 [N, K], scale fp32 [N]:        W[n, k] ~= q[n, k] * scale[n]
//   packed block      [scale fp32 x 16][per 64 k: 16 quads x 64 B of q + 128 (uint8)]
// The product (per output (m, n), D'_g exact int32 dot products, identical at every level):
//   D'_g = sum_{k in g} a_q[k] * (q[n, k] + 128)
//   C = (sum_g a_s[g] * D'_g  -  128 * sum_g a_s[g] * a_sum[g]) * scale[n]
// with activation sums per 64 k. The AMX level multiplies the stored unsigned bytes by the signed
// activations (TDPBSUD) and applies the same correction. The avx2 level widens both to 16-bit
// words first (gemm_avx2.cpp: vpmaddubsw's int16 pair sums would saturate on 255 x 127) and takes
// the fp32 steps in gemm_generic.cpp's order (bit-identical results).
#pragma once

#include "kernels/quant_layout.hpp"

namespace kt_moe {
namespace int8_channel_layout {

using namespace quant_layout;

constexpr int kZero = 128;               // stored byte = q + 128
constexpr int kHeaderBytes = kCols * 4;  // the 16 column scales
constexpr int kUnitBytes = kTileBytes;
constexpr int kSumGroup = kUnitK;        // activation sums per 64 k
constexpr int kAmxMinRows = 5;           // gemm_quant_dispatch.cpp: INT8 tiles win from 5 rows

// Canonical part indices.
enum Part : int { kQ = 0, kScale = 1 };

}  // namespace int8_channel_layout
}  // namespace kt_moe
