// The pieces of format fp8 (layout.hpp) that its registry entry (format.cpp) puts together: the
// bf16 dequantizers and few-rows products of each ISA level, for scale blocks and for a scale per
// row, defined in object libraries compiled with that level's flags (CMakeLists.txt, native/formats/).
#pragma once

#include <cstdint>

#include "kernels/dequant_bf16.hpp"

namespace kt_moe {

#define KT_FP8_DEQUANTIZERS                                                                                 \
  void dequant_fp8_block(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld); \
  void dequant_fp8_channel(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld); \
  bool dot_fp8_block(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,  \
                     int64_t ldc);                                                                             \
  bool dot_fp8_channel(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c, \
                       int64_t ldc);
namespace generic {
KT_FP8_DEQUANTIZERS
}
namespace avx2 {
KT_FP8_DEQUANTIZERS
}
namespace avx512 {
KT_FP8_DEQUANTIZERS
}
namespace avx512_bf16 {
KT_FP8_DEQUANTIZERS
}
#undef KT_FP8_DEQUANTIZERS

}  // namespace kt_moe
