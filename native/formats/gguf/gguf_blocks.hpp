// GGUF (llama.cpp) block types as weight formats: each is one part, `blocks` (uint8), a row of W
// [N, K] being K / QK blocks of `Bytes` bytes, every block QK consecutive weights with its own
// scale(s) inside (little-endian fp16). The block layouts, weight j of a block (0 <= j < QK):
//   Q8_0  (32, 34 bytes): d fp16, q int8[32]                      w = d * q[j]
//   Q4_0  (32, 18 bytes): d fp16, qs uint8[16]                    w = d * (nibble_j - 8)
//   Q4_1  (32, 20 bytes): d fp16, m fp16, qs uint8[16]            w = d * nibble_j + m
//   Q5_0  (32, 22 bytes): d fp16, qh uint8[4], qs uint8[16]       w = d * ((nibble_j | bit_j << 4) - 16)
//   Q5_1  (32, 24 bytes): d fp16, m fp16, qh uint8[4], qs[16]     w = d * (nibble_j | bit_j << 4) + m
//   IQ4_NL (32, 18 bytes): d fp16, qs uint8[16]                  w = d * kIq4Values[nibble_j]
// where nibble_j is the low nibble of qs[j] for j < 16 and the high nibble of qs[j - 16] after, and
// bit_j bit j of the 32-bit little-endian qh. The K-quants and IQ4_XS: super-blocks of 256 weights
// in sub-blocks of 16 or 32, each sub-block with a 4-, 6- or 8-bit scale of the fp16 d (and a min of
// dmin); for weight j (h = j / 128, s = (j % 128) / 32, l = j % 32):
//   Q2_K (84): scales u8[16], qs[64], d, dmin        q = qs[32h + l] >> 2s & 3, sub-block j / 16:
//              w = d (scales & 15) q - dmin (scales >> 4)
//   Q3_K (110): hmask[32], qs[64], scales[12], d     q = (qs[32h + l] >> 2s & 3) - (hmask[l] >> j/32 & 1 ? 0 : 4),
//              w = d (sc6[j / 16] - 32) q, sc6: 16 6-bit scales, low 4 bits from scales[0..7] (low
//              nibbles, then high nibbles), high 2 bits from scales[8..11] (bits 2(i / 4) of byte i % 4)
//   Q4_K (144): d, dmin, scales[12], qs[128]         q = qs[32(j / 64) + l] >> 4((j % 64) / 32) & 15,
//              w = d sc[j / 32] q - dmin mn[j / 32], sc and mn 8 6-bit values each (k_scale_min)
//   Q5_K (176): d, dmin, scales[12], qh[32], qs[128] as Q4_K with q |= (qh[l] >> j/32 & 1) << 4
//   Q6_K (210): ql[128], qh[64], scales i8[16], d     q = (ql[64h + (j % 128) % 64] >> 4((j % 128) / 64) & 15
//              | (qh[32h + l] >> 2s & 3) << 4) - 32, w = d scales[j / 16] q
//   IQ4_XS (136): d, scales_h u16, scales_l[4], qs[128]  sub-block b = j / 32: scale (scales_l[b / 2] >>
//              4(b % 2) & 15 | (scales_h >> 2b & 3) << 4) - 32, q = qs[16b + k % 16] >> 4(k / 16) & 15
//              with k = j % 32, w = d scale kIq4Values[q]
// and F32, F16 and BF16 as one-weight blocks. This header is portable (the geometry and the entry
// points); the decoders are gguf_decode.hpp's, compiled per level. kt_moe/weights/gguf_checkpoint.py reads the files;
// gguf's own dequantizer (gguf.quants.dequantize) is the tests' oracle.
#pragma once

#include <cstdint>

#include "kernels/dequant_bf16.hpp"

