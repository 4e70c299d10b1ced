// SwiGLU forward/backward loops, compiled once per level into kt_moe::KT_KERNEL_NS (generic: no
// ISA flags; avx512: AVX-512 flags and -ffast-math, so that the compiler vectorises expf).
#include "kernels/swiglu.hpp"

#include <cmath>
#include <cstring>

#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

// Round to nearest even; the activations here are finite.
inline bf16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return bf16_t(bits >> 16);
}

inline float sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }

}  // namespace

void swiglu_forward(const float* __restrict g, const float* __restrict u, bf16_t* __restrict z, int64_t n) {
  for (int64_t i = 0; i < n; ++i) z[i] = to_bf16(g[i] * sigmoid(g[i]) * u[i]);
}

void swiglu_backward(const float* __restrict g, const float* __restrict u, const float* __restrict dz,
                     bf16_t* __restrict z, bf16_t* __restrict dg, bf16_t* __restrict du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float s = sigmoid(g[i]), silu = g[i] * s;
    z[i] = to_bf16(silu * u[i]);
    dg[i] = to_bf16(dz[i] * u[i] * s * (1.0f + g[i] * (1.0f - s)));
    du[i] = to_bf16(dz[i] * silu);
  }
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
