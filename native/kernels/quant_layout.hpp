// Constants every packed weight format (gemm_quant.hpp) and the quantized activation records
// share. Constants only, so that the header is safe in sources compiled with any ISA flags; each
// format's own (scales, zero points, unit sizes) are in native/formats/<name>/layout.hpp.
#pragma once

#include <cstdint>

#include "kernels/gemm_quant.hpp"

namespace kt_moe {
namespace quant_layout {

constexpr int kCols = kQuantColBlock;      // 16 columns per block
constexpr int kQuadK = 4;                  // k per VNNI quad (one int32 lane of vpdpbusd / a tile dword)
constexpr int kQuadBytes = kCols * kQuadK;  // 64: one zmm / one AMX B-tile row

// Every format packs K in units of 64 k, and activations have one scale per 64 k.
constexpr int kUnitK = 64;
constexpr int kUnitQuads = kUnitK / kQuadK;           // 16
constexpr int kTileBytes = kUnitQuads * kQuadBytes;  // 1024: one unit of int8 quads, one 16 x 64 B tile

constexpr int kActQMax = 127;  // activations (and the AMX path's requantized weights) are in [-127, 127]

}  // namespace quant_layout
}  // namespace kt_moe
