// What the formats' few-rows products (DequantDotFn, kernels/dequant_bf16.hpp; native/formats/*/
// dequant_dot.cpp) share: the call's bf16 activation rows in fp32 in thread scratch, zero-padded to
// whole steps, and the loop over output rows. Compiled per level (level_namespace.hpp).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "kernels/bf16.hpp"
#include "kernels/dequant_bf16.hpp"
#include "kernels/level_namespace.hpp"
#include "kernels/micro_tile.hpp"
#include "kernels/scratch.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

// The m rows of a [m, cols] bf16 (row stride lda) as fp32 rows of ld = cols rounded up to `step`
// (zeros past cols), in the thread's ScratchSlot::packed.
struct DotActivations {
  const float* x;
  int64_t ld;
};

inline DotActivations dot_activations(const bf16_t* a, int64_t lda, int m, int cols, int step) {
  const int64_t ld = (int64_t(cols) + step - 1) / step * step;
  auto* x = static_cast<float*>(thread_scratch(ScratchSlot::packed, sizeof(float) * size_t(m) * size_t(ld)));
  for (int i = 0; i < m; ++i) {
    float* row = x + i * ld;
    int c = 0;
#if defined(__AVX512F__)
    for (; c + 16 <= cols; c += 16) {  // bf16 is the upper half of an fp32: widen and shift
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i * lda + c));
      _mm512_storeu_si512(row + c, _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
#endif
    for (; c < cols; ++c) row[c] = bf16_to_float(a[i * lda + c]);
    std::memset(row + cols, 0, sizeof(float) * size_t(ld - cols));
  }
  return {x, ld};
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// The sum of v's 8 lanes (the AVX2 products' last step per output row and activation row).
inline float sum_lanes(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

// c[i * ldc + (n - n0)] = out[i] for i < m, n0 <= n < n1, where row(r, n, out) writes the m results
// of output row n, r = std::integral_constant<int, m> (the activation rows as a constant, so that
// the accumulators stay in registers).
template <class Row>
void dot_rows(int m, int n0, int n1, float* c, int64_t ldc, Row row) {
  with_static_count<kDequantDotMaxRows>(m, [&](auto r) {
    float out[kDequantDotMaxRows];
    for (int n = n0; n < n1; ++n) {
      row(r, n, out);
      for (int i = 0; i < r(); ++i) c[i * ldc + (n - n0)] = out[i];
    }
  });
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
