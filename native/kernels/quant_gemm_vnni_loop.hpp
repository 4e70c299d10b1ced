// What the formats' quantized GEMMs on AVX-512 vectors share (native/formats/*/gemm_vnni.cpp, the
// decode kernel, where a few tokens stream each weight byte once, and the prefill kernel of the
// levels without AMX): the activation broadcast, the weight prefetch and
// the loop over column blocks and rows. Compiled twice: avx512_bf16 with vpdpbusd, avx512 with its
// AVX512-BW equivalent (vnni_ops.hpp).
// One zmm holds one packed quad (16 columns x 4 k): the weight bytes are the unsigned operand, the 4
// activation bytes of the quad are broadcast as the signed operand. Rows go 4 at a time per
// 16-column block, so that for M > 4 the block is read again from cache, not from memory.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/micro_tile.hpp"
#include "kernels/quant_kernel_common.hpp"
#include "kernels/vnni_ops.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

constexpr int kVnniMaxRows = 4;  // rows per micro-kernel

// u8 -> int32 lanes. The masked form: GCC 12 warns (-Wmaybe-uninitialized) about the undefined
// source vector of the unmasked intrinsic.
inline __m512i widen_u8(const uint8_t* p) {
  return _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <int R>
using Rows = QuantRow[R];

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
    const __mmask16 cols = static_cast<__mmask16>((1u << std::min(kCols, args.n1 - n)) - 1);
    for (int i0 = 0; i0 < args.m; i0 += kVnniMaxRows) {
      const int rows = std::min(kVnniMaxRows, args.m - i0);
      __m512 out[kVnniMaxRows];
      with_static_count<kVnniMaxRows>(rows, [&](auto nr) {
        QuantRow a[nr()];
        for (int r = 0; r < nr(); ++r) a[r] = quant_row(args, layout, i0 + r);
        Block::template run<nr()>(block, end, a, layout.groups, out);
      });
      for (int r = 0; r < rows; ++r) {
        float* c = args.c + int64_t(i0 + r) * args.ldc + n;
        const __m512 v = args.accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(cols, c), out[r]) : out[r];
        _mm512_mask_storeu_ps(c, cols, v);
      }
    }
  }
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
