// SwiGLU forward/backward loops, compiled once per level into kt_moe::KT_KERNEL_NS: portable C++
// for generic (no ISA flags), AVX2 intrinsics for avx2, AVX-512 intrinsics for avx512. No
// -ffast-math and no FMA contraction (-ffp-contract=off, CMakeLists.txt): every build does the same
// fp32 operations in the same order, sigmoid(g) = 1 / (1 + exp(-g)) with an IEEE division, and
// differs only in exp (std::exp here, the vector exp below, within about 1 ulp of each other; the
// AVX2 and AVX-512 ones give the same bits), so that NaN, +-Inf and large |g| give the same results
// at every level (g < -88: exp(-g) = Inf, sigmoid 0; g = -Inf: silu = -Inf * 0 = NaN).
#include "kernels/swiglu.hpp"

#include <cmath>

#include "kernels/bf16.hpp"
#include "kernels/level_namespace.hpp"

#if defined(__AVX512F__)
#include "kernels/bf16_avx512.hpp"
#elif defined(__AVX2__)
#include <cstring>

#include "kernels/bf16_avx2.hpp"
#endif

namespace kt_moe {
namespace KT_KERNEL_NS {

#if defined(__AVX512F__)

namespace {

// exp(-g) within about 1 ulp: -g = n ln2 + r, |r| <= ln2 / 2, exp(r) by its Taylor polynomial of
// degree 7 (truncation below 1e-8 relative), times 2^n by vscalefps, which rounds an overflow to
// Inf and an underflow to a denormal or 0. g is first clamped to [-150, 150], beyond which exp is
// Inf or 0 in fp32 anyway (so that n ln2 never meets an infinite g: Inf - Inf would be NaN); the
// clamp keeps a NaN g NaN (max/min return their second operand when one is NaN).
inline __m512 exp_negated_ps(__m512 g) {
  g = _mm512_min_ps(_mm512_set1_ps(150.0f), _mm512_max_ps(_mm512_set1_ps(-150.0f), g));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(g, _mm512_set1_ps(-1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln 2 = kLn2Hi + kLn2Lo, kLn2Hi with 16 significant bits: n kLn2Hi is exact for |n| <= 256.
  constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.428606820309417232e-6f;
  __m512 r = _mm512_fnmsub_ps(n, _mm512_set1_ps(kLn2Hi), g);  // -g - n kLn2Hi
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __m512 sigmoid_ps(__m512 g) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp_negated_ps(g)));
}

// Elements [i, i + 32) of n, masked at the end: the tail runs the same vector code as the body.
constexpr int kStep = 32;
inline __mmask32 elements_at(int64_t i, int64_t n) {
  return n - i >= kStep ? __mmask32(0xFFFFFFFFu) : __mmask32((uint64_t(1) << (n - i)) - 1u);
}

struct Gradients {
  __m512 z, dg, du;
};

// g * sigmoid(g) * u, as (g s) u.
inline __m512 forward_lanes(__m512 g, __m512 u) { return _mm512_mul_ps(_mm512_mul_ps(g, sigmoid_ps(g)), u); }

// z = silu u, dg = dz u s (1 + g (1 - s)) (left to right), du = dz silu with silu = g s.
inline Gradients backward_lanes(__m512 g, __m512 u, __m512 dz) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 s = sigmoid_ps(g), silu = _mm512_mul_ps(g, s);
  const __m512 slope = _mm512_add_ps(one, _mm512_mul_ps(g, _mm512_sub_ps(one, s)));
  return {_mm512_mul_ps(silu, u), _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dz, u), s), slope), _mm512_mul_ps(dz, silu)};
}

}  // namespace

void swiglu_forward(const float* __restrict g, const float* __restrict u, bf16_t* __restrict z, int64_t n) {
  for (int64_t i = 0; i < n; i += kStep) {
    const __mmask32 m = elements_at(i, n);
    const __mmask16 m0 = __mmask16(m), m1 = __mmask16(m >> 16);
    const __m512 lo = forward_lanes(_mm512_maskz_loadu_ps(m0, g + i), _mm512_maskz_loadu_ps(m0, u + i));
    const __m512 hi = forward_lanes(_mm512_maskz_loadu_ps(m1, g + i + 16), _mm512_maskz_loadu_ps(m1, u + i + 16));
    _mm512_mask_storeu_epi16(z + i, m, float_to_bf16(lo, hi));
  }
}

void swiglu_backward(const float* __restrict g, const float* __restrict u, const float* __restrict dz,
                     bf16_t* __restrict z, bf16_t* __restrict dg, bf16_t* __restrict du, int64_t n) {
  for (int64_t i = 0; i < n; i += kStep) {
    const __mmask32 m = elements_at(i, n);
    const __mmask16 m0 = __mmask16(m), m1 = __mmask16(m >> 16);
    const Gradients lo = backward_lanes(_mm512_maskz_loadu_ps(m0, g + i), _mm512_maskz_loadu_ps(m0, u + i),
                                        _mm512_maskz_loadu_ps(m0, dz + i));
    const Gradients hi = backward_lanes(_mm512_maskz_loadu_ps(m1, g + i + 16), _mm512_maskz_loadu_ps(m1, u + i + 16),
                                        _mm512_maskz_loadu_ps(m1, dz + i + 16));
    _mm512_mask_storeu_epi16(z + i, m, float_to_bf16(lo.z, hi.z));
    _mm512_mask_storeu_epi16(dg + i, m, float_to_bf16(lo.dg, hi.dg));
    _mm512_mask_storeu_epi16(du + i, m, float_to_bf16(lo.du, hi.du));
  }
}

