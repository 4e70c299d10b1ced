// The base products of the SFT engine (base_products.hpp): bf16 straight to the GEMM, quantized
// through the format's own products where it has them, else dequantized row blocks in
// ScratchSlot::dequantized. A row_scales format's blocks hold
// W / scale exactly (int8_channel: q; kernels/dequant_bf16.hpp), so its row scales are applied here:
// the forward scales C's columns in fp32, the backward scales the block's columns of A (rounded to
// bf16, as the GEMM reads bf16).
#include "moe/base_products.hpp"

#include <algorithm>

#include "kernels/row_stride.hpp"
#include "kernels/scratch.hpp"
#include "moe/bf16.hpp"
#include "moe/gemm_calls.hpp"

namespace kt_moe {
namespace {

constexpr int kBlockRowAlign = 32;  // whole AMX row groups / parity chunks per block

// Row stride of a dequantized block `width` bf16 wide (kernels/row_stride.hpp).
int64_t block_ld(int width) { return padded_row_stride(width, sizeof(bf16_t)); }

// Rows of `width` bf16 per dequantized block: about `bytes`, a multiple of 32, at least 32.
int block_rows(int width, int64_t bytes) {
  const int64_t rows = bytes / (block_ld(width) * int64_t(sizeof(bf16_t)));
  return static_cast<int>(std::max<int64_t>(kBlockRowAlign, rows / kBlockRowAlign * kBlockRowAlign));
}

// The thread's dequantized block [rows, width] (rows block_ld(width) apart), followed by `extra` more bf16.
bf16_t* block_scratch(int rows, int width, size_t extra = 0) {
  return static_cast<bf16_t*>(
      thread_scratch(ScratchSlot::dequantized, sizeof(bf16_t) * (size_t(rows) * size_t(block_ld(width)) + extra)));
}

// The fp32 row scales the products apply (formats whose dequantizer leaves them out), or null.
const float* row_scales(const WeightView& w) {
  return w.quant.format->row_scales ? static_cast<const float*>(w.quant.scale) : nullptr;
}

}  // namespace

void base_nt(const BaseKernels& kernels, const WeightView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda,
             float* c, int64_t ldc) {
  const int K = w.cols;
  if (w.bf16 != nullptr) {
    gemm_nt(kernels.gemm, m, n1 - n0, K, a, lda, w.bf16 + n0 * w.ld, w.ld, c, ldc);
    return;
  }
  if (m <= 0) return;
  const DequantDotFn dot = dequant_dot_kernel(*w.quant.format, kernels.level);
  if (dot && m <= kDequantDotMaxRows && dot(w.quant, m, n0, n1, a, lda, c, ldc))
    return;  // the decode: no bf16 block, the weights read once
  const DequantGemmFn many = dequant_gemm_kernel(*w.quant.format, kernels.level);
  if (many && (m > kDequantDotMaxRows || !dot) && many(w.quant, m, n0, n1, a, lda, c, ldc)) return;
  const DequantFn dequant = dequant_bf16_kernel(*w.quant.format, kernels.level);
  const float* scale = row_scales(w);
  const int step = block_rows(K, kForwardBlockBytes);
  const int64_t ld = block_ld(K);
  bf16_t* block = block_scratch(std::min(step, n1 - n0), K);
  for (int b0 = n0; b0 < n1; b0 += step) {
    const int b1 = std::min(b0 + step, n1);
    dequant(w.quant, b0, b1, 0, K, block, ld);
    float* cb = c + (b0 - n0);
    gemm_nt(kernels.gemm, m, b1 - b0, K, a, lda, block, ld, cb, ldc);
    if (scale)
      for (int i = 0; i < m; ++i)
        for (int n = b0; n < b1; ++n) cb[i * ldc + (n - b0)] *= scale[n];
  }
}

void base_nn(const BaseKernels& kernels, const WeightView& w, int m, int j0, int j1, const bf16_t* a, int64_t lda,
             float* c, int64_t ldc, bool accumulate) {
  const int rows = w.rows, width = j1 - j0;
  if (w.bf16 != nullptr) {
    gemm_nn(kernels.gemm, m, width, rows, a, lda, w.bf16 + j0, w.ld, c, ldc, 1.0f, accumulate);
    return;
  }
  if (m <= 0 || width <= 0) return;
  const DequantGemmNnFn product = dequant_gemm_nn_kernel(*w.quant.format, kernels.level);
  if (product && product(w.quant, m, j0, j1, a, lda, c, ldc, accumulate)) return;
  const int step = std::min(block_rows(width, kBackwardBlockBytes), rows);
  const int64_t ld = block_ld(width);
  const DequantFn dequant = dequant_bf16_kernel(*w.quant.format, kernels.level);
  const float* scale = row_scales(w);
  bf16_t* block = block_scratch(step, width, scale ? size_t(m) * step : 0);
  bf16_t* scaled = block + size_t(step) * ld;  // row scales: A's block columns times them, [m, step]
  for (int k0 = 0; k0 < rows; k0 += step) {
    const int k1 = std::min(k0 + step, rows), kb = k1 - k0;
    dequant(w.quant, k0, k1, j0, j1, block, ld);
    const bf16_t* ab = a + k0;
    int64_t lda_block = lda;
    if (scale) {
      for (int i = 0; i < m; ++i)
        for (int k = 0; k < kb; ++k)
          scaled[i * kb + k] = float_to_bf16(bf16_to_float(a[i * lda + k0 + k]) * scale[k0 + k]);
      ab = scaled;
      lda_block = kb;
    }
    gemm_nn(kernels.gemm, m, width, kb, ab, lda_block, block, ld, c, ldc, 1.0f, accumulate || k0 > 0);
  }
}

}  // namespace kt_moe
