// Python hooks of the dequantizers (kernels/dequant_bf16.hpp): dequant_bf16_test runs the one of an
// ISA level on a stored matrix given as C-contiguous arrays (tests/test_sft_dequant_kernels.py,
// test_dequant_levels.py), dequant_product_test a GGUF format's or int8_channel's few-rows or
// many-rows product (tests/test_gguf_levels.py, test_int8_stored_product.py), dequant_product_nn_test
// int8_channel's product with the weight transposed (test_int8_stored_product.py). Included by
// bindings.cpp only.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "cpu/cpu_features.hpp"
#include "formats/weight_format.hpp"
#include "kernels/dequant_bf16.hpp"
#include "kernels/fp16.hpp"
#include "py/arrays.hpp"

namespace kt_moe::py {

// out [r1 - r0, c1 - c0] bf16 = rows [r0, r1) and columns [c0, c1) of the dequantizer's D
// (kernels/dequant_bf16.hpp) of W [rows, cols], stored as
//   int8_channel (group == 0): values int8 [rows, >= cols], scale fp32 [rows] (D = q: the scale is
//   the products' to apply);
//   int4 (group > 0: a power of two in [16, 1024]; the formats use 16, 32, 64, 128): values uint8
//   codes [rows, ld], scale fp16 [rows, 2 ld / group], zero uint8 [rows, 2 ld / group] in sixteenths
//   of a code or None (symmetric), logical column c at stored column col0 + c;
//   format "int4_packed": the same int4 groups with bf16 scales;
//   format "fp8": values uint8 (e4m3 bits) [rows, ld]; group 0: scale fp32 [rows] (D = the fp8
//   value); group b > 0: scale fp32 [ceil(rows / b), S] per b x b block (D = bf16(value * scale)),
//   the scale of logical column c that of block column (col0 + c) / b (col0 < b), S b >= col0 + cols;
//   format "gguf_<type>": values uint8 [rows, ld], whole blocks of the type (scale and zero unused),
//   logical column c at stored column col0 + c (col0 < the type's block).
// w (rows, values, ld_values set) as GGUF format `format` with logical columns [col0, col0 + cols)
// of its stored blocks; std::invalid_argument when they do not fit.
inline void gguf_view(QuantMatrixView& w, const std::string& format, const Array& values, int col0, int cols) {
  const WeightFormat f = weight_format(format);
  w.format = f.dequant;
  w.group = f.group;
  w.col0 = col0;
  checked<const uint8_t>(values, "values", DType::u8, {w.rows, w.ld_values});
  const PartSpec& blocks = f.parts[0];
  if (col0 < 0 || col0 >= f.group || cols < 0 || w.ld_values % blocks.elems_per_unit != 0 ||
      col0 + cols > w.ld_values / blocks.elems_per_unit * blocks.cols_per_unit)
    throw std::invalid_argument("values must hold whole blocks covering col0 + cols, col0 < the block");
}

inline void dequant_bf16_test(const std::string& level_name, const Array& values, const Array& scale,
                              const std::optional<Array>& zero, int group, int col0, int cols, int r0, int r1, int c0,
                              int c1, const Array& out, const std::string& format) {
  const IsaLevel level = parse_runnable_isa_level(level_name);
  if (values.ndim() != 2) throw std::invalid_argument("values must be a 2-d array");
  const int64_t rows = values.shape(0), ld = values.shape(1);
  QuantMatrixView w;
  w.rows = int(rows);
  w.cols = cols;
  w.values = static_cast<const uint8_t*>(values.data());
  w.ld_values = ld;
  const bool gguf = format.rfind("gguf_", 0) == 0;
  if (!format.empty() && format != "fp8" && format != "int4_packed" && !gguf)
    throw std::invalid_argument("format must be '', 'fp8', 'int4_packed' or 'gguf_<type>'");
  // the dequantizers of int8_channel, or of the int4 groups (int4_group16's are int4_kgroup's)
  w.format = weight_format(group == 0 ? "int8_channel" : "int4_group16").dequant;
  if (format == "int4_packed") w.format = weight_format("int4_packed").dequant;
  if (gguf) {
    gguf_view(w, format, values, col0, cols);
  } else if (format == "fp8") {
    const FormatOptions options{group, false};
    w.format = weight_format("fp8", &options).dequant;
    checked<const uint8_t>(values, "values", DType::u8, {rows, ld});
    if (cols > ld || group < 0 || col0 < 0 || (group == 0 ? col0 != 0 : col0 >= group))
      throw std::invalid_argument("bad cols, group or col0");
    if (group == 0) {
      w.scale = checked<const float>(scale, "scale", DType::f32, {rows});
    } else {
      if (scale.ndim() != 2) throw std::invalid_argument("scale must be a 2-d array");
      w.group = group;
      w.col0 = col0;
      w.ld_scale = scale.shape(1);
      w.scale = checked<const float>(scale, "scale", DType::f32, {(rows + group - 1) / group, w.ld_scale});
      if (col0 + cols > w.ld_scale * group) throw std::invalid_argument("scale must cover the columns");
    }
  } else if (group == 0) {
    checked<const int8_t>(values, "values", DType::i8, {rows, ld});
    w.scale = checked<const float>(scale, "scale", DType::f32, {rows});
    w.ld_scale = 1;
    if (cols > ld) throw std::invalid_argument("cols exceeds the stored row");
  } else {
    if (group < 16 || group > 1024 || (group & (group - 1)) != 0 || col0 < 0 || col0 >= group)
      throw std::invalid_argument("bad group or col0");
    w.group = group;
    w.col0 = col0;
    checked<const uint8_t>(values, "values", DType::u8, {rows, ld});
    const int64_t groups = 2 * ld / group;
    if (2 * ld % group != 0 || col0 + cols > 2 * ld) throw std::invalid_argument("values must hold whole groups");
    w.scale = format.empty() ? static_cast<const void*>(checked<const fp16_t>(scale, "scale", DType::f16, {rows, groups}))
                             : checked<const bf16_t>(scale, "scale", DType::bf16, {rows, groups});
    w.ld_scale = groups;
    if (zero) {
      w.zero = checked<const uint8_t>(*zero, "zero", DType::u8, {rows, groups});
      w.ld_zero = groups;
    }
  }
  if (r0 < 0 || r0 > r1 || r1 > rows || c0 < 0 || c0 > c1 || c1 > cols)
    throw std::invalid_argument("need 0 <= r0 <= r1 <= rows and 0 <= c0 <= c1 <= cols");
  bf16_t* dst = checked<bf16_t>(out, "out", DType::bf16, {r1 - r0, c1 - c0});
  const DequantFn kernel = dequant_bf16_kernel(*w.format, level);
  nanobind::gil_scoped_release unlocked;
  kernel(w, r0, r1, c0, c1, dst, c1 - c0);
}

// c (fp32 [m, n1 - n0]) = a (bf16 [m, cols]) times rows [n0, n1) of W^T, W the GGUF matrix of
// format `format` in values (gguf_view) or, format "int8_channel", values int8 [rows, >= cols] with
// scale fp32 [rows] (col0 0), by the few-rows product (DequantDotFn: m <= 4) or the many-rows one
// (gemm) of `level`; false, with c untouched, where the level has none or it does not take the
// matrix (or the activations).
inline bool dequant_product_test(const std::string& level_name, const std::string& format, const Array& values,
                                 int col0, int cols, int n0, int n1, const Array& a, const Array& c, bool gemm,
                                 const std::optional<Array>& scale) {
  const IsaLevel level = parse_runnable_isa_level(level_name);
  if (values.ndim() != 2 || a.ndim() != 2) throw std::invalid_argument("values and a must be 2-d arrays");
  QuantMatrixView w;
  w.rows = int(values.shape(0));
  w.cols = cols;
  w.values = static_cast<const uint8_t*>(values.data());
  w.ld_values = values.shape(1);
  if (format == "int8_channel") {
    checked<const int8_t>(values, "values", DType::i8, {w.rows, w.ld_values});
    if (!scale || col0 != 0 || cols < 0 || cols > w.ld_values)
      throw std::invalid_argument("int8_channel needs scale [rows], col0 0 and cols <= the stored row");
    w.format = weight_format("int8_channel").dequant;
    w.scale = checked<const float>(*scale, "scale", DType::f32, {w.rows});
    w.ld_scale = 1;
  } else if (format.rfind("gguf_", 0) == 0) {
    gguf_view(w, format, values, col0, cols);
  } else {
    throw std::invalid_argument("format must be 'gguf_<type>' or 'int8_channel'");
  }
  const int m = int(a.shape(0));
  const bf16_t* x = checked<const bf16_t>(a, "a", DType::bf16, {m, cols});
  float* out = checked<float>(c, "c", DType::f32, {m, n1 - n0});
  if (n0 < 0 || n0 > n1 || n1 > w.rows || m < 1 || (!gemm && m > kDequantDotMaxRows))
    throw std::invalid_argument("need 0 <= n0 <= n1 <= rows and 1 <= m (<= 4 for the few-rows product)");
  const DequantDotFn product = gemm ? dequant_gemm_kernel(*w.format, level) : dequant_dot_kernel(*w.format, level);
  if (!product) return false;
  nanobind::gil_scoped_release unlocked;
  return product(w, m, n0, n1, x, cols, out, n1 - n0);
}

// c (fp32 [m, j1 - j0]) (+)= a (bf16 [m, rows]) times columns [j0, j1) of W (int8_channel: values
// int8 [rows, ld], scale fp32 [rows]) by the product with W transposed (DequantGemmNnFn) of `level`;
// false, with c untouched, where the level has none or it does not take the matrix or a.
inline bool dequant_product_nn_test(const std::string& level_name, const Array& values, const Array& scale, int j0,
                                    int j1, const Array& a, const Array& c, bool accumulate) {
  const IsaLevel level = parse_runnable_isa_level(level_name);
  if (values.ndim() != 2 || a.ndim() != 2) throw std::invalid_argument("values and a must be 2-d arrays");
  QuantMatrixView w;
  w.format = weight_format("int8_channel").dequant;
  w.rows = int(values.shape(0));
  w.ld_values = values.shape(1);
  w.cols = int(w.ld_values);
  w.values = reinterpret_cast<const uint8_t*>(checked<const int8_t>(values, "values", DType::i8, {w.rows, w.ld_values}));
  w.scale = checked<const float>(scale, "scale", DType::f32, {w.rows});
  w.ld_scale = 1;
  const int m = int(a.shape(0));
  const bf16_t* x = checked<const bf16_t>(a, "a", DType::bf16, {m, w.rows});
  float* out = checked<float>(c, "c", DType::f32, {m, j1 - j0});
  if (j0 < 0 || j0 > j1 || j1 > w.cols || m < 1) throw std::invalid_argument("need 0 <= j0 <= j1 <= ld and 1 <= m");
  const DequantGemmNnFn product = dequant_gemm_nn_kernel(*w.format, level);
  if (!product) return false;
  nanobind::gil_scoped_release unlocked;
  return product(w, m, j0, j1, x, w.rows, out, j1 - j0, accumulate);
}

inline void bind_dequant_kernels(nanobind::module_& m) {
  namespace nb = nanobind;
  using namespace nb::literals;
  m.def("dequant_bf16_test", &dequant_bf16_test, "level"_a, "values"_a.noconvert(), "scale"_a.noconvert(),
        "zero"_a.noconvert().none(), "group"_a, "col0"_a, "cols"_a, "r0"_a, "r1"_a, "c0"_a, "c1"_a,
        "out"_a.noconvert(), "format"_a = "",
        "Test hook: out (bf16 [r1 - r0, c1 - c0]) = rows [r0, r1), columns [c0, c1) of a stored quantized matrix "
        "dequantized by the kernel of `level` (group 0: int8_channel values int8 and scale [rows], giving q itself; "
        "else int4 codes, fp16 scale and uint8 zero in sixteenths (or None: 8) per group of a power of two in "
        "[16, 1024], giving (code - zero / 16) * scale, logical column c at stored column col0 + c; format "
        "'int4_packed': the same with bf16 scales; format 'fp8': e4m3 bytes with fp32 scales per row (group 0) or "
        "per group x group block; format 'gguf_<type>': the type's blocks, logical column c at stored column "
        "col0 + c). ValueError on bad input.");
  m.def("dequant_product_test", &dequant_product_test, "level"_a, "format"_a, "values"_a.noconvert(), "col0"_a,
        "cols"_a, "n0"_a, "n1"_a, "a"_a.noconvert(), "c"_a.noconvert(), "gemm"_a, "scale"_a.noconvert() = nb::none(),
        "Test hook: c (fp32 [m, n1 - n0]) = a (bf16 [m, cols]) times rows [n0, n1) of W^T, W a GGUF format's "
        "blocks (uint8 [rows, ld], logical column c at stored column col0 + c) or, format 'int8_channel', int8 "
        "[rows, ld] with fp32 row scales `scale`, by the few-rows product of `level` (m <= 4) or, gemm, its "
        "many-rows one. Returns False, c untouched, where the level has none or it does not take the matrix (col0 "
        "!= 0) or the activations (int8_channel: an Inf or NaN). ValueError on bad input.");
  m.def("dequant_product_nn_test", &dequant_product_nn_test, "level"_a, "values"_a.noconvert(), "scale"_a.noconvert(),
        "j0"_a, "j1"_a, "a"_a.noconvert(), "c"_a.noconvert(), "accumulate"_a,
        "Test hook: c (fp32 [m, j1 - j0]) = (accumulate: c +) a (bf16 [m, rows]) times columns [j0, j1) of W, W "
        "int8_channel's int8 [rows, ld] with fp32 row scales, by the product with W transposed of `level`. Returns "
        "False, c untouched, where the level has none or it does not take a (an Inf or NaN in a * scale). ValueError "
        "on bad input.");
}

}  // namespace kt_moe::py
