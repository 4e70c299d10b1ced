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
// and F32, F16 and BF16 as one-weight blocks. kt_moe/weights/gguf_checkpoint.py reads the files;
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

// IQ4's 16 non-uniform levels.
constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

struct IQ4_NL {
  static constexpr int QK = 32, Bytes = 18;
  static void decode(const uint8_t* b, float* w) {
    const float d = half_at(b);
    for (int j = 0; j < QK; ++j) w[j] = d * float(kIq4Values[nibble(b + 2, j)]);
  }
};

// Q4_K / Q5_K: the 6-bit scale and min of sub-block i (0..7) from the 12 packed bytes.
inline void k_scale_min(const uint8_t* s, int i, int& scale, int& min) {
  if (i < 4) {
    scale = s[i] & 63;
    min = s[i + 4] & 63;
  } else {
    scale = (s[i + 4] & 0xF) | ((s[i - 4] >> 6) << 4);
    min = (s[i + 4] >> 4) | ((s[i] >> 6) << 4);
  }
}

struct Q2_K {
  static constexpr int QK = 256, Bytes = 84;
  static void decode(const uint8_t* b, float* w) {
    const uint8_t *scales = b, *qs = b + 16;
    const float d = half_at(b + 80), dmin = half_at(b + 82);
    for (int j = 0; j < QK; ++j) {
      const int h = j / 128, s = (j % 128) / 32, l = j % 32, sc = scales[j / 16];
      w[j] = d * float(sc & 0xF) * float(qs[32 * h + l] >> (2 * s) & 3) - dmin * float(sc >> 4);
    }
  }
};

struct Q3_K {
  static constexpr int QK = 256, Bytes = 110;
  static void decode(const uint8_t* b, float* w) {
    const uint8_t *hmask = b, *qs = b + 32, *scales = b + 96;
    const float d = half_at(b + 108);
    int sc[16];
    for (int i = 0; i < 16; ++i) {
      const int low = (i < 8 ? scales[i] : scales[i - 8] >> 4) & 0xF;
      const int high = scales[8 + i % 4] >> (2 * (i / 4)) & 3;
      sc[i] = (low | high << 4) - 32;
    }
    for (int j = 0; j < QK; ++j) {
      const int h = j / 128, s = (j % 128) / 32, l = j % 32;
      const int q = (qs[32 * h + l] >> (2 * s) & 3) - ((hmask[l] >> (j / 32) & 1) ? 0 : 4);
      w[j] = d * float(sc[j / 16]) * float(q);
    }
  }
};

template <bool HighBit>  // Q5_K: a fifth bit from qh
struct KQuant45 {
  static constexpr int QK = 256, Bytes = HighBit ? 176 : 144;
  static void decode(const uint8_t* b, float* w) {
    const float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + (HighBit ? 48 : 16);
    for (int i = 0; i < 8; ++i) {
      int scale, min;
      k_scale_min(scales, i, scale, min);
      const float ds = d * float(scale), dm = dmin * float(min);
      for (int j = 32 * i; j < 32 * i + 32; ++j) {
        const int l = j % 32;
        int q = qs[32 * (j / 64) + l] >> (4 * ((j % 64) / 32)) & 0xF;
        if (HighBit) q |= (qh[l] >> i & 1) << 4;
        w[j] = ds * float(q) - dm;
      }
    }
  }
};
using Q4_K = KQuant45<false>;
using Q5_K = KQuant45<true>;

struct Q6_K {
  static constexpr int QK = 256, Bytes = 210;
  static void decode(const uint8_t* b, float* w) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = half_at(b + 208);
    for (int j = 0; j < QK; ++j) {
      const int h = j / 128, k = j % 128, s = k / 32, l = j % 32;
      const int low = ql[64 * h + k % 64] >> (4 * (k / 64)) & 0xF, high = qh[32 * h + l] >> (2 * s) & 3;
      w[j] = d * float(scales[j / 16]) * float((low | high << 4) - 32);
    }
  }
};

struct IQ4_XS {
  static constexpr int QK = 256, Bytes = 136;
  static void decode(const uint8_t* b, float* w) {
    const float d = half_at(b);
    uint16_t scales_h;
    std::memcpy(&scales_h, b + 2, 2);
    const uint8_t *scales_l = b + 4, *qs = b + 8;
    for (int sb = 0; sb < 8; ++sb) {
      const int scale = ((scales_l[sb / 2] >> (4 * (sb % 2)) & 0xF) | (scales_h >> (2 * sb) & 3) << 4) - 32;
      const float ds = d * float(scale);
      for (int k = 0; k < 32; ++k) w[32 * sb + k] = ds * float(kIq4Values[qs[16 * sb + k % 16] >> (4 * (k / 16)) & 0xF]);
    }
  }
};

struct F32 {
  static constexpr int QK = 1, Bytes = 4;
  static void decode(const uint8_t* b, float* w) { std::memcpy(w, b, 4); }
};

struct F16 {
  static constexpr int QK = 1, Bytes = 2;
  static void decode(const uint8_t* b, float* w) { w[0] = half_at(b); }
};

struct BF16 {
  static constexpr int QK = 1, Bytes = 2;
  static void decode(const uint8_t* b, float* w) {
    uint16_t h;
    std::memcpy(&h, b, 2);
    const uint32_t bits = uint32_t(h) << 16;
    std::memcpy(w, &bits, 4);
  }
};

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
namespace avx512 { KT_GGUF_TYPES(KT_GGUF_DEQUANT_DECLARATION) }
namespace avx512_bf16 { KT_GGUF_TYPES(KT_GGUF_DEQUANT_DECLARATION) }
#undef KT_GGUF_DEQUANT_DECLARATION

#define KT_GGUF_TABLE_DECLARATION(T, t) extern const DequantFormat kGguf##T##Dequant;
KT_GGUF_TYPES(KT_GGUF_TABLE_DECLARATION)
#undef KT_GGUF_TABLE_DECLARATION

}  // namespace kt_moe
