// What the formats' quantized GEMMs on vectors share (native/formats/*/gemm_vnni.cpp and
// gemm_avx2.cpp: the decode kernel, where a few tokens stream each weight byte once, and the
// prefill kernel of the levels without AMX): the loop over column blocks and rows, the row
// micro-kernel sizes and the store of a block's results. Compiled three times: avx512_bf16 with
// vpdpbusd, avx512 with its AVX512-BW equivalent (vnni_ops.hpp), avx2 with 256-bit vpmaddwd /
// vpmaddubsw forms (vnni_ops_avx2.hpp).
// The weights are packed in VNNI quads (16 columns x 4 k, 64 B): one zmm, or two ymm halves of 8
// columns at avx2; the weight bytes are the unsigned operand, the 4 activation bytes of the quad
// are broadcast as the signed operand. Rows go 4 at a time per 16-column block, so that several
// rows share each weight load and, for M > 4, the block is read again from cache, not from memory.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels/micro_tile.hpp"
#include "kernels/quant_kernel_common.hpp"
#if defined(__AVX512F__)
#include "kernels/vnni_ops.hpp"
#else
#include "kernels/vnni_ops_avx2.hpp"
#endif

namespace kt_moe {
namespace KT_KERNEL_NS {

constexpr int kVnniMaxRows = 4;  // rows per micro-kernel

template <int R>
using Rows = QuantRow[R];

#if defined(__AVX512F__)

// The 16 fp32 results of one row against a 16-column block.
using BlockOut = __m512;

// c[j] = (accumulate ? c[j] : 0) + v[j] for j < cols.
inline void store_block_row(float* c, BlockOut v, int cols, bool accumulate) {
  const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1);
  _mm512_mask_storeu_ps(c, mask, accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask, c), v) : v);
}

#else

// The 16 fp32 results of one row against a 16-column block: columns 0..7 and 8..15.
struct BlockOut {
  __m256 half[2];
};

// c[j] = (accumulate ? c[j] : 0) + v[j] for j < cols.
inline void store_block_row(float* c, const BlockOut& v, int cols, bool accumulate) {
  if (cols < quant_layout::kCols) {
    float all[quant_layout::kCols];
    _mm256_storeu_ps(all, v.half[0]);
    _mm256_storeu_ps(all + kHalfCols, v.half[1]);
    store_columns(c, all, cols, accumulate);
    return;
  }
  for (int h = 0; h < 2; ++h)
    _mm256_storeu_ps(c + kHalfCols * h,
                     accumulate ? _mm256_add_ps(_mm256_loadu_ps(c + kHalfCols * h), v.half[h]) : v.half[h]);
}

#endif

// The product of a format whose Block::run<R>(block, end, a, units, out) writes the 16 results of
// rows a[0..R) for the block at `block` (of a weight ending at `end`) into out[0..R).
template <class Block>
void gemm_quant_vnni_loop(const QuantGemmArgs& args) {
  validate_quant_gemm(args);
  if (args.m == 0 || args.n0 == args.n1) return;
  const QuantActLayout layout = quant_act_layout(*args.a.format, args.a.k);
  const int64_t block_bytes = args.w.format->block_bytes(args.w.k);
  const uint8_t* end = args.w.data + quant_weight_bytes(*args.w.format, args.w.n, args.w.k);
  constexpr int kCols = quant_layout::kCols;
  for (int n = args.n0; n < args.n1; n += kCols) {
    const uint8_t* block = args.w.data + (n / kCols) * block_bytes;
    const int cols = std::min(kCols, args.n1 - n);
    for (int i0 = 0; i0 < args.m; i0 += kVnniMaxRows) {
      const int rows = std::min(kVnniMaxRows, args.m - i0);
      BlockOut out[kVnniMaxRows];
      with_static_count<kVnniMaxRows>(rows, [&](auto nr) {
        QuantRow a[nr()];
        for (int r = 0; r < nr(); ++r) a[r] = quant_row(args, layout, i0 + r);
        Block::template run<nr()>(block, end, a, layout.groups, out);
      });
      for (int r = 0; r < rows; ++r)
        store_block_row(args.c + int64_t(i0 + r) * args.ldc + n, out[r], cols, args.accumulate);
    }
  }
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
