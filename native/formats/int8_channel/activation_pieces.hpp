// The exact split of activations into three signed int8 pieces that int8_channel's products from
// the stored rows share (gemm_stored_amx.cpp: the forward, bf16 tokens; gemm_stored_nn_amx.cpp: the
// backward, fp32 gradients times the row scales). Per row i, with s_i its shift (the row's largest
// |v| times 2^s_i lies in [2^21, 2^22)):
//   X = rint(v * 2^s_i) = 65536 h + 256 m + l        h in [-64, 64], m, l in [-128, 127]
// The rounding is within 2^-22 of the row's largest |v|: X is exact for a bf16 v within 2^14 of the
// largest (8 significant bits); an fp32 v keeps 22 of its 24 bits in the largest's binade, fewer
// below. The scaling is two exact power-of-two products (2^s_i can be out of the fp32 range), so
// every level rounds the same way. With the pieces' int32 tile sums H, M, L against int8 weights
// (each exact while the depth is below kMaxDepth):
//   sum v q = 2^-s_i * (65536 H + 256 M + L)      (combined exactly in int64, then rounded once)
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace int8_pieces {

constexpr int kPieces = 3;               // h, m, l
constexpr int kMaxDepth = 1 << 17;       // |piece x q| <= 2^14: sums of fewer products stay below 2^31
// The products take at most this many rows of activations (16 tiles of tokens): their scratch grows
// with the rows (the backward's int32 sums: 3 KB per 16 tokens and 16 columns), and beyond it the
// dequantized path's packed bf16 GEMM is the one that keeps its working set in L2.
constexpr int kMaxTokens = 256;
constexpr int64_t kHighWeight = 65536, kMidWeight = 256;

// 2^e as a float, for -126 <= e <= 127.
inline float power_of_two(int e) {
  const uint32_t bits = uint32_t(e + 127) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The fp32 exponent field of v (bf16 bits << 16 have the same): 0xFF for Inf and NaN.
inline int exponent_field(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return int((bits >> 23) & 0xFF);
}

// A row's scaling: X = rint(v * up1 * up2), sum v q = 2^-s * (the pieces' combination) = down * (...).
struct RowScaling {
  float up1, up2, down;
};

// The scaling of a row whose largest |v| has the exponent field `field` (0..254; 0: every value
// zero or subnormal).
inline RowScaling row_scaling(int field) {
  const int s = 148 - std::max(field, 1), s1 = s / 2;  // s in [-106, 147], both halves in fp32 range
  return {power_of_two(s1), power_of_two(s - s1), power_of_two(-s1) * power_of_two(s1 - s)};
}

struct Pieces {
  int32_t h, m, l;
};

inline Pieces split(float v, const RowScaling& scaling) {
  const int32_t x = static_cast<int32_t>(__builtin_rintf(v * scaling.up1 * scaling.up2));
  const int32_t l = static_cast<int8_t>(x & 0xFF), x1 = (x - l) >> 8;
  const int32_t m = static_cast<int8_t>(x1 & 0xFF);
  return {(x1 - m) >> 8, m, l};
}

#if defined(__AVX512F__)
// split() of 16 values at once (the same operations, so the same bits): piece bytes, value l in
// byte l of each.
struct Pieces16 {
  __m128i h, m, l;
};

inline Pieces16 split16(__m512 v, const RowScaling& scaling) {
  const __m512 scaled = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(scaling.up1)), _mm512_set1_ps(scaling.up2));
  const __m512i x = _mm512_cvtps_epi32(scaled);  // round to nearest even, as rintf
  const __m512i l = _mm512_srai_epi32(_mm512_slli_epi32(x, 24), 24);
  const __m512i x1 = _mm512_srai_epi32(_mm512_sub_epi32(x, l), 8);
  const __m512i m = _mm512_srai_epi32(_mm512_slli_epi32(x1, 24), 24);
  const __m512i h = _mm512_srai_epi32(_mm512_sub_epi32(x1, m), 8);
  return {_mm512_cvtepi32_epi8(h), _mm512_cvtepi32_epi8(m), _mm512_cvtepi32_epi8(l)};
}
#endif

// The exact sum 65536 H + 256 M + L of the pieces' int32 sums.
inline int64_t combine(int32_t h, int32_t m, int32_t l) { return h * kHighWeight + m * kMidWeight + l; }

}  // namespace int8_pieces
}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
