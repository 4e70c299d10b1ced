// GGUF (llama.cpp) block types as weight formats: each is one part, `blocks` (uint8), a row of W
// [N, K] being K / QK blocks of `Bytes` bytes, every block QK consecutive weights with its own
// scale(s) inside (little-endian fp16). The block layouts, weight j of a block (0 <= j < QK):
//   Q8_0  (32, 34 bytes): d fp16, q int8[32]                      w = d * q[j]
//   Q4_0  (32, 18 bytes): d fp16, qs uint8[16]                    w = d * (nibble_j - 8)
//   Q4_1  (32, 20 bytes): d fp16, m fp16, qs uint8[16]            w = d * nibble_j + m
//   Q5_0  (32, 22 bytes): d fp16, qh uint8[4], qs uint8[16]       w = d * ((nibble_j | bit_j << 4) - 16)
//   Q5_1  (32, 24 bytes): d fp16, m fp16, qh uint8[4], qs[16]     w = d * (nibble_j | bit_j << 4) + m
// where nibble_j is the low nibble of qs[j] for j < 16 and the high nibble of qs[j - 16] after, and
// bit_j bit j of the 32-bit little-endian qh. kt_moe/weights/gguf_checkpoint.py reads the files;
// gguf's own dequantizer (gguf.quants.dequantize) is the tests' oracle.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/dequant_bf16.hpp"
#include "kernels/fp16.hpp"

namespace kt_moe {

namespace gguf_blocks {

inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_float(h);
}

inline int nibble(const uint8_t* qs, int j) { return j < 16 ? qs[j] & 0xF : qs[j - 16] >> 4; }

inline int high_bit(const uint8_t* qh, int j) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  return int(bits >> j) & 1;
}

struct Q8_0 {
  static constexpr int QK = 32, Bytes = 34;
  static void decode(const uint8_t* b, float* w) {
    const float d = half_at(b);
    for (int j = 0; j < QK; ++j) w[j] = d * float(int8_t(b[2 + j]));
  }
};

struct Q4_0 {
  static constexpr int QK = 32, Bytes = 18;
  static void decode(const uint8_t* b, float* w) {
    const float d = half_at(b);
    for (int j = 0; j < QK; ++j) w[j] = d * float(nibble(b + 2, j) - 8);
  }
};

struct Q4_1 {
  static constexpr int QK = 32, Bytes = 20;
  static void decode(const uint8_t* b, float* w) {
    const float d = half_at(b), m = half_at(b + 2);
    for (int j = 0; j < QK; ++j) w[j] = d * float(nibble(b + 4, j)) + m;
  }
};

struct Q5_0 {
  static constexpr int QK = 32, Bytes = 22;
  static void decode(const uint8_t* b, float* w) {
    const float d = half_at(b);
    for (int j = 0; j < QK; ++j) w[j] = d * float((nibble(b + 6, j) | high_bit(b + 2, j) << 4) - 16);
  }
};

struct Q5_1 {
  static constexpr int QK = 32, Bytes = 24;
  static void decode(const uint8_t* b, float* w) {
    const float d = half_at(b), m = half_at(b + 2);
    for (int j = 0; j < QK; ++j) w[j] = d * float(nibble(b + 8, j) | high_bit(b + 4, j) << 4) + m;
  }
};

}  // namespace gguf_blocks

// The bf16 dequantizers, per level (dequant_bf16.cpp): D[r, c] = bf16(w) of stored column col0 + c.
#define KT_GGUF_DEQUANT_DECLARATIONS(level)                                                                \
  namespace level {                                                                                        \
  void dequant_gguf_q8_0(const QuantMatrixView&, int, int, int, int, bf16_t*, int64_t);                    \
  void dequant_gguf_q4_0(const QuantMatrixView&, int, int, int, int, bf16_t*, int64_t);                    \
  void dequant_gguf_q4_1(const QuantMatrixView&, int, int, int, int, bf16_t*, int64_t);                    \
  void dequant_gguf_q5_0(const QuantMatrixView&, int, int, int, int, bf16_t*, int64_t);                    \
  void dequant_gguf_q5_1(const QuantMatrixView&, int, int, int, int, bf16_t*, int64_t);                    \
  }
KT_GGUF_DEQUANT_DECLARATIONS(generic)
KT_GGUF_DEQUANT_DECLARATIONS(avx512)
KT_GGUF_DEQUANT_DECLARATIONS(avx512_bf16)
#undef KT_GGUF_DEQUANT_DECLARATIONS

extern const DequantFormat kGgufQ8_0Dequant, kGgufQ4_0Dequant, kGgufQ4_1Dequant, kGgufQ5_0Dequant, kGgufQ5_1Dequant;

}  // namespace kt_moe
