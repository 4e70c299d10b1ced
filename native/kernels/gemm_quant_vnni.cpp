// Quantized GEMM (gemm_quant.hpp) on AVX-512 vectors: the decode kernel (a few tokens stream
// each weight byte once) and the prefill kernel of the levels without AMX. Compiled twice:
//   avx512_bf16  vpdpbusd (AVX512-VNNI): 16 int32 lanes, each += 4 u8 x s8 products
//   avx512       the same product from AVX512-BW (vpmaddwd on the bytes widened to 16 bits; exact,
//                where vpmaddubsw would saturate on INT8's u8 weights)
// One zmm holds one packed quad (16 columns x 4 k): the weight bytes are the unsigned operand
// (INT8 stores q + 128; INT4 takes each nibble with one and: the high nibbles stay in place, as 16
// times the code), the 4 activation bytes of the quad are broadcast as the signed operand.
//   int8_channel  per 64-k unit two int32 accumulators per row (even and odd quads, for latency),
//                 then the fp32 step of gemm_quant.hpp.
//   int4_group16  per half unit (32 k) two int32 accumulators per row, one per 16-k group: P of the
//                 low nibbles, 16 P of the high nibbles in place. The fp32 step per group is
//                 D * scale with D = P - (zero / 16) * sum (low) or 16 P - zero * sum with scale / 16
//                 (high): both exact, so the products equal gemm_quant_generic.cpp's, and so do
//                 the sums, taken in its order (bit-identical results).
// Rows go 4 at a time per 16-column block, so that for M > 4 the block is read again from cache,
// not from memory.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_quant_levels.hpp"
#include "kernels/micro_tile.hpp"
#include "kernels/quant_kernel_common.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace quant_layout;

constexpr int kMaxRows = 4;  // rows per micro-kernel

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
constexpr int kPrefetchBytes = 4096;

inline void prefetch_ahead(const uint8_t* w, const uint8_t* end, int bytes) {
  if (end - w >= kPrefetchBytes + bytes) prefetch_bytes(w + kPrefetchBytes, bytes);
}

// out[r] = the 16 results of row r for the int8_channel block at `block` (of a weight ending at `end`).
template <int R>
__attribute__((noinline)) void int8_block(const uint8_t* block, const uint8_t* end, const Rows<R>& a, int units,
                                          __m512 (&out)[kMaxRows]) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const uint8_t* w = block + kInt8HeaderBytes;
  for (int g = 0; g < units; ++g, w += kInt8UnitBytes) {
    prefetch_ahead(w, end, kInt8UnitBytes);
    __m512i d0[R], d1[R];
    for (int r = 0; r < R; ++r) d0[r] = d1[r] = _mm512_setzero_si512();
    for (int j = 0; j < kUnitQuads; j += 2) {
      const __m512i w0 = _mm512_loadu_si512(w + j * kQuadBytes), w1 = _mm512_loadu_si512(w + (j + 1) * kQuadBytes);
      for (int r = 0; r < R; ++r) {
        const int8_t* x = a[r].q + g * kUnitK + j * kQuadK;
        d0[r] = dpbusd(d0[r], w0, broadcast_quad(x));
        d1[r] = dpbusd(d1[r], w1, broadcast_quad(x + kQuadK));
      }
    }
    for (int r = 0; r < R; ++r)
      acc[r] = _mm512_fmadd_ps(to_float(_mm512_add_epi32(d0[r], d1[r])), _mm512_set1_ps(a[r].scale[g]),
                               acc[r]);
  }
  const __m512 scales = _mm512_loadu_ps(block);
  for (int r = 0; r < R; ++r)
    out[r] = _mm512_mul_ps(_mm512_sub_ps(acc[r], _mm512_set1_ps(int8_row_offset(a[r].scale, a[r].sum, units))),
                           scales);
}

