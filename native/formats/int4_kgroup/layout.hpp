// int4_kgroup's packed layout for the inference engine (method AMXINT4 with group_size 64 or 128;
// the canonical parts are the int4 groups', formats/int4_groups/int4_groups.hpp, which
// kt_moe/quant/int4_groups.py writes):
//   canonical parts   Kp = K rounded up to a multiple of G (64 or 128), g = Kp / G groups per row:
//                     codes uint8 [N, Kp / 2] (low nibble = even k), scale fp16 [N, g] and, with
//                     zero points, zero uint8 [N, g] in sixteenths of a code (symmetric groups: the
//                     fixed zero point 8, stored as 128): W[n, k] = (code - zero / 16) * scale.
//   packed block      per unit of 64 k, 576 B (0.5625 B per weight):
//                     8 x 64 B codes: vector j, byte 4 c + i holds k = 4 j + i in its low nibble and
//                       k = 32 + 4 j + i in its high nibble (column c), so that the low nibbles of
//                       vector j are quad j of the unit and the high nibbles quad 8 + j
//                     16 fp16 scales (32 B) and 16 uint8 zero points (16 B) of the unit's group
//                       (G = 128: each group's twice), 16 B of padding
//                     Units past Kp and padding columns: codes 0, scale 0, zero 0 (exactly 0).
// Why: one scale per 64-k unit is what the AMX tile product needs (one tile product per unit), so
// the AMX level multiplies the codes as they are (TDPBSUD on the nibbles taken to bytes; symmetric
// groups TDPBSSD on code - 8, gemm_amx.cpp) instead of requantizing every unit like int4_group16,
// and reads 18% fewer bytes. It costs accuracy: the
// relative error of the weights of a 2048-input matrix, randn / t(4)-distributed, is 0.084 / 0.109
// with zero points at G = 64, 0.095 / 0.142 symmetric, against int4_group16's 0.058 / 0.064.
//
// The product, with activation sums per 64 k (P_g the exact int32 dot product of unit g's
// activations with the codes):
//   t_g = P_g - (zero[n, g] / 16) * a_sum[g]   (exact in fp32: |t| < 2^18, a multiple of 1/16)
//   C   = fma(t_g, scale[n, g] * a_s[g], C) over the units g in order
// The same fp32 steps at every level (generic, avx2, avx512, avx512_bf16, amx, amx_emulated):
// bit-identical results.
#pragma once

#include "kernels/quant_layout.hpp"

namespace kt_moe {
namespace int4_kgroup_layout {

using namespace quant_layout;

constexpr int kCodeVectors = kUnitK / 2 / kQuadK;      // 8 x 64 B of nibbles
constexpr int kCodeBytes = kCodeVectors * kQuadBytes;  // 512
constexpr int kScaleOffset = kCodeBytes;               // fp16 [16]
constexpr int kZeroOffset = kScaleOffset + kCols * 2;  // uint8 [16]
constexpr int kUnitBytes = kCodeBytes + 64;            // 576
constexpr int kZeroDen = 16;                           // zero points in sixteenths of a code
constexpr int kSymmetricZero = 8 * kZeroDen;           // the fixed zero point of symmetric groups
constexpr int kSumGroup = kUnitK;                      // activation sums per 64 k
// gemm_quant_dispatch.cpp: from this many rows the amx level runs the tiles ([m, 2048] x
// [1408, 2048] with the weights read from memory, 1 thread: m = 8 0.243 ms on VNNI against 0.266 on
// tiles, m = 9 0.269 against 0.251)
constexpr int kAmxMinRows = 9;
static_assert(kUnitBytes % 64 == 0, "units keep blocks 64-byte aligned");
static_assert(kZeroOffset + kCols <= kUnitBytes, "the zero points fit the unit");

}  // namespace int4_kgroup_layout
}  // namespace kt_moe
