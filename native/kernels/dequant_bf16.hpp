// Dequantization of stored quantized weights to bf16, behind one entry per format and ISA level:
// how the SFT engine multiplies by a quantized base (moe/base_products.hpp dequantizes a block of
// rows into thread scratch, then runs the bf16 GEMM on it). Each format defines its D (the bf16
// matrix its dequantizer writes; native/formats/<name>/), and every level of a format gives the same
// bits. A format either dequantizes W itself (D = W rounded once to bf16) or, with row_scales,
// leaves a per-row fp32 scale to the products (D = W / scale[r], exact in bf16; W[r, c] =
// D[r, c] * scale[r]).
//
// The stored matrix is a format's canonical parts (kt_moe.quant), cut to a tensor-parallel slice: a
// slice of a grouped matrix along its inputs keeps the whole groups that cover its columns, so its
// logical column 0 is stored column col0.
#pragma once

#include <cstdint>

#include "cpu/cpu_features.hpp"
#include "kernels/by_level.hpp"
#include "kernels/gemm_bf16.hpp"

namespace kt_moe {

struct QuantMatrixView;
// dst[(r - r0) * ld + (c - c0)] = D[r, c]   for r0 <= r < r1, c0 <= c < c1 (0 <= r0 <= r1 <= rows,
// 0 <= c0 <= c1 <= cols; not checked: the callers are the engine's own products).
using DequantFn = void (*)(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld);

// C[i, n - n0] = sum_k a[i, k] W[n, k]   for i < m, n0 <= n < n1, m <= kDequantDotMaxRows, straight
// from the stored parts with the weights' fp32 values (scales included, row_scales or not): the
// few-rows products (the decode) of a format that has them, instead of dequantizing row blocks to
// bf16 for the GEMM. a: bf16 [m, cols] (row stride lda); c: fp32 (row stride ldc) at column n0.
// Returns false, having written nothing, for a matrix it does not take (the caller then dequantizes).
using DequantDotFn = bool (*)(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                              int64_t ldc);
constexpr int kDequantDotMaxRows = 4;
// The same product for any m (the prefill; the decode too where the format has no few-rows product),
// where a format has one that beats dequantizing row blocks for the bf16 GEMM; false, having
// written nothing, for a matrix (or activations) it does not take.
using DequantGemmFn = DequantDotFn;

// C[i, j - j0] (+)= sum_r a[i, r] W[r, j]   for i < m, j0 <= j < j1 (accumulate: add to C), with
// the weights' fp32 values, straight from the stored parts: the backward's product with the weight
// transposed, where a format has one that beats dequantizing row blocks for the bf16 GEMM. a: bf16
// [m, rows] (row stride lda); c: fp32 (row stride ldc) at column j0. Returns false, having written
// nothing, for a matrix (or a) it does not take.
using DequantGemmNnFn = bool (*)(const QuantMatrixView& w, int m, int j0, int j1, const bf16_t* a, int64_t lda,
                                 float* c, int64_t ldc, bool accumulate);

// A format's dequantizers, each table listing the levels that have their own kernel (by_level.hpp).
struct DequantFormat {
  const char* name;
  bool row_scales;                     // D = W / scale[r]: the products apply scale (fp32 [rows]) themselves
  ByLevel<DequantFn> kernels;          // a generic entry at least
  ByLevel<DequantDotFn> dot;           // empty: the format has no few-rows product
  ByLevel<DequantGemmFn> gemm;         // empty: the format has no many-rows product
  ByLevel<DequantGemmNnFn> gemm_nn{};  // empty: the format has no product with W transposed
};

// A quantized W [rows, cols] (logical shape) as the format stores it. Row r's values start at
// values + r * ld_values (bytes); scale and zero are the format's arrays (ld_scale, ld_zero in
// their elements), zero null when the format has none. `group`: the format's inputs per scale.
// (row0, col0): where logical (0, 0) lies inside the first stored scale unit (a slice that starts
// inside a group or block): grouped formats store whole groups, logical column c at stored column
// col0 + c (0 <= col0 < group); block formats store the scales of whole blocks, the scale of
// (r, c) at [(row0 + r) / block, (col0 + c) / block].
struct QuantMatrixView {
  const DequantFormat* format = nullptr;
  int rows = 0, cols = 0;
  int group = 0;
  int row0 = 0, col0 = 0;
  const uint8_t* values = nullptr;
  int64_t ld_values = 0;
  const void* scale = nullptr;
  int64_t ld_scale = 0;
  const uint8_t* zero = nullptr;
  int64_t ld_zero = 0;
};

// The dequantizer of w's format at `level` (or a fallback level's); std::invalid_argument when none.
DequantFn dequant_bf16_kernel(const DequantFormat& format, IsaLevel level);
// The format's few-rows product at `level` (or a fallback level's), or null.
inline DequantDotFn dequant_dot_kernel(const DequantFormat& format, IsaLevel level) { return format.dot.at(level); }
// The format's many-rows product at `level` (or a fallback level's), or null.
inline DequantGemmFn dequant_gemm_kernel(const DequantFormat& format, IsaLevel level) { return format.gemm.at(level); }
// The format's product with W transposed at `level` (or a fallback level's), or null.
inline DequantGemmNnFn dequant_gemm_nn_kernel(const DequantFormat& format, IsaLevel level) {
  return format.gemm_nn.at(level);
}

}  // namespace kt_moe
