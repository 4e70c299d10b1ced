// Formats int8_rows (method MOE_INT8) and int4_rows (MOE_INT4): the portable integer methods. The
// weights stay in their canonical parts, row-major as kt_moe.quant writes them (no packing, so a
// file loads the same on every CPU); the products quantize the activations to int8
// (quantize_activations' records: a scale per 64 k, sums per 16 k), multiply in exact integers and
// do the fp32 steps in one order at every level, so that every level gives bit-identical outputs.
//   int8_rows  q int8 [N, K], scale fp32 [N] (int8_channel's parts and quantizer)
//     lane j (0..7) of 64-k group g: I = sum of qa[k] q[n, k] over k = 64 g + 32 t + 4 j + b (t < 2,
//     b < 4, k < K); P_j = P_j + float(I) * sa[g] for g = 0, 1, ...; then
//     out = reduce(P) * scale[n]
//   int4_rows  codes uint8 [N, Kp / 2] (low nibble = even k), scale fp16 [N, Kp / 16], zero uint8
//     [N, Kp / 16], W = (code - zero / 16) * scale (int4_group16's parts and quantizer; Kp = K
//     rounded up to 16): group g (16 k): I = 16 sum_k qa[k] code[n, k] - zero[n, g] sum_k qa[k]
//     (exact); lane j = g mod 8: P_j = P_j + (float(I) * scale[n, g]) * (sa[g / 4] * 0.0625f); then
//     out = reduce(P)
//   reduce(P) = ((P0 + P4) + (P2 + P6)) + ((P1 + P5) + (P3 + P7)), P starting at +0.
// Every fp32 step is one correctly rounded operation (the sources are built with -ffp-contract=off).
// int4_rows takes slices that start at a group boundary (col0 == 0); others go through the
// dequantizer (then not bit-identical across levels).
#pragma once

#include <cstdint>

#include "kernels/dequant_bf16.hpp"

namespace kt_moe {

// c[i * ldc + (n - n0)] = sum_k a[i, k] W[n, k]   i < m, n0 <= n < n1 (any m: DequantDotFn and
// DequantGemmFn); integer_products.cpp, compiled for generic (plain C++) and avx2.
#define KT_INT_ROWS_PRODUCTS                                                                                    \
  bool product_int8_rows(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c, \
                         int64_t ldc);                                                                           \
  bool product_int4_rows(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c, \
                         int64_t ldc);
namespace generic {
KT_INT_ROWS_PRODUCTS
}
namespace avx2 {
KT_INT_ROWS_PRODUCTS
}
#undef KT_INT_ROWS_PRODUCTS

}  // namespace kt_moe
