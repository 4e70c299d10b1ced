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

// int8_channel: [scale fp32 x 16][groups of 64 k x 16 columns, quads of q + 128]
constexpr int kInt8Group = 64;
constexpr int kInt8Zero = 128;                                     // stored byte = q + 128
constexpr int kInt8HeaderBytes = kCols * 4;                        // the 16 column scales
constexpr int kInt8GroupBytes = kInt8Group / kQuadK * kQuadBytes;  // 1024: one 16 x 64 B tile

// int4_group32: per group [4 x 64 B codes (quads j | quads 4 + j in the high nibbles)][16 fp32
// scales], then the zeros [groups][16] uint8.
constexpr int kInt4Group = 32;
constexpr int kInt4CodeVectors = kInt4Group / 2 / kQuadK;               // 4 x 64 B of nibbles
constexpr int kInt4CodeBytes = kInt4CodeVectors * kQuadBytes;          // 256
constexpr int kInt4GroupBytes = kInt4CodeBytes + kCols * 4;            // 320 (codes + scales)
constexpr int kInt4UnpackedGroupBytes = kInt4Group / kQuadK * kQuadBytes;  // 512: 8 quads as bytes

constexpr int kActQMax = 127;  // activations are quantized to [-127, 127]

}  // namespace quant_layout
}  // namespace kt_moe
