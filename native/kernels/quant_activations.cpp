// quantize_activations (gemm_quant.hpp): bf16 rows -> int8 records with a scale per 64 k and the
// sums of q per the format's act_sum_group k (64, 32 or 16). Portable C++ written so that the
// compiler vectorises it; compiled for generic (no ISA flags), avx2 and avx512, all with
// -ffp-contract=off (CMakeLists.txt): every step is exact or one correctly rounded fp32 operation
// (an FMA would round a * (127 / amax) + 1.5 * 2^23 once instead of twice), so every build gives
// bit-identical records. The avx512 build quantizes whole groups of a normal amax with explicit
// AVX-512 (INT4's records of m = 3072, k = 1408, 1 thread: 0.45 ns per value from the compiler's
// vectorisation of the portable loops, 0.30 with them), the same operations: the product rounded
// once, then to the nearest even integer by vcvtps2dq under the default rounding mode.
#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#if defined(__AVX512BW__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() vectors, which -Wmaybe-uninitialized
// reports (falsely) wherever they are inlined; silenced for the header's own lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include "kernels/bf16.hpp"
#include "kernels/gemm_quant.hpp"
#include "kernels/gemm_quant_levels.hpp"
#include "kernels/level_namespace.hpp"
#include "kernels/quant_layout.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

// One group of `len` <= G values into q [G] (zeros past len), *scale and sum [G / SG] (the sums of
// q over SG consecutive k). Inlined with len = G for whole groups, so that the loops have a
// constant trip count.
template <int G, int SG>
__attribute__((always_inline)) inline void quantize_group(const bf16_t* a, int len, int8_t* q, float* scale,
                                                          float* sum) {
  uint16_t amax_bits = 0;  // |x| orders like its bits without the sign (NaN above Inf)
  for (int i = 0; i < len; ++i) amax_bits = std::max<uint16_t>(amax_bits, a[i] & 0x7FFF);
  const float amax = bf16_to_float(amax_bits);
  std::memset(q, 0, G);
  for (int s = 0; s < G / SG; ++s) sum[s] = 0.0f;
  if (!(amax >= FLT_MIN && amax <= FLT_MAX)) {  // zeros or denormals only: 0; Inf or NaN: NaN results
    *scale = amax < FLT_MIN ? 0.0f : std::numeric_limits<float>::quiet_NaN();  // NaN amax: NaN, not 0
    return;
  }
  const float inv = float(quant_layout::kActQMax) / amax;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: x + kRound - kRound rounds |x| < 2^22 half to even
  for (int i = 0; i < len; ++i) {
    const float x = bf16_to_float(a[i]) * inv;
    q[i] = static_cast<int8_t>(static_cast<int32_t>((x + kRound) - kRound));
  }
  for (int s = 0; s < G / SG; ++s) {  // q is 0 past len
    int32_t t = 0;
    for (int i = 0; i < SG; ++i) t += q[s * SG + i];
    sum[s] = float(t);
  }
  *scale = amax / float(quant_layout::kActQMax);
}

