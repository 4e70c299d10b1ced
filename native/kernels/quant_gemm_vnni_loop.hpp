// What the formats' quantized GEMMs on AVX-512 vectors share (native/formats/*/gemm_vnni.cpp, the
// decode kernel, where a few tokens stream each weight byte once, and the prefill kernel of the
// levels without AMX): the u8 x s8 dot product, the activation broadcast, the weight prefetch and
// the loop over column blocks and rows. Compiled twice:
//   avx512_bf16  vpdpbusd (AVX512-VNNI): 16 int32 lanes, each += 4 u8 x s8 products
//   avx512       the same product from AVX512-BW (vpmaddwd on the bytes widened to 16 bits; exact,
//                where vpmaddubsw would saturate on u8 weights up to 255)
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

namespace kt_moe {
namespace KT_KERNEL_NS {

constexpr int kVnniMaxRows = 4;  // rows per micro-kernel

// acc[lane] += sum_i w.byte[4 lane + i] (unsigned) * a.byte[4 lane + i] (signed).
inline __m512i dpbusd(__m512i acc, __m512i w, __m512i a) {
#if defined(__AVX512VNNI__)
  return _mm512_dpbusd_epi32(acc, w, a);
#else
  const __m512i w_even = _mm512_and_si512(w, _mm512_set1_epi16(0x00FF)), w_odd = _mm512_srli_epi16(w, 8);
  const __m512i a_even = _mm512_srai_epi16(_mm512_slli_epi16(a, 8), 8), a_odd = _mm512_srai_epi16(a, 8);
  return _mm512_add_epi32(acc, _mm512_add_epi32(_mm512_madd_epi16(w_even, a_even), _mm512_madd_epi16(w_odd, a_odd)));
#endif
}

// int32 -> fp32 and u8 -> int32 lanes. The masked forms: GCC 12 warns (-Wmaybe-uninitialized)
// about the undefined source vector of the unmasked intrinsics.
inline __m512 to_float(__m512i v) { return _mm512_maskz_cvtepi32_ps(0xFFFF, v); }
inline __m512i widen_u8(const uint8_t* p) {
  return _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// The 4 activation bytes at p in every lane.
inline __m512i broadcast_quad(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm512_set1_epi32(v);
}

template <int R>
using Rows = QuantRow[R];

// The weight stream runs through the column range block after block; each unit asks for the
// lines this far ahead (measured: 13-15 GB/s on one thread, 9-10 GB/s without), as long as they lie
// inside the packed weight (`end`: no address is formed past it).
constexpr int kVnniPrefetchBytes = 4096;

inline void prefetch_ahead(const uint8_t* w, const uint8_t* end, int bytes) {
  if (end - w >= kVnniPrefetchBytes + bytes) prefetch_bytes(w + kVnniPrefetchBytes, bytes);
}

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
