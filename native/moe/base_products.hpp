// The SFT engine's products with its frozen base weights, whatever their format: one place for
// the bf16 base (read in place by the bf16 GEMM) and the quantized ones (a block of stored rows
// dequantized to bf16 into thread scratch, then the bf16 GEMM of the active level on the block).
// A few rows (at most kDequantDotMaxRows) go through the format's fused product instead, when it
// has one, and a format's many-rows products (`gemm` forward, `gemm_nn` backward; int8_channel's at
// the AMX levels) take any rows they accept first (kernels/dequant_bf16.hpp). Both directions walk
// ROW blocks of the stored W [N, K], so the backward needs no transposed copy of a quantized weight:
//   base_nt (forward, the weight as stored):  C[:, b0 - n0 : b1 - n0] = A x W[b0:b1, :]^T
//   base_nn (backward, the weight transposed): C += A[:, k0:k1] x W[k0:k1, j0:j1]
// Blocks hold the dequantized weight, or for a row_scales format (int8_channel) W / scale exactly,
// the row scales then applied in fp32 to the forward's outputs and to the backward's inputs
// (rounded to bf16). Either way the
// result is the dequantized weight's product up to bf16 rounding of the GEMM inputs and the fp32
// summation order. Single-threaded, like the GEMM kernels; the engine calls them from its tasks.
#pragma once

#include <cstdint>

#include "cpu/cpu_features.hpp"
#include "kernels/dequant_bf16.hpp"
#include "kernels/gemm_bf16.hpp"

namespace kt_moe {

// Bytes of bf16 weight one dequantized block holds. The backward's GEMM reads its block in place
// (AMX: gemm_bf16_amx_parity.cpp) and the block stays in L2 between the dequantizer writing it and
// the GEMM reading it. The forward's GEMM packs the tokens again at every call (about 15 us for 12
// tokens of 2048 on Sapphire Rapids) and streams its block once, so it takes larger blocks. Measured
// on DeepSeek-V2-Lite (2 threads): 0.25 to 4 MB blocks are within the machine's noise of each other,
// but 256 KB forward blocks cost about 10% more.
constexpr int64_t kForwardBlockBytes = int64_t(1) << 20;
constexpr int64_t kBackwardBlockBytes = int64_t(512) << 10;

// One base matrix W [rows, cols] of one expert and slice: bf16 (bf16 != null: W[r, c] =
// bf16[r * ld + c]) or quantized (quant).
struct WeightView {
  int rows = 0, cols = 0;
  const bf16_t* bf16 = nullptr;
  int64_t ld = 0;
  QuantMatrixView quant;

  static WeightView of_bf16(const bf16_t* w, int rows, int cols, int64_t ld) { return {rows, cols, w, ld, {}}; }
  static WeightView of_quant(const QuantMatrixView& q) { return {q.rows, q.cols, nullptr, 0, q}; }
};

// The kernels the products use, chosen from the active ISA level when an engine call starts (the
// dequantizer is the weight's format's at that level).
struct BaseKernels {
  GemmFn gemm;
  IsaLevel level;
  static BaseKernels for_level(IsaLevel level) { return {gemm_bf16_kernel(level), level}; }
};

// C[i, n - n0] = sum_k a[i, k] W[n, k]   for i < m, n0 <= n < n1.   a: [m, cols] bf16 (row stride
// lda), C fp32 (row stride ldc) pointing at column n0.
void base_nt(const BaseKernels& kernels, const WeightView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda,
             float* c, int64_t ldc);

// C[i, j - j0] (+)= sum_r a[i, r] W[r, j]   for i < m, j0 <= j < j1.   a: [m, rows] bf16 (row
// stride lda), C fp32 (row stride ldc) pointing at column j0.
void base_nn(const BaseKernels& kernels, const WeightView& w, int m, int j0, int j1, const bf16_t* a, int64_t lda,
             float* c, int64_t ldc, bool accumulate = false);

}  // namespace kt_moe