// The same for an int4_group16 block, half a unit (32 k: groups 2 u and 2 u + 1) at a time.
template <int R>
__attribute__((noinline)) void int4_block(const uint8_t* block, const uint8_t* end, const Rows<R>& a, int units,
                                          __m512 (&out)[kMaxRows]) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8(int8_t(0xF0));
  const __m512 sixteenth = _mm512_set1_ps(1.0f / kInt4ZeroDen);
  const uint8_t* w = block;
  for (int g = 0; g < units; ++g, w += kInt4UnitBytes) {
    prefetch_ahead(w, end, kInt4UnitBytes);
    __m512 y[R];  // sum over the unit's groups of D * scale
#pragma GCC unroll 2
    for (int u = 0; u < 2; ++u) {
      __m512i lo[R], hi[R];  // P of group 2 u (low nibbles), 16 P of group 2 u + 1 (high nibbles in place)
      for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm512_setzero_si512();
      for (int j = 0; j < kInt4HalfVectors; ++j) {
        const __m512i v = _mm512_loadu_si512(w + (u * kInt4HalfVectors + j) * kQuadBytes);
        const __m512i wl = _mm512_and_si512(v, low), wh = _mm512_and_si512(v, high);
        for (int r = 0; r < R; ++r) {
          const int8_t* x = a[r].q + g * kUnitK + 32 * u + j * kQuadK;
          lo[r] = dpbusd(lo[r], wl, broadcast_quad(x));
          hi[r] = dpbusd(hi[r], wh, broadcast_quad(x + kInt4Group));
        }
      }
      // D * scale is the exact (P - zero / 16 * sum) * scale: low nibbles with z = zero / 16,
      // high nibbles (16 P) with z = zero and scale / 16
      const __m256i* scales = reinterpret_cast<const __m256i*>(w + kInt4ScaleOffset) + 2 * u;
      const uint8_t* zeros = w + kInt4ZeroOffset + 2 * u * kCols;
      const __m512 s_lo = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(scales));
      const __m512 s_hi = _mm512_mul_ps(_mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(scales + 1)), sixteenth);
      const __m512 z_lo = _mm512_mul_ps(to_float(widen_u8(zeros)), sixteenth), z_hi = to_float(widen_u8(zeros + kCols));
      for (int r = 0; r < R; ++r) {
        const float* sum = a[r].sum + g * kInt4UnitGroups + 2 * u;
        const __m512 d_lo = _mm512_fnmadd_ps(z_lo, _mm512_set1_ps(sum[0]), to_float(lo[r]));  // exact
        const __m512 d_hi = _mm512_fnmadd_ps(z_hi, _mm512_set1_ps(sum[1]), to_float(hi[r]));  // exact
        y[r] = u == 0 ? _mm512_mul_ps(d_lo, s_lo) : _mm512_fmadd_ps(d_lo, s_lo, y[r]);
        y[r] = _mm512_fmadd_ps(d_hi, s_hi, y[r]);
      }
    }
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(y[r], _mm512_set1_ps(a[r].scale[g]), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = acc[r];
}

}  // namespace

void gemm_quant(const QuantGemmArgs& args) {
  validate_quant_gemm(args);
  if (args.m == 0 || args.n0 == args.n1) return;
  const QuantActLayout layout = quant_act_layout(args.a.format, args.a.k);
  const int64_t block_bytes = quant_block_bytes(args.w.format, args.w.k);
  const bool int8 = args.w.format == QuantFormat::int8_channel;
  const uint8_t* end = args.w.data + quant_weight_bytes(args.w.format, args.w.n, args.w.k);
  for (int n = args.n0; n < args.n1; n += kCols) {
    const uint8_t* block = args.w.data + (n / kCols) * block_bytes;
    const __mmask16 cols = static_cast<__mmask16>((1u << std::min(kCols, args.n1 - n)) - 1);
    for (int i0 = 0; i0 < args.m; i0 += kMaxRows) {
      const int rows = std::min(kMaxRows, args.m - i0);
      __m512 out[kMaxRows];
      with_static_count<kMaxRows>(rows, [&](auto nr) {
        QuantRow a[nr()];
        for (int r = 0; r < nr(); ++r) a[r] = quant_row(args, layout, i0 + r);
        if (int8)
          int8_block<nr()>(block, end, a, layout.groups, out);
        else
          int4_block<nr()>(block, end, a, layout.groups, out);
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
