// int4_kgroup's quantized GEMM (layout.hpp) on AMX-INT8 tiles (levels amx and amx_emulated,
// kernels/quant_gemm_amx_pipeline.hpp). With zero points each 64-k unit's nibbles are taken to
// unsigned bytes 0..15, its B tile (TDPBSUD), next to the unit's 16 column scales and zero terms
// -zero / 16; the fold subtracts the zero term times the activation sum (exact) and applies
// scale * a_s, layout.hpp's fp32 steps. Symmetric groups (the fixed zero point 8) are taken to
// signed bytes code - 8 (TDPBSSD), whose sums are that same exact t: their fold skips the zero term,
// one vector FMA per row and unit fewer. The unpacking has an AVX-512 form (level amx) and a scalar
// form (amx_emulated) that give the same bytes.
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "formats/int4_kgroup/int4_kgroup.hpp"
#include "formats/int4_kgroup/layout.hpp"
#include "kernels/fp16.hpp"
#include "kernels/quant_gemm_amx_pipeline.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace int4_kgroup_layout;

// One 576-byte unit -> its B tile (16 quads x 64 B: quad j from the low nibbles of code vector j,
// quad 8 + j from its high nibbles; bytes 0..15 with zero points, code - 8 symmetric) and columns:
// scale [16] and, with zero points, -zero / 16 [16].
template <bool ZeroPoint>
inline void unpack_unit(const uint8_t* unit, uint8_t* tile_rows, float* columns) {
  constexpr int kOffset = ZeroPoint ? 0 : kSymmetricZero / kZeroDen;
#if defined(__AVX512F__)
  const __m512i nibble = _mm512_set1_epi8(0x0F), offset = _mm512_set1_epi8(kOffset);
  for (int j = 0; j < kCodeVectors; ++j) {
    const __m512i v = _mm512_loadu_si512(unit + j * kQuadBytes);
    _mm512_storeu_si512(tile_rows + j * kQuadBytes, _mm512_sub_epi8(_mm512_and_si512(v, nibble), offset));
    _mm512_storeu_si512(tile_rows + (kCodeVectors + j) * kQuadBytes,
                        _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(v, 4), nibble), offset));
  }
  const __mmask16 all = 0xFFFF;
  _mm512_storeu_ps(columns, _mm512_maskz_cvtph_ps(all, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(unit + kScaleOffset))));
  if constexpr (ZeroPoint) {
    const __m512 zero = _mm512_maskz_cvtepi32_ps(
        all, _mm512_maskz_cvtepu8_epi32(all, _mm_loadu_si128(reinterpret_cast<const __m128i*>(unit + kZeroOffset))));
    _mm512_storeu_ps(columns + kCols, _mm512_mul_ps(zero, _mm512_set1_ps(-1.0f / kZeroDen)));
  }
#else
  for (int j = 0; j < kCodeVectors; ++j)
    for (int b = 0; b < kQuadBytes; ++b) {
      const uint8_t byte = unit[j * kQuadBytes + b];
      tile_rows[j * kQuadBytes + b] = uint8_t((byte & 0x0F) - kOffset);
      tile_rows[(kCodeVectors + j) * kQuadBytes + b] = uint8_t((byte >> 4) - kOffset);
    }
  for (int c = 0; c < kCols; ++c) {
    fp16_t bits;
    std::memcpy(&bits, unit + kScaleOffset + c * 2, sizeof bits);
    columns[c] = fp16_to_float(bits);
    if constexpr (ZeroPoint) columns[kCols + c] = float(unit[kZeroOffset + c]) * (-1.0f / kZeroDen);
  }
#endif
}

// The pipeline's policy (kernels/quant_gemm_amx_pipeline.hpp).
template <bool ZeroPoint>
struct Int4KGroupTiles {
  static constexpr bool kRequantized = true;
  static constexpr bool kSignedTiles = !ZeroPoint;
  static constexpr bool kUnitZeros = ZeroPoint;
  static constexpr int kColumnValues = (ZeroPoint ? 2 : 1) * kCols;  // scale (, -zero / 16)
  static constexpr int kOverlapRowTiles = 1;
  static constexpr int kHeaderBytes = 0;
  static constexpr int kSourceUnitBytes = kUnitBytes;
  static void requantize_unit(const uint8_t* unit, uint8_t* tile_rows, float* columns) {
    unpack_unit<ZeroPoint>(unit, tile_rows, columns);
  }
};

}  // namespace

void gemm_int4_kgroup(const QuantGemmArgs& args) { amx_pipeline::gemm_quant_tiles<Int4KGroupTiles<true>>(args); }

void gemm_int4_kgroup_symmetric(const QuantGemmArgs& args) {
  amx_pipeline::gemm_quant_tiles<Int4KGroupTiles<false>>(args);
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
