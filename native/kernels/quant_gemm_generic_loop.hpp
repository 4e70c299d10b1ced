// The loop of the portable quantized GEMM (level generic, the reference every other level of a
// format must match): for each 16-column block and each row, the format's block function gives the
// 16 fp32 results (exact int32 dot products from the packed quads, then the format's fp32 order),
// stored into C. Compiled per level (level_namespace.hpp).
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/quant_kernel_common.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

// block_fn(const uint8_t* block, const QuantRow& a, int units, float (&out)[16]).
template <class BlockFn>
void gemm_quant_generic_loop(const QuantGemmArgs& args, BlockFn block_fn) {
  validate_quant_gemm(args);
  if (args.m == 0 || args.n0 == args.n1) return;
  const QuantActLayout layout = quant_act_layout(*args.a.format, args.a.k);
  const int64_t block_bytes = args.w.format->block_bytes(args.w.k);
  for (int n = args.n0; n < args.n1; n += quant_layout::kCols) {
    const uint8_t* block = args.w.data + (n / quant_layout::kCols) * block_bytes;
    for (int i = 0; i < args.m; ++i) {
      const QuantRow a = quant_row(args, layout, i);
      float out[quant_layout::kCols];
      block_fn(block, a, layout.groups, out);
      store_columns(args.c + i * args.ldc + n, out, std::min(quant_layout::kCols, args.n1 - n), args.accumulate);
    }
  }
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
