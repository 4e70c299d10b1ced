// int4_group16's quantized GEMM (layout.hpp) on AMX-INT8 tiles (levels amx and amx_emulated,
// kernels/quant_gemm_amx_pipeline.hpp): each 64-k unit of a block is requantized to signed int8
// tiles with a scale per (column, unit), as layout.hpp defines it. The requantization has an
// AVX-512 form (level amx) and a scalar form (amx_emulated) that give the same bytes.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "formats/int4_group16/int4_group16.hpp"
#include "formats/int4_group16/layout.hpp"
#include "kernels/fp16.hpp"
#include "kernels/quant_gemm_amx_pipeline.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace int4_group16_layout;

// requantize_int4_unit: one 704-byte unit of a block -> its B tile (16 quads x 64 B of int8, byte 4 c + i
// of row j = column c, k = 4 j + i) and its 16 column scales S, as layout.hpp defines them.
#if defined(__AVX512F__)
// The masked forms (all lanes) of the intrinsics used below: GCC 12 warns (-Wmaybe-uninitialized)
// about the undefined source vector of the unmasked ones.
constexpr __mmask16 kAll = 0xFFFF;
inline __m512i srli32(__m512i v, unsigned s) { return _mm512_maskz_srli_epi32(kAll, v, s); }
inline __m512i slli32(__m512i v, unsigned s) { return _mm512_maskz_slli_epi32(kAll, v, s); }
inline __m512i max_i32(__m512i a, __m512i b) { return _mm512_maskz_max_epi32(kAll, a, b); }
inline __m512 max_f32(__m512 a, __m512 b) { return _mm512_maskz_max_ps(kAll, a, b); }
inline __m512i round_to_i32(__m512 v) { return _mm512_maskz_cvtps_epi32(kAll, v); }  // half to even
inline __m512 to_f32(__m512i v) { return _mm512_maskz_cvtepi32_ps(kAll, v); }
inline __m512 load_f16(const void* p) {
  return _mm512_maskz_cvtph_ps(kAll, _mm256_loadu_si256(static_cast<const __m256i*>(p)));
}
inline __m512i load_u8(const void* p) {
  return _mm512_maskz_cvtepu8_epi32(kAll, _mm_loadu_si128(static_cast<const __m128i*>(p)));
}
inline __m512i each_lane(__m128i v) { return _mm512_maskz_broadcast_i32x4(kAll, v); }

