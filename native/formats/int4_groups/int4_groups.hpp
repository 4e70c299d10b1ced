// The int4 groups shared by formats int4_group16 and int4_kgroup (kt_moe/quant/int4_groups.py) and,
// with bf16 scales, int4_packed: 4-bit codes with a scale per group of G consecutive inputs and,
// optionally, a uint8 zero point in sixteenths of a code (without one: the fixed zero point 8).
//   canonical parts   Kp = K rounded up to a multiple of G, g = Kp / G groups per row:
//                     codes uint8 [N, Kp / 2] (low nibble = even k), scale fp16 [N, g],
//                     zero uint8 [N, g] (with zero points only)
//                     W[n, k] = (code[n, k] - zero[n, k / G] / 16) * scale[n, k / G]
// Their bf16 dequantizer (dequant_bf16.cpp, every level) takes G in {16, 32, 64, 128} as a
// compile-time constant and any other power of two up to 1024 at run time. Their quantizer
// (integer_quantizer.cpp, generic and avx2, the same bytes at both and as the torch twin
// kt_moe.quant.int4_groups.quantize_int4_torch) takes any even G up to 128.
#pragma once

#include <cstdint>

#include "cpu/cpu_features.hpp"
#include "kernels/dequant_bf16.hpp"
#include "kernels/fp16.hpp"

namespace kt_moe {

namespace int4_groups_layout {
enum Part : int { kCodes = 0, kScale = 1, kZero = 2 };
}

// Rows [r0, r1) of w [rows, k] (float32, bfloat16 or float16, row stride ldw elements) quantized
// into codes [rows, Kp / 2], scale [rows, g] and, with zero points, zero [rows, g] (strides ldc,
// lds, ldz), Kp = k rounded up to a multiple of group, g = Kp / group. std::invalid_argument for a
// NaN or infinite weight or a group too wide for a float16 scale (the messages of the torch twin).
struct Int4QuantizeArgs {
  enum Dtype : int { kFloat32 = 0, kBfloat16 = 1, kFloat16 = 2 };
  const void* w;
  int dtype;
  int64_t ldw;
  int k, group;
  bool zero_point;
  uint8_t* codes;
  int64_t ldc;
  fp16_t* scale;
  int64_t lds;
  uint8_t* zero;  // with zero_point only
  int64_t ldz;
};
using Int4QuantizeFn = void (*)(const Int4QuantizeArgs& args, int r0, int r1);
Int4QuantizeFn int4_quantizer(IsaLevel level);  // generic's below avx2, avx2's, avx512's at avx512 and above

// dequant_int4_groups: fp16 scales; dequant_int4_groups_bf16: bf16 scales.
#define KT_INT4_GROUPS_DEQUANTIZERS                                                                           \
  void dequant_int4_groups(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld); \
  void dequant_int4_groups_bf16(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld);
namespace generic {
KT_INT4_GROUPS_DEQUANTIZERS
void quantize_int4_rows(const Int4QuantizeArgs& args, int r0, int r1);
}
namespace avx2 {
KT_INT4_GROUPS_DEQUANTIZERS
void quantize_int4_rows(const Int4QuantizeArgs& args, int r0, int r1);
// The few-rows product of symmetric groups with bf16 scales (dequant_dot.cpp).
bool dot_int4_groups_bf16(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                          int64_t ldc);
}  // namespace avx2
namespace avx512 {
KT_INT4_GROUPS_DEQUANTIZERS
void quantize_int4_rows(const Int4QuantizeArgs& args, int r0, int r1);
}
namespace avx512_bf16 {
KT_INT4_GROUPS_DEQUANTIZERS
// The few-rows product of symmetric groups with bf16 scales (dequant_dot.cpp; also at avx2).
bool dot_int4_groups_bf16(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                          int64_t ldc);
}  // namespace avx512_bf16
#undef KT_INT4_GROUPS_DEQUANTIZERS

// The dequantizers by level (amx runs avx512_bf16's, amx_emulated the generic one).
extern const DequantFormat kInt4GroupsDequant;      // fp16 scales
extern const DequantFormat kInt4GroupsBf16Dequant;  // bf16 scales

}  // namespace kt_moe
