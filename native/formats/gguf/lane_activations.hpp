// The activations of the GGUF many-rows products (dequant_gemm.cpp) quantized to int8 as ggml does
// (q8_activations.hpp: blocks of 256 columns for the K-quants, of 32 for Q8_0) and laid out with the
// rows across the lanes of a vector: rows in groups of 16 (the last padded with zero rows), and per
// group and 4 columns ("quad") 64 bytes, lane r's 4 codes at bytes 4r..4r+3: the signed operand of
// vpdpbusd against one weight row's 4 codes broadcast as the unsigned one. Per group and block the
// 16 rows' scales d, and per 16 columns (k_quant) the 16 rows' sums of q (fp32, exact), or (q8_0)
// per 32 columns -128 * (sum of their q) as int32 (the correction of Q8_0 codes offset to unsigned
// bytes). A vector of Vec::kLanes rows (vector_ops.hpp: all 16 of a group at the AVX-512 levels, 8 at
// avx2) reads its part of each 64 bytes. AVX2 and AVX-512 levels; compiled per level
// (level_namespace.hpp).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "formats/gguf/q8_activations.hpp"
#include "kernels/bf16.hpp"
#include "kernels/level_namespace.hpp"
#include "kernels/scratch.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

constexpr int kGroupRows = 16;  // rows per group of the layout

struct LaneActivations {
  int groups = 0;    // of 16 rows
  int64_t ld = 0;    // columns, cols rounded up to 256
  int block = 0;     // columns per scale: 256 (k_quant) or 32 (q8_0)
  const uint8_t* quads = nullptr;  // [groups][ld / 4][64]
  const float* d = nullptr;        // [groups][ld / block][16]
  const float* sums = nullptr;     // k_quant: [groups][ld / 16][16], sum of q
  const int32_t* bias = nullptr;   // q8_0: [groups][ld / 32][16], -128 * sum of q

  // Row i's first quad, scale and sum, i = 16 g + r: lane r of group g (col / 4 quads of 64 bytes
  // further on: + 16 col bytes; the next block's scales, the next sums 16 floats on).
  const uint8_t* quads_of(int i) const { return quads + (i / kGroupRows) * ld * 16 + 4 * (i % kGroupRows); }
  const float* d_of(int i) const { return d + (i / kGroupRows) * (ld / block) * kGroupRows + i % kGroupRows; }
  const float* sums_of(int i) const { return sums + (i / kGroupRows) * (ld / 16) * kGroupRows + i % kGroupRows; }
  const int32_t* bias_of(int i) const { return bias + (i / kGroupRows) * (ld / 32) * kGroupRows + i % kGroupRows; }
};

// a: bf16 [m, cols] (row stride lda). In the thread's ScratchSlot::packed (the lane layout) and
// ScratchSlot::row_tail (one quantized row at a time).
inline LaneActivations lane_activations(const bf16_t* a, int64_t lda, int m, int cols, Q8Blocks blocks) {
  LaneActivations x;
  const bool k_quant = blocks == Q8Blocks::k_quant;
  x.groups = (m + kGroupRows - 1) / kGroupRows;
  x.ld = (int64_t(cols) + 255) / 256 * 256;
  x.block = k_quant ? 256 : 32;
  const int64_t quad_bytes = x.groups * x.ld * kGroupRows, blocks_per_row = x.ld / x.block, per32 = x.ld / 32;
  const int64_t d_bytes = sizeof(float) * x.groups * blocks_per_row * kGroupRows, sums_bytes = 4 * x.groups * (k_quant ? 2 * per32 : per32) * kGroupRows;
  auto* base = static_cast<uint8_t*>(thread_scratch(ScratchSlot::packed, size_t(quad_bytes + d_bytes + sums_bytes)));
  auto* quads = base;
  auto* d = reinterpret_cast<float*>(base + quad_bytes);
  float* sums = k_quant ? reinterpret_cast<float*>(base + quad_bytes + d_bytes) : nullptr;
  int32_t* bias = k_quant ? nullptr : reinterpret_cast<int32_t*>(base + quad_bytes + d_bytes);
  auto* q = static_cast<int8_t*>(thread_scratch(ScratchSlot::row_tail, size_t(x.ld + 2 * per32 * 2)));
  auto* sums16 = reinterpret_cast<int16_t*>(q + x.ld);
  for (int g = 0; g < x.groups; ++g)
    for (int r = 0; r < kGroupRows; ++r) {
      const int i = g * kGroupRows + r;
      const bf16_t* row = a + std::min(i, m - 1) * lda;  // rows past m: zeros (nothing read)
      float row_d[8];  // the row's scale per block of the current 256 columns
      for (int64_t c = 0; c < x.ld; c += 256) {
        const int real = i < m ? int(std::clamp<int64_t>(cols - c, 0, 256)) : 0;
        if (k_quant) {
          row_d[0] = q8_detail::quantize_block<16>(row + c, real, q + c, sums16 + c / 16);
          d[(g * blocks_per_row + c / 256) * kGroupRows + r] = row_d[0];
        } else {
          for (int b = 0; b < 8; ++b) {
            const int part = std::clamp(real - 32 * b, 0, 32);
            row_d[b] = q8_detail::quantize_block<2>(row + c + 32 * b, part, q + c + 32 * b, sums16 + c / 16 + 2 * b);
            d[(g * blocks_per_row + c / 32 + b) * kGroupRows + r] = row_d[b];
          }
        }
        if (k_quant)
          for (int b = 0; b < 16; ++b) sums[(g * 2 * per32 + c / 16 + b) * kGroupRows + r] = float(sums16[c / 16 + b]);
        else
          for (int b = 0; b < 8; ++b)
            bias[(g * per32 + c / 32 + b) * kGroupRows + r] = -128 * (sums16[c / 16 + 2 * b] + sums16[c / 16 + 2 * b + 1]);
      }
      for (int64_t t = 0; t < x.ld / 4; ++t) std::memcpy(quads + ((g * x.ld) / 4 + t) * 64 + 4 * r, q + 4 * t, 4);
    }
  x.quads = quads;
  x.d = d;
  x.sums = sums;
  x.bias = bias;
  return x;
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