#if defined(__AVX512BW__)
// quantize_group for a whole group of 64 with a normal amax, in AVX-512 registers; false, with
// nothing written, for any other group (zeros, denormals only, Inf or NaN: quantize_group's cases).
template <int SG>
inline bool quantize_whole_group_avx512(const bf16_t* a, int8_t* q, float* scale, float* sum) {
  static_assert(quant_layout::kUnitK == 64 && SG % 16 == 0, "a group is four vectors of 16 values");
  const __m512i halves[2] = {_mm512_loadu_si512(a), _mm512_loadu_si512(a + 32)};
  const __m512i magnitude = _mm512_set1_epi16(0x7FFF);
  const __m512i bits = _mm512_max_epu16(_mm512_and_si512(halves[0], magnitude), _mm512_and_si512(halves[1], magnitude));
  // the largest of the 32 uint16 lanes, as in quantize_group (|x| orders like its bits)
  const __m512i wide = _mm512_max_epu32(_mm512_and_si512(bits, _mm512_set1_epi32(0xFFFF)), _mm512_srli_epi32(bits, 16));
  const float amax = bf16_to_float(uint16_t(_mm512_reduce_max_epu32(wide)));
  if (!(amax >= FLT_MIN && amax <= FLT_MAX)) return false;
  const __m512 inv = _mm512_set1_ps(float(quant_layout::kActQMax) / amax);
  __m512i total = _mm512_setzero_si512();
  for (int v = 0; v < 4; ++v) {  // values 16 v .. 16 v + 15
    const __m512i half = halves[v / 2];
    const __m256i raw = v % 2 ? _mm512_extracti64x4_epi64(half, 1) : _mm512_castsi512_si256(half);
    const __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));  // exact
    const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(x, inv));  // |qi| <= 127
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * v), _mm512_cvtepi32_epi8(qi));
    total = _mm512_add_epi32(total, qi);
    if ((v + 1) * 16 % SG == 0) {
      sum[(v + 1) * 16 / SG - 1] = float(_mm512_reduce_add_epi32(total));
      total = _mm512_setzero_si512();
    }
  }
  *scale = amax / float(quant_layout::kActQMax);
  return true;
}
#endif

// quantize_group for the whole group at a: vectors where the build has them.
template <int G, int SG>
inline void quantize_whole_group(const bf16_t* a, int8_t* q, float* scale, float* sum) {
#if defined(__AVX512BW__)
  if (quantize_whole_group_avx512<SG>(a, q, scale, sum)) return;
#endif
  quantize_group<G, SG>(a, G, q, scale, sum);
}

}  // namespace

void quantize_activations(const QuantizeArgs& args) {
  if (args.m < 0) throw std::invalid_argument("kt-moe quantize_activations: m must not be negative");
  const QuantActLayout layout = quant_act_layout(args.sum_group, args.k);
  if (args.m == 0) return;
  if (!args.a || !args.out) throw std::invalid_argument("kt-moe quantize_activations: null pointer");
  if (args.m > 1 && args.lda < args.k)
    throw std::invalid_argument("kt-moe quantize_activations: lda = " + std::to_string(args.lda) + " < k");
  if (args.out_stride < layout.row_bytes || args.out_stride % 4 != 0 ||
      reinterpret_cast<uintptr_t>(args.out) % 4 != 0)
    throw std::invalid_argument("kt-moe quantize_activations: records need a stride >= " +
                                std::to_string(layout.row_bytes) +
                                " bytes, a multiple of 4, and 4-byte aligned memory");
  for (int r = 0; r < args.m; ++r) {
    const bf16_t* a = args.a + int64_t(r) * args.lda;
    uint8_t* rec = args.out + int64_t(r) * args.out_stride;
    auto* q = reinterpret_cast<int8_t*>(rec);
    auto* scale = reinterpret_cast<float*>(rec + layout.scale_offset);
    auto* sum = reinterpret_cast<float*>(rec + layout.sum_offset);
    auto groups = [&](auto sum_group) {
      constexpr int G = quant_layout::kUnitK, SG = decltype(sum_group)::value;
      const int whole = args.k / G;
      for (int g = 0; g < whole; ++g) quantize_whole_group<G, SG>(a + g * G, q + g * G, scale + g, sum + g * (G / SG));
      if (whole < layout.groups)  // the partial last group
        quantize_group<G, SG>(a + whole * G, args.k - whole * G, q + whole * G, scale + whole, sum + whole * (G / SG));
    };
    switch (layout.sum_group) {  // the sum groups quant_act_layout accepts, as compile-time constants
      case 64: groups(std::integral_constant<int, 64>{}); break;
      case 32: groups(std::integral_constant<int, 32>{}); break;
      case 16: groups(std::integral_constant<int, 16>{}); break;
    }
  }
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