namespace kt_moe {

namespace gguf_blocks {

// Each type's block geometry: QK weights in Bytes bytes (the decoders: gguf_decode.hpp).
#define KT_GGUF_LAYOUT(T, qk, bytes) \
  struct T {                         \
    static constexpr int QK = qk, Bytes = bytes; \
  };
KT_GGUF_LAYOUT(F32, 1, 4)
KT_GGUF_LAYOUT(F16, 1, 2)
KT_GGUF_LAYOUT(BF16, 1, 2)
KT_GGUF_LAYOUT(Q8_0, 32, 34)
KT_GGUF_LAYOUT(Q4_0, 32, 18)
KT_GGUF_LAYOUT(Q4_1, 32, 20)
KT_GGUF_LAYOUT(Q5_0, 32, 22)
KT_GGUF_LAYOUT(Q5_1, 32, 24)
KT_GGUF_LAYOUT(Q2_K, 256, 84)
KT_GGUF_LAYOUT(Q3_K, 256, 110)
KT_GGUF_LAYOUT(Q4_K, 256, 144)
KT_GGUF_LAYOUT(Q5_K, 256, 176)
KT_GGUF_LAYOUT(Q6_K, 256, 210)
KT_GGUF_LAYOUT(IQ4_NL, 32, 18)
KT_GGUF_LAYOUT(IQ4_XS, 256, 136)
#undef KT_GGUF_LAYOUT

}  // namespace gguf_blocks

// Every GGUF type with a format: X(block struct, format suffix). The format of type T is "gguf_<t>",
// made by make_gguf_<t> (format.hpp), dequantized by dequant_gguf_<t> (dequant_bf16.cpp) through
// kGguf<T>Dequant (blocks_table.cpp).
#define KT_GGUF_TYPES(X)                                                                                  \
  X(F32, f32) X(F16, f16) X(BF16, bf16) X(Q8_0, q8_0) X(Q4_0, q4_0) X(Q4_1, q4_1) X(Q5_0, q5_0) X(Q5_1, q5_1) \
  X(Q2_K, q2_k) X(Q3_K, q3_k) X(Q4_K, q4_k) X(Q5_K, q5_k) X(Q6_K, q6_k) X(IQ4_NL, iq4_nl) X(IQ4_XS, iq4_xs)

// The bf16 dequantizers, per level: D[r, c] = bf16(w) of stored column col0 + c.
#define KT_GGUF_DEQUANT_DECLARATION(T, t) void dequant_gguf_##t(const QuantMatrixView&, int, int, int, int, bf16_t*, int64_t);
namespace generic { KT_GGUF_TYPES(KT_GGUF_DEQUANT_DECLARATION) }
namespace avx2 { KT_GGUF_TYPES(KT_GGUF_DEQUANT_DECLARATION) }
namespace avx512 { KT_GGUF_TYPES(KT_GGUF_DEQUANT_DECLARATION) }
namespace avx512_bf16 { KT_GGUF_TYPES(KT_GGUF_DEQUANT_DECLARATION) }
#undef KT_GGUF_DEQUANT_DECLARATION

// The few-rows products of the types a decode reads most, at avx2 and the AVX-512 levels
// (dequant_dot.cpp), and their many-rows ones (dequant_gemm.cpp).
#define KT_GGUF_DOT_DECLARATIONS                                                                       \
  bool dot_gguf_q8_0(const QuantMatrixView&, int, int, int, const bf16_t*, int64_t, float*, int64_t); \
  bool dot_gguf_q4_k(const QuantMatrixView&, int, int, int, const bf16_t*, int64_t, float*, int64_t); \
  bool dot_gguf_q5_k(const QuantMatrixView&, int, int, int, const bf16_t*, int64_t, float*, int64_t); \
  bool dot_gguf_q6_k(const QuantMatrixView&, int, int, int, const bf16_t*, int64_t, float*, int64_t); \
  bool gemm_gguf_q8_0(const QuantMatrixView&, int, int, int, const bf16_t*, int64_t, float*, int64_t); \
  bool gemm_gguf_q4_k(const QuantMatrixView&, int, int, int, const bf16_t*, int64_t, float*, int64_t); \
  bool gemm_gguf_q5_k(const QuantMatrixView&, int, int, int, const bf16_t*, int64_t, float*, int64_t); \
  bool gemm_gguf_q6_k(const QuantMatrixView&, int, int, int, const bf16_t*, int64_t, float*, int64_t);
namespace avx2 { KT_GGUF_DOT_DECLARATIONS }
namespace avx512 { KT_GGUF_DOT_DECLARATIONS }
namespace avx512_bf16 { KT_GGUF_DOT_DECLARATIONS }
#undef KT_GGUF_DOT_DECLARATIONS

#define KT_GGUF_TABLE_DECLARATION(T, t) extern const DequantFormat kGguf##T##Dequant;
KT_GGUF_TYPES(KT_GGUF_TABLE_DECLARATION)
#undef KT_GGUF_TABLE_DECLARATION

}  // namespace kt_moe
