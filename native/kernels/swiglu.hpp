// The SwiGLU activation of the experts, forward and backward, fp32 in, bf16 out (the inputs of
// the next GEMMs). One source compiled per level: portable for generic, AVX2 and AVX-512 intrinsics
// (with their own vector exp) for avx2 and for the levels that have AVX-512; the levels agree on
// NaN, +-Inf and large inputs (native/kernels/swiglu.cpp).
#pragma once

#include <cstdint>

#include "cpu/cpu_features.hpp"
#include "kernels/gemm_bf16.hpp"

namespace kt_moe {

struct SwigluKernels {
  // z = silu(g) * u                                        g, u: [n] fp32; z: [n] bf16
  void (*forward)(const float* g, const float* u, bf16_t* z, int64_t n);
  // z as above, dg = dz * u * silu'(g), du = dz * silu(g)  with silu'(g) = s (1 + g (1 - s)), s = sigmoid(g)
  void (*backward)(const float* g, const float* u, const float* dz, bf16_t* z, bf16_t* dg, bf16_t* du, int64_t n);
  explicit operator bool() const { return forward != nullptr; }  // an entry of a ByLevel table
};

// The kernels of `level`; never null.
SwigluKernels swiglu_kernels(IsaLevel level);

namespace generic {
void swiglu_forward(const float* g, const float* u, bf16_t* z, int64_t n);
void swiglu_backward(const float* g, const float* u, const float* dz, bf16_t* z, bf16_t* dg, bf16_t* du, int64_t n);
}  // namespace generic
namespace avx2 {
void swiglu_forward(const float* g, const float* u, bf16_t* z, int64_t n);
void swiglu_backward(const float* g, const float* u, const float* dz, bf16_t* z, bf16_t* dg, bf16_t* du, int64_t n);
}  // namespace avx2
namespace avx512 {
void swiglu_forward(const float* g, const float* u, bf16_t* z, int64_t n);
void swiglu_backward(const float* g, const float* u, const float* dz, bf16_t* z, bf16_t* dg, bf16_t* du, int64_t n);
}  // namespace avx512

}  // namespace kt_moe
