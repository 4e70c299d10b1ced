// Dequantization of stored quantized weights to bf16, behind one entry per ISA level: how the SFT
// engine multiplies by a quantized base (moe/base_products.hpp dequantizes a block of rows into
// thread scratch, then runs the bf16 GEMM on it). Every level gives the same bits:
//   int8_channel  D[r, c] = q[r, c] as bf16 (exact); the row scale is NOT applied here: the products
//                 apply it in fp32 (W[r, c] = D[r, c] * scale[r])
//   int4          D[r, c] = bf16((float(code[r, j]) - zero[r, g] * 0.0625f) * fp16_to_float(scale[r, g])),
//                 j = col0 + c the stored column, g = j / group; zero is in sixteenths of a code, and
//                 zero * 0.0625f = 8 for every group when the matrix has no zero points (symmetric).
//                 The fp32 value is exact (code - z is a multiple of 1/16 in [-16, 15], the scale has
//                 11 significant bits: at most 20 bits) and is W[r, c] itself; it is rounded once, to
//                 nearest even. For finite scales it is 0 or at least 2^-28 in magnitude (never a
//                 denormal) and below 2^20 (never infinite), so every level rounds it the same way.
//
// The stored formats are the canonical ones of kt_moe.quant (int8_channel; int4_group16 and
// int4_kgroup), cut to a tensor-parallel slice: a slice of an int4 matrix along its inputs keeps
// the whole groups that cover its columns, so its logical column 0 is stored column col0.
#pragma once

#include <cstdint>

#include "cpu/cpu_features.hpp"
#include "kernels/fp16.hpp"
#include "kernels/gemm_bf16.hpp"

namespace kt_moe {

enum class DequantFormat : int { int8_channel = 0, int4 = 1 };

// A quantized W [rows, cols] (logical shape). Row r's data starts at values + r * ld_values.
//   int8_channel  values: int8 q, cols per row (ld_values >= cols); scale: fp32 [rows] (one per row).
//   int4          values: codes, two per byte (stored column j in byte j / 2, the low nibble for even
//                 j); stored columns [0, col0 + cols) are present, in whole groups of `group` (16, 32,
//                 64 or 128: a power of two, at least 16), so ld_values >= that rounded up to a group,
//                 halved; scale_fp16: fp16 [rows, ld_scale], one per group (finite); zero: uint8
//                 [rows, ld_zero], the zero point in sixteenths of a code (0..255: 0 to 15.9375), or
//                 null for symmetric groups (zero point 8). Nothing beyond those groups is read.
struct QuantMatrixView {
  DequantFormat format = DequantFormat::int8_channel;
  int rows = 0, cols = 0;
  int group = 0;  // int4: stored columns per scale
  int col0 = 0;   // int4: the stored column of logical column 0 (0 <= col0 < group)
  const uint8_t* values = nullptr;
  int64_t ld_values = 0;  // bytes
  const float* scale = nullptr;        // int8_channel
  const fp16_t* scale_fp16 = nullptr;  // int4
  int64_t ld_scale = 0;  // fp16 elements (int4)
  const uint8_t* zero = nullptr;
  int64_t ld_zero = 0;  // bytes (int4)
};

// dst[(r - r0) * ld + (c - c0)] = D[r, c]   for r0 <= r < r1, c0 <= c < c1 (0 <= r0 <= r1 <= rows,
// 0 <= c0 <= c1 <= cols; not checked: the callers are the engine's own products).
using DequantFn = void (*)(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld);

// The dequantizer of `level` (amx_emulated included); never null. Vectorised (AVX-512) at the levels
// that have AVX-512, portable otherwise.
DequantFn dequant_bf16_kernel(IsaLevel level);

namespace generic {
void dequant_bf16(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld);
}
namespace avx512 {
void dequant_bf16(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld);
}
namespace avx512_bf16 {
void dequant_bf16(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld);
}

}  // namespace kt_moe
