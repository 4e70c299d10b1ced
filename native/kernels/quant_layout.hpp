// Constants of the packed quantized weight and of the quantized activation records
// (gemm_quant.hpp), shared by the packer (quant_pack.cpp) and every quantized kernel. Constants
// only, so that the header is safe in sources compiled with any ISA flags.
#pragma once

#include <cstdint>

#include "kernels/gemm_quant.hpp"

namespace kt_moe {
namespace quant_layout {

constexpr int kCols = kQuantColBlock;      // 16 columns per block
constexpr int kQuadK = 4;                  // k per VNNI quad (one int32 lane of vpdpbusd / a tile dword)
constexpr int kQuadBytes = kCols * kQuadK;  // 64: one zmm / one AMX B-tile row

// Both formats pack K in units of 64 k, and activations have one scale per 64 k.
constexpr int kUnitK = 64;
constexpr int kUnitQuads = kUnitK / kQuadK;           // 16
constexpr int kTileBytes = kUnitQuads * kQuadBytes;  // 1024: one unit of int8 quads, one 16 x 64 B tile

// int8_channel: [scale fp32 x 16][units: 16 quads of q + 128]
constexpr int kInt8Zero = 128;               // stored byte = q + 128
constexpr int kInt8HeaderBytes = kCols * 4;  // the 16 column scales
constexpr int kInt8UnitBytes = kTileBytes;

// int4_group16, per unit: [8 x 64 B codes][4 x 16 fp16 scales][4 x 16 uint8 zeros (sixteenths)]
constexpr int kInt4Group = 16;                                // k per scale and zero point
constexpr int kInt4UnitGroups = kUnitK / kInt4Group;          // 4
constexpr int kInt4CodeVectors = kUnitK / 2 / kQuadK;         // 8 x 64 B of nibbles
constexpr int kInt4HalfVectors = kInt4CodeVectors / 2;        // 4 per half unit (u) of 32 k
constexpr int kInt4CodeBytes = kInt4CodeVectors * kQuadBytes;  // 512
constexpr int kInt4ScaleOffset = kInt4CodeBytes;               // fp16 [4][16]
constexpr int kInt4ZeroOffset = kInt4ScaleOffset + kInt4UnitGroups * kCols * 2;  // 640: uint8 [4][16]
constexpr int kInt4UnitBytes = kInt4ZeroOffset + kInt4UnitGroups * kCols;        // 704
constexpr int kInt4ZeroDen = 16;  // zero points are stored in sixteenths of a code
static_assert(kInt4UnitBytes % 64 == 0, "units keep blocks 64-byte aligned");

constexpr int kActQMax = 127;  // activations (and the AMX path's requantized weights) are in [-127, 127]

}  // namespace quant_layout
}  // namespace kt_moe
