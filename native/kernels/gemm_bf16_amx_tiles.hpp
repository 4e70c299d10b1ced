// What the two AMX bf16 GEMM paths share (gemm_bf16_amx.cpp: P packed; gemm_bf16_amx_parity.cpp:
// P read in place): the tile geometry (every tile at its largest shape, tile::full_config(), loaded
// per call through tile::Scope), the weight rows' prefetch and the parity path's plan limits.
#pragma once

#include "kernels/amx/tile.hpp"
#include "kernels/gemm_bf16_plan.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

constexpr int kTileRows = tile::kMaxRows;            // 16 rows of an "A" tile / of a result tile
constexpr int kTileK = tile::kMaxColBytes / 2;       // 32 bf16 per "A" tile row (16 k pairs)
constexpr int kTilePairs = kTileK / 2;               // 16 pair rows of a "B" tile
constexpr int kResultCols = tile::kMaxColBytes / 4;  // 16 fp32 columns of a result tile

// Asks for `lines` 64-byte lines from each of the 16 rows starting at `base` (row stride
// stride_bytes) ahead of their tile loads. Both paths stream a weight from memory as tiles of 16
// rows read 64 or 128 bytes at a time with 32 to 64 rows in flight: more streams than the hardware
// prefetcher follows, and the tile loads alone keep few misses in flight. Callers pass only lines
// inside the array: a prefetch never faults, but forming a pointer past the end is undefined.
inline void prefetch_tile_rows(const void* base, int64_t stride_bytes, int lines) {
  const char* row = static_cast<const char*>(base);
  for (int r = 0; r < kTileRows; ++r, row += stride_bytes)
    for (int l = 0; l < lines; ++l) __builtin_prefetch(row + 64 * l);
}

// Plans whose P is stored kj, whose R has at most kParityMaxRows rows and whose P has at least
// kParityMinCols columns (gemm_bf16_amx_parity.cpp). Reading P in place costs twice the tile
// products of packing it: with a few rows (one expert's tokens in the backward at q = 128) the
// product is memory-bound and that work is free; from three row groups on, the packed path of
// gemm_bf16_amx.cpp is faster. A P narrower than one 32-column block (B_d^T d, B^T dg: r = 16
// columns) would be copied zero-padded to 32 columns at every call: packing it is cheaper
// (measured interleaved on the DeepSeek-V2-Lite backward: 3-5 ms less per step).
constexpr int kParityMaxRows = 32;
constexpr int kParityMinCols = 2 * kResultCols;  // one parity column block: 32 columns
void gemm_bf16_amx_parity(const GemmPlan& p);

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
