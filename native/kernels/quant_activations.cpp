// quantize_activations (gemm_quant.hpp): bf16 rows -> int8 records with a scale per 64 k and the
// sums of q per the format's act_sum_group k (64, 32 or 16). Portable C++ written so that the
// compiler vectorises it; compiled for generic (no ISA flags), avx2 and avx512, all with
// -ffp-contract=off (CMakeLists.txt): every step is exact or one correctly rounded fp32 operation
// (an FMA would round a * (127 / amax) + 1.5 * 2^23 once instead of twice), so every build gives
// bit-identical records.
#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

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
      for (int g = 0; g < whole; ++g) quantize_group<G, SG>(a + g * G, G, q + g * G, scale + g, sum + g * (G / SG));
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
