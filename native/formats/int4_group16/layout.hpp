// int4_group16: 4-bit codes with an fp16 scale and a fractional zero point per group of 16 inputs
// (methods AMXINT4 and AMXINT4_SFT; kt_moe/quant/int4_group16.py writes it).
//   canonical parts   Kp = K rounded up to a multiple of 16, g = Kp / 16 groups per row:
//                     codes uint8 [N, Kp / 2] (low nibble = even k, high nibble = odd k),
//                     scale fp16 [N, g], zero uint8 [N, g] in sixteenths of a code (z = zero / 16):
//                     W[n, k] ~= (code[n, k] - zero[n, k / 16] / 16) * scale[n, k / 16].
//                     The dequantized value is exact in fp32 (code - z is a multiple of 1/16 in
//                     [-16, 15], times an fp16 scale: at most 20 significant bits). Codes of k >= K
//                     in the last group are whatever the quantizer gave the zero padding: they meet
//                     zero activations.
//   packed block      per unit of 64 k, 704 B (0.6875 B per weight):
//                     8 x 64 B codes: vector 4 u + j (u = 0, 1 the halves of 32 k, j = 0..3), byte
//                       4 c + i holds k = 32 u + 4 j + i in its low nibble and k = 32 u + 16 + 4 j + i
//                       in its high nibble (column c): the 16-k group h = 2 u is the low nibbles of
//                       vectors 4 u .. 4 u + 3, h = 2 u + 1 their high nibbles
//                     4 x 16 fp16 scales (128 B): group h, column c at [h][c]
//                     4 x 16 uint8 zeros (64 B), sixteenths: group h, column c at [h][c]
//                     Whole groups past Kp and padding columns: codes 0, scale 0, zero 0 (exactly 0).
// Why groups of 16 with fitted fractional zero points: the relative L2 error of a DeepSeek-V2-Lite
// expert MLP against fp32 is ~0.10 (0.125 worst single token), where the former groups of 32 with
// integer zero points and fp32 scales gave 0.136 (up to 0.17 on single tokens) against a 0.15 bar;
// it costs 0.6875 bytes per weight (was 0.656).
//
// The product, with activation sums per 16 k (P_h exact int32 dot products over the 16-k group h):
//   C = sum_{g64} a_s[g] * sum_{h in g} (P_h - z[n, h] * a_sum[h]) * scale[n, h]
// The generic, the avx2 and the VNNI levels (avx512, avx512_bf16) compute it exactly so, in the
// same fp32 order (bit-identical results); avx2 takes both nibbles down to 0..15 (gemm_avx2.cpp),
// the VNNI levels keep the high nibbles in place (gemm_vnni.cpp). The AMX level's product is an approximation of it: tdpbssd
// multiplies int8 by int8 at K = 64, so each 64-k unit of a 16-column block is requantized to int8
// first, per column c: Wf = the exact fp32 dequantized weights of the unit, amax = max_k |Wf[c, k]|;
// if amax < FLT_MIN then S[c] = 0 and w8 = 0, else S[c] = amax / 127 and w8[c, k] =
// round_half_even(Wf[c, k] * (127 / amax)) (fp32, in [-127, 127]). Then
//   C = sum_{g64} a_s[g] * S[n, g] * D_g,   D_g = sum_{k in g} a_q[k] * w8[n, k]   (exact int32),
// the INT8 tile product with a column scale per 64-k unit. The requantization adds ~0.6% relative
// error per matrix (~1% on an expert MLP) on top of the exact product; amx_emulated runs the same
// source on emulated tiles and gives bit-identical results.
#pragma once

#include "kernels/quant_layout.hpp"

namespace kt_moe {
namespace int4_group16_layout {

using namespace quant_layout;

constexpr int kGroup = 16;                                // k per scale and zero point
constexpr int kUnitGroups = kUnitK / kGroup;              // 4
constexpr int kCodeVectors = kUnitK / 2 / kQuadK;         // 8 x 64 B of nibbles
constexpr int kHalfVectors = kCodeVectors / 2;            // 4 per half unit (u) of 32 k
constexpr int kCodeBytes = kCodeVectors * kQuadBytes;     // 512
constexpr int kScaleOffset = kCodeBytes;                  // fp16 [4][16]
constexpr int kZeroOffset = kScaleOffset + kUnitGroups * kCols * 2;  // 640: uint8 [4][16]
constexpr int kUnitBytes = kZeroOffset + kUnitGroups * kCols;        // 704
constexpr int kZeroDen = 16;  // zero points are stored in sixteenths of a code
constexpr int kSumGroup = kGroup;  // activation sums per 16 k
// gemm_quant_dispatch.cpp: INT4 tiles only win from 24 rows (they requantize each unit first)
constexpr int kAmxMinRows = 24;
static_assert(kUnitBytes % 64 == 0, "units keep blocks 64-byte aligned");

// Canonical part indices.
enum Part : int { kCodes = 0, kScale = 1, kZero = 2 };

}  // namespace int4_group16_layout
}  // namespace kt_moe