#elif defined(__AVX2__)

namespace {

// exp(-g) as the AVX-512 build computes it, the same bits: the same clamp, reduction and
// polynomial; 2^n (|n| <= 217) without vscalefps as two powers of two 2^n1 2^n2, n1 = n >> 1,
// n2 = n - n1, both normal fp32 built from their exponent bits: p 2^n1 is exact (p in [0.7, 1.5]),
// and its product by 2^n2 rounds p 2^n once, as vscalefps does (overflow to Inf, underflow to a
// denormal or 0). A NaN g keeps r and p NaN whatever the integer conversion makes of n.
inline __m256 exp_negated_ps(__m256 g) {
  g = _mm256_min_ps(_mm256_set1_ps(150.0f), _mm256_max_ps(_mm256_set1_ps(-150.0f), g));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(g, _mm256_set1_ps(-1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.428606820309417232e-6f;
  __m256 r = _mm256_fnmsub_ps(n, _mm256_set1_ps(kLn2Hi), g);  // -g - n kLn2Hi
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i n_int = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(n_int, 1), n2 = _mm256_sub_epi32(n_int, n1);
  auto pow2 = [](__m256i k) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23)); };
  return _mm256_mul_ps(_mm256_mul_ps(p, pow2(n1)), pow2(n2));
}

inline __m256 sigmoid_ps(__m256 g) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp_negated_ps(g)));
}

// Elements [i, i + 16) per step, as two vectors of 8; the tail goes through zero-padded buffers and
// runs the same vector code as the body.
constexpr int kStep = 16;

struct Lanes {
  __m256 lo, hi;
};

inline Lanes load_lanes(const float* x, int64_t i, int64_t n) {
  if (n - i >= kStep) return {_mm256_loadu_ps(x + i), _mm256_loadu_ps(x + i + 8)};
  alignas(32) float part[kStep] = {};
  std::memcpy(part, x + i, sizeof(float) * size_t(n - i));
  return {_mm256_load_ps(part), _mm256_load_ps(part + 8)};
}

inline void store_lanes(bf16_t* z, int64_t i, int64_t n, __m256i words) {
  if (n - i >= kStep) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(z + i), words);
    return;
  }
  alignas(32) bf16_t part[kStep];
  _mm256_store_si256(reinterpret_cast<__m256i*>(part), words);
  std::memcpy(z + i, part, sizeof(bf16_t) * size_t(n - i));
}

struct Gradients {
  __m256 z, dg, du;
};

// g * sigmoid(g) * u, as (g s) u.
inline __m256 forward_lanes(__m256 g, __m256 u) { return _mm256_mul_ps(_mm256_mul_ps(g, sigmoid_ps(g)), u); }

// z = silu u, dg = dz u s (1 + g (1 - s)) (left to right), du = dz silu with silu = g s.
inline Gradients backward_lanes(__m256 g, __m256 u, __m256 dz) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 s = sigmoid_ps(g), silu = _mm256_mul_ps(g, s);
  const __m256 slope = _mm256_add_ps(one, _mm256_mul_ps(g, _mm256_sub_ps(one, s)));
  return {_mm256_mul_ps(silu, u), _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dz, u), s), slope), _mm256_mul_ps(dz, silu)};
}

}  // namespace

void swiglu_forward(const float* __restrict g, const float* __restrict u, bf16_t* __restrict z, int64_t n) {
  for (int64_t i = 0; i < n; i += kStep) {
    const Lanes gi = load_lanes(g, i, n), ui = load_lanes(u, i, n);
    store_lanes(z, i, n, float_to_bf16(forward_lanes(gi.lo, ui.lo), forward_lanes(gi.hi, ui.hi)));
  }
}

void swiglu_backward(const float* __restrict g, const float* __restrict u, const float* __restrict dz,
                     bf16_t* __restrict z, bf16_t* __restrict dg, bf16_t* __restrict du, int64_t n) {
  for (int64_t i = 0; i < n; i += kStep) {
    const Lanes gi = load_lanes(g, i, n), ui = load_lanes(u, i, n), dzi = load_lanes(dz, i, n);
    const Gradients lo = backward_lanes(gi.lo, ui.lo, dzi.lo), hi = backward_lanes(gi.hi, ui.hi, dzi.hi);
    store_lanes(z, i, n, float_to_bf16(lo.z, hi.z));
    store_lanes(dg, i, n, float_to_bf16(lo.dg, hi.dg));
    store_lanes(du, i, n, float_to_bf16(lo.du, hi.du));
  }
}

#else

namespace {

inline float sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }

}  // namespace

void swiglu_forward(const float* __restrict g, const float* __restrict u, bf16_t* __restrict z, int64_t n) {
  for (int64_t i = 0; i < n; ++i) z[i] = float_to_bf16(g[i] * sigmoid(g[i]) * u[i]);
}

void swiglu_backward(const float* __restrict g, const float* __restrict u, const float* __restrict dz,
                     bf16_t* __restrict z, bf16_t* __restrict dg, bf16_t* __restrict du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float s = sigmoid(g[i]), silu = g[i] * s;
    z[i] = float_to_bf16(silu * u[i]);
    dg[i] = float_to_bf16(dz[i] * u[i] * s * (1.0f + g[i] * (1.0f - s)));
    du[i] = float_to_bf16(dz[i] * silu);
  }
}

#endif

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