// amax from the codes: max_k |(code - zero / 16) * scale| = |scale| * max(16 cmax - zero, zero -
// 16 cmin) / 16 per group, with cmin, cmax the group's smallest and largest code (exact, the same
// value as the maximum over the dequantized weights). Then per 4 k of every column (one int32 lane
// per column, byte i of each column picked by a byte shuffle): the exact weight fma(code, scale,
// -zero / 16 * scale) (the high nibble is taken in place, 16 code, with scale / 16), times 127 /
// amax, rounded half to even by vcvtps2dq; four such vectors pack (saturation never happens) into
// 64 bytes that one byte shuffle puts in quad order.
inline void requantize_int4_unit(const uint8_t* unit, uint8_t* tile_rows, float* scales) {
  const __m512i low_nibble = _mm512_set1_epi32(0x0F), high_nibble = _mm512_set1_epi32(0xF0);
  const __m512i low_bytes = _mm512_set1_epi8(0x0F);
  const __m512 sixteenth = _mm512_set1_ps(1.0f / kZeroDen), minus_sixteenth = _mm512_set1_ps(-1.0f / kZeroDen);
  const __m512 qmax = _mm512_set1_ps(float(kActQMax)), tiny = _mm512_set1_ps(FLT_MIN);
  // After the packs, byte 4 s + e of each 128-bit lane is k s of the lane's column e: transpose.
  const __m512i quad_order =
      each_lane(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  __m512i byte_of[kQuadK];  // byte i of each int32 lane into its low byte, the others zero
  for (int i = 0; i < kQuadK; ++i)
    byte_of[i] =
        each_lane(_mm_setr_epi8(i, -1, -1, -1, 4 + i, -1, -1, -1, 8 + i, -1, -1, -1, 12 + i, -1, -1, -1));

  __m512i v[kCodeVectors];
  for (int i = 0; i < kCodeVectors; ++i) v[i] = _mm512_loadu_si512(unit + i * kQuadBytes);
  __m512 s[kUnitGroups], zs[kUnitGroups];  // scale (/ 16 for the high nibbles), -zero / 16 * scale
  __m512i z[kUnitGroups];                       // zero (sixteenths)
  for (int h = 0; h < kUnitGroups; ++h) {
    s[h] = load_f16(unit + kScaleOffset + 32 * h);
    z[h] = load_u8(unit + kZeroOffset + kCols * h);
    zs[h] = _mm512_mul_ps(_mm512_mul_ps(to_f32(z[h]), minus_sixteenth), s[h]);
  }
  __m512 amax = _mm512_setzero_ps();  // 16 amax
  for (int half = 0; half < 2; ++half) {
    const __m512i* w = v + half * kHalfVectors;
    __m512i lo[kHalfVectors];
    for (int j = 0; j < kHalfVectors; ++j) lo[j] = _mm512_and_si512(w[j], low_bytes);
    // byte-wise extremes over the 4 vectors, then over the 4 bytes of each column (into byte 0);
    // a byte's maximum and minimum carry those of its high nibble
    __m512i ext[4] = {_mm512_max_epu8(_mm512_max_epu8(lo[0], lo[1]), _mm512_max_epu8(lo[2], lo[3])),
                      _mm512_min_epu8(_mm512_min_epu8(lo[0], lo[1]), _mm512_min_epu8(lo[2], lo[3])),
                      _mm512_max_epu8(_mm512_max_epu8(w[0], w[1]), _mm512_max_epu8(w[2], w[3])),
                      _mm512_min_epu8(_mm512_min_epu8(w[0], w[1]), _mm512_min_epu8(w[2], w[3]))};
    for (int e = 0; e < 4; ++e)
      for (int shift : {8, 16}) {
        const __m512i moved = srli32(ext[e], shift);
        ext[e] = e % 2 ? _mm512_min_epu8(ext[e], moved) : _mm512_max_epu8(ext[e], moved);
      }
    for (int nib = 0; nib < 2; ++nib) {  // group 2 half (low nibbles), 2 half + 1 (high)
      const int h = 2 * half + nib;
      __m512i cmax = ext[2 * nib], cmin = ext[2 * nib + 1];  // -> 16 * code in each int32
      if (nib == 0) cmax = slli32(cmax, 4), cmin = slli32(cmin, 4);
      cmax = _mm512_and_si512(cmax, high_nibble), cmin = _mm512_and_si512(cmin, high_nibble);
      const __m512i d = max_i32(_mm512_sub_epi32(cmax, z[h]), _mm512_sub_epi32(z[h], cmin));
      amax = max_f32(amax, _mm512_mul_ps(to_f32(d), _mm512_abs_ps(s[h])));
    }
  }
  amax = _mm512_mul_ps(amax, sixteenth);
  const __mmask16 normal = _mm512_cmp_ps_mask(amax, tiny, _CMP_GE_OQ);
  const __m512 inv = _mm512_maskz_div_ps(normal, qmax, amax);
  _mm512_storeu_ps(scales, _mm512_maskz_div_ps(normal, amax, qmax));
  for (int h = 1; h < kUnitGroups; h += 2) s[h] = _mm512_mul_ps(s[h], sixteenth);  // exact
#pragma GCC unroll 8
  for (int vi = 0; vi < kCodeVectors; ++vi) {
    const int half = vi / kHalfVectors, j = vi % kHalfVectors;
    __m512i bytes[kQuadK];
    for (int i = 0; i < kQuadK; ++i) bytes[i] = _mm512_shuffle_epi8(v[vi], byte_of[i]);
    for (int nib = 0; nib < 2; ++nib) {
      const int h = 2 * half + nib;
      __m512i q[kQuadK];  // k 4 j + i of the group, one lane per column
      for (int i = 0; i < kQuadK; ++i) {
        const __m512i code = _mm512_and_si512(bytes[i], nib ? high_nibble : low_nibble);
        const __m512 wf = _mm512_fmadd_ps(to_f32(code), s[h], zs[h]);  // exact
        q[i] = round_to_i32(_mm512_mul_ps(wf, inv));
      }
      const __m512i packed = _mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
      _mm512_storeu_si512(tile_rows + (8 * half + 4 * nib + j) * kQuadBytes, _mm512_shuffle_epi8(packed, quad_order));
    }
  }
}
#else
// Scalar: the exact weights of a column's 64 k, their amax, then round_half_even(Wf * (127 / amax)).
inline void requantize_int4_unit(const uint8_t* unit, uint8_t* tile_rows, float* scales) {
  for (int c = 0; c < kCols; ++c) {
    float wf[kUnitK], amax = 0.0f;
    for (int k = 0; k < kUnitK; ++k) {
      const int h = k / kGroup, kk = k % kGroup;
      const uint8_t byte = unit[(h / 2 * kHalfVectors + kk / kQuadK) * kQuadBytes + kQuadK * c + kk % kQuadK];
      fp16_t bits;
      std::memcpy(&bits, unit + kScaleOffset + (h * kCols + c) * 2, sizeof bits);
      const float z = float(unit[kZeroOffset + h * kCols + c]) * (1.0f / kZeroDen);
      wf[k] = (float(h % 2 ? byte >> 4 : byte & 0x0F) - z) * fp16_to_float(bits);  // exact
      amax = std::max(amax, std::fabs(wf[k]));
    }
    const bool normal = amax >= FLT_MIN;
    const float inv = normal ? float(kActQMax) / amax : 0.0f;
    scales[c] = normal ? amax / float(kActQMax) : 0.0f;
    for (int k = 0; k < kUnitK; ++k)  // nearbyint: half to even in the default rounding mode
      tile_rows[(k / kQuadK) * kQuadBytes + kQuadK * c + k % kQuadK] =
          static_cast<uint8_t>(static_cast<int8_t>(std::nearbyint(wf[k] * inv)));
  }
}
#endif

// The pipeline's policy (kernels/quant_gemm_amx_pipeline.hpp).
struct Int4Tiles {
  static constexpr bool kRequantized = true;
  static constexpr bool kSignedTiles = true;
  static constexpr bool kUnitZeros = false;
  static constexpr int kColumnValues = kCols;  // S
  static constexpr int kOverlapRowTiles = 2;
  static constexpr int kHeaderBytes = 0;
  static constexpr int kSourceUnitBytes = kUnitBytes;
  static void requantize_unit(const uint8_t* unit, uint8_t* tile_rows, float* scales) {
    requantize_int4_unit(unit, tile_rows, scales);
  }
};

}  // namespace

void gemm_int4_group16(const QuantGemmArgs& args) { amx_pipeline::gemm_quant_tiles<Int4Tiles>(args); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
