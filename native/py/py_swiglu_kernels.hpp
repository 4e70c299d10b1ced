// Python hooks of the SwiGLU kernels (kernels/swiglu.hpp): swiglu_forward_test and
// swiglu_backward_test run the kernels of an ISA level on 1-d arrays (tests/test_swiglu_kernels.py).
// Included by bindings.cpp only.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <stdexcept>
#include <string>

#include "cpu/cpu_features.hpp"
#include "kernels/swiglu.hpp"
#include "py/arrays.hpp"

namespace kt_moe::py {

inline SwigluKernels swiglu_kernels_of(const std::string& level_name) {
  return swiglu_kernels(parse_runnable_isa_level(level_name));
}

// z [n] bf16 = silu(g) * u; g, u [n] fp32.
inline void swiglu_forward_test(const std::string& level_name, const Array& g, const Array& u, const Array& z) {
  const SwigluKernels kernels = swiglu_kernels_of(level_name);
  if (g.ndim() != 1) throw std::invalid_argument("g must be a 1-d array");
  const int64_t n = g.shape(0);
  const float* gp = checked<const float>(g, "g", DType::f32, {n});
  const float* up = checked<const float>(u, "u", DType::f32, {n});
  bf16_t* zp = checked<bf16_t>(z, "z", DType::bf16, {n});
  nanobind::gil_scoped_release unlocked;
  kernels.forward(gp, up, zp, n);
}

// z, dg, du [n] bf16 from g, u, dz [n] fp32 (kernels/swiglu.hpp).
inline void swiglu_backward_test(const std::string& level_name, const Array& g, const Array& u, const Array& dz,
                                 const Array& z, const Array& dg, const Array& du) {
  const SwigluKernels kernels = swiglu_kernels_of(level_name);
  if (g.ndim() != 1) throw std::invalid_argument("g must be a 1-d array");
  const int64_t n = g.shape(0);
  const float* gp = checked<const float>(g, "g", DType::f32, {n});
  const float* up = checked<const float>(u, "u", DType::f32, {n});
  const float* dzp = checked<const float>(dz, "dz", DType::f32, {n});
  bf16_t* zp = checked<bf16_t>(z, "z", DType::bf16, {n});
  bf16_t* dgp = checked<bf16_t>(dg, "dg", DType::bf16, {n});
  bf16_t* dup = checked<bf16_t>(du, "du", DType::bf16, {n});
  nanobind::gil_scoped_release unlocked;
  kernels.backward(gp, up, dzp, zp, dgp, dup, n);
}

inline void bind_swiglu_kernels(nanobind::module_& m) {
  namespace nb = nanobind;
  using namespace nb::literals;
  m.def("swiglu_forward_test", &swiglu_forward_test, "level"_a, "g"_a.noconvert(), "u"_a.noconvert(),
        "z"_a.noconvert(),
        "Test hook: z (bf16 [n]) = silu(g) * u for float32 [n] g and u, with the SwiGLU kernel of `level`. "
        "ValueError on bad input.");
  m.def("swiglu_backward_test", &swiglu_backward_test, "level"_a, "g"_a.noconvert(), "u"_a.noconvert(),
        "dz"_a.noconvert(), "z"_a.noconvert(), "dg"_a.noconvert(), "du"_a.noconvert(),
        "Test hook: z = silu(g) * u, dg = dz * u * silu'(g), du = dz * silu(g) (bf16 [n]) for float32 [n] g, u "
        "and dz, with the SwiGLU kernel of `level`. ValueError on bad input.");
}

}  // namespace kt_moe::py
