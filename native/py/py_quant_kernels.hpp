// Python hooks of the quantized GEMM family (kernels/gemm_quant.hpp): packing a registered format's
// canonical parts into a QuantWeight (any format with its options; int8_channel and int4_group16 also
// from named tensors), the activation record layout, and test entries that run the quantizer and the product of one ISA level
// (tests/test_quant_kernels.py, bench/bench_qgemm.py).
// Tensors cross as nb::ndarray; device, dtype, shape and strides are checked here (ValueError).
// Included by bindings.cpp only.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cpu/cpu_features.hpp"
#include "formats/weight_format.hpp"
#include "kernels/fp16.hpp"
#include "kernels/gemm_quant.hpp"
#include "py/py_weight_formats.hpp"
#include "py/quant_parts.hpp"

namespace kt_moe::py {

using QuantArray = nanobind::ndarray<>;  // device, dtype, rank and strides are checked below

constexpr nanobind::dlpack::dtype kQuantBf16{uint8_t(nanobind::dlpack::dtype_code::Bfloat), 16, 1};
constexpr nanobind::dlpack::dtype kQuantF16{uint8_t(nanobind::dlpack::dtype_code::Float), 16, 1};

// "int8", "uint8", "int32", "float32", "bfloat16", ...
inline std::string quant_dtype_name(nanobind::dlpack::dtype d) {
  using Code = nanobind::dlpack::dtype_code;
  const char* kind = d.code == uint8_t(Code::Int)      ? "int"
                     : d.code == uint8_t(Code::UInt)   ? "uint"
                     : d.code == uint8_t(Code::Bfloat) ? "bfloat"
                     : d.code == uint8_t(Code::Float)  ? "float"
                                                       : "other";
  return kind + std::to_string(d.bits);
}

// x's data after checking that it is a CPU array of `dtype` (default: T's) with as many dimensions
// as `shape` and, where shape's entry is >= 0, that size; the last dimension must be contiguous.
// *ld = the row stride (elements) of a 2-d array.
template <class T>
T* quant_operand(const QuantArray& x, const char* name, std::initializer_list<int64_t> shape, int64_t* ld = nullptr,
                 nanobind::dlpack::dtype dtype = nanobind::dtype<std::remove_const_t<T>>()) {
  auto fail = [name](const std::string& what) { throw std::invalid_argument(std::string(name) + ": " + what); };
  if (x.device_type() != nanobind::device::cpu::value) fail("expected a CPU array");
  if (x.dtype() != dtype) fail("expected dtype " + quant_dtype_name(dtype) + ", got " + quant_dtype_name(x.dtype()));
  if (x.ndim() != shape.size()) fail("expected a " + std::to_string(shape.size()) + "-d array");
  size_t i = 0;
  for (int64_t want : shape) {
    if (want >= 0 && int64_t(x.shape(i)) != want)
      fail("dimension " + std::to_string(i) + " is " + std::to_string(x.shape(i)) + ", expected " +
           std::to_string(want));
    ++i;
  }
  const size_t last = x.ndim() - 1;
  if (x.shape(last) > 1 && x.stride(last) != 1) fail("the last dimension must be contiguous (stride 1)");
  if (x.ndim() == 2 && x.shape(0) > 1 && x.stride(0) < int64_t(x.shape(1)))
    fail("row stride must be at least the row length");
  if (ld) *ld = x.ndim() == 2 && x.shape(0) > 1 ? x.stride(0) : int64_t(x.shape(last));
  return static_cast<T*>(x.data());
}

// The packed kernels of the registered format `name` (ValueError for an unknown name or a format
// without them).
inline const PackedFormat& packed_format(const std::string& name) { return weight_format(name).packed_kernels(); }

inline int quant_dim(size_t d, const char* what) {
  if (d > size_t(1) << 30) throw std::invalid_argument(std::string(what) + " is larger than 2^30");
  return int(d);
}

inline void bind_quant_kernels(nanobind::module_& m) {
  namespace nb = nanobind;
  using namespace nb::literals;

  nb::class_<QuantWeight>(m, "QuantWeight",
                          "A weight packed for the quantized GEMM kernels of its format (int8_channel, int4_group16, "
                          "...); one layout for every ISA level.")
      .def_prop_ro("format", [](const QuantWeight& w) { return std::string(w.view().format->name); })
      .def_prop_ro("n", [](const QuantWeight& w) { return w.view().n; })
      .def_prop_ro("k", [](const QuantWeight& w) { return w.view().k; })
      .def_prop_ro("nbytes", &QuantWeight::bytes, "Bytes of packed memory held.")
      .def(
          "packed_bytes",
          [](const QuantWeight& w) {
            return nb::bytes(reinterpret_cast<const char*>(w.view().data), size_t(w.bytes()));
          },
          "Test hook: a copy of the packed layout (gemm_quant.hpp), nbytes bytes.");

  m.def(
      "quant_pack_int8",
      [](QuantArray q, QuantArray scale) {
        int64_t ld = 0;
        const int8_t* qp = quant_operand<const int8_t>(q, "q", {-1, -1}, &ld);
        const int n = quant_dim(q.shape(0), "n"), k = quant_dim(q.shape(1), "k");
        const float* sp = quant_operand<const float>(scale, "scale", {n});
        MatrixParts parts;
        parts.data[0] = qp, parts.ld[0] = ld, parts.data[1] = sp, parts.ld[1] = 1;
        const PackedFormat& format = packed_format("int8_channel");
        nb::gil_scoped_release unlocked;
        return QuantWeight::pack(format, parts, n, k);
      },
      "q"_a, "scale"_a, "Pack int8_channel: q int8 [N, K], scale float32 [N] -> QuantWeight.");

  m.def(
      "quant_pack_int4",
      [](QuantArray codes, QuantArray scale, QuantArray zero, std::optional<int> k_arg) {
        int64_t ldc = 0, lds = 0, ldz = 0;
        const uint8_t* cp = quant_operand<const uint8_t>(codes, "codes", {-1, -1}, &ldc);
        const int n = quant_dim(codes.shape(0), "n"), kp = quant_dim(2 * codes.shape(1), "k");
        const int k = k_arg ? *k_arg : kp;
        if (kp % 16 != 0 || k < 1 || k > kp || kp - k >= 16)
          throw std::invalid_argument("codes: expected [N, Kp / 2] with Kp = k rounded up to a multiple of 16, got " +
                                      std::to_string(codes.shape(1)) + " bytes per row for k = " + std::to_string(k));
        const fp16_t* sp = quant_operand<const fp16_t>(scale, "scale", {n, kp / 16}, &lds, kQuantF16);
        const uint8_t* zp = quant_operand<const uint8_t>(zero, "zero", {n, kp / 16}, &ldz);
        MatrixParts parts;
        parts.data[0] = cp, parts.ld[0] = ldc, parts.data[1] = sp, parts.ld[1] = lds, parts.data[2] = zp;
        parts.ld[2] = ldz;
        const PackedFormat& format = packed_format("int4_group16");
        nb::gil_scoped_release unlocked;
        return QuantWeight::pack(format, parts, n, k);
      },
      "codes"_a, "scale"_a, "zero"_a, "k"_a = nb::none(),
      "Pack int4_group16: codes uint8 [N, Kp/2] (low nibble = even k), scale float16 [N, Kp/16], zero uint8 "
      "[N, Kp/16] (sixteenths of a code), Kp = k rounded up to a multiple of 16 (k defaults to Kp) -> QuantWeight.");

  m.def(
      "quant_pack",
      [](const std::string& name, const std::vector<Array>& parts, int k, std::optional<int> group_size,
         std::optional<bool> zero_point) {
        const WeightFormat f = registered_format(name, group_size, zero_point);
        const PackedFormat& format = f.packed_kernels();
        if (parts.empty()) throw std::invalid_argument("parts: expected " + f.part_list());
        const int n = quant_dim(parts[0].ndim() ? parts[0].shape(0) : 0, "n");
        const MatrixParts src = checked_parts(f, parts, "w", n, k);
        nb::gil_scoped_release unlocked;
        return QuantWeight::pack(format, src, n, k);
      },
      "format"_a, "parts"_a, "k"_a, "group_size"_a = nb::none(), "zero_point"_a = nb::none(),
      "Pack W [N, k] given as the canonical parts of the registered format `format` with its options (None: the "
      "format's defaults), in the format's part order -> QuantWeight.");

  m.def(
      "quant_act_layout",
      [](const std::string& format, int k) {
        const QuantActLayout l = quant_act_layout(packed_format(format), k);
        nb::dict d;
        d["k"] = l.k, d["group"] = l.group, d["groups"] = l.groups, d["k_padded"] = l.k_padded;
        d["sum_group"] = l.sum_group, d["sums"] = l.sums;
        d["scale_offset"] = l.scale_offset, d["sum_offset"] = l.sum_offset, d["row_bytes"] = l.row_bytes;
        return d;
      },
      "format"_a, "k"_a,
      "The quantized activation record of a row of k: int8 q[k_padded], float32 scale[groups] (one per `group` "
      "k) at scale_offset, float32 sum[sums] (one per `sum_group` k) at sum_offset, row_bytes in all.");

  m.def(
      "quant_amx_min_rows",
      [](const std::string& format) { return packed_format(format).amx_min_rows; },
      "format"_a, "Rows from which the amx level runs the AMX kernel (fewer go to the avx512_bf16 kernel).");

  m.def(
      "quantize_activations_test",
      [](const std::string& level_name, const std::string& format, QuantArray a, QuantArray out) {
        const IsaLevel level = parse_runnable_isa_level(level_name);
        QuantizeArgs args;
        args.sum_group = packed_format(format).act_sum_group;
        args.a = quant_operand<const bf16_t>(a, "a", {-1, -1}, &args.lda, kQuantBf16);
        args.m = quant_dim(a.shape(0), "m"), args.k = quant_dim(a.shape(1), "k");
        args.out = quant_operand<uint8_t>(out, "out", {args.m, -1}, &args.out_stride);
        if (int64_t(out.shape(1)) < quant_act_layout(args.sum_group, args.k).row_bytes)
          throw std::invalid_argument("out: rows shorter than the record (quant_act_layout()['row_bytes'])");
        const QuantizeFn kernel = quantize_activations_kernel(level);
        nb::gil_scoped_release unlocked;
        kernel(args);
      },
      "level"_a, "format"_a, "a"_a, "out"_a.noconvert(),
      "Test hook: quantize a bfloat16 [M, K] (row-strided views accepted) into out, uint8 [M, >= row_bytes], one "
      "record per row, with the quantizer of `level`.");

  m.def(
      "gemm_quant_test",
      [](const std::string& level_name, const QuantWeight& w, QuantArray records, QuantArray c, int n0, int n1,
         bool accumulate, std::optional<QuantArray> row_ids) {
        const IsaLevel level = parse_runnable_isa_level(level_name);
        QuantGemmArgs args;
        args.w = w.view();
        args.a.format = args.w.format, args.a.k = args.w.k;
        args.a.data = quant_operand<const uint8_t>(records, "records", {-1, -1}, &args.a.stride);
        args.a.rows = quant_dim(records.shape(0), "rows");
        if (int64_t(records.shape(1)) < quant_act_layout(*args.a.format, args.a.k).row_bytes)
          throw std::invalid_argument("records: rows shorter than the record (quant_act_layout()['row_bytes'])");
        args.c = quant_operand<float>(c, "c", {-1, -1}, &args.ldc);
        args.m = quant_dim(c.shape(0), "m");
        if (int64_t(c.shape(1)) < n1) throw std::invalid_argument("c: fewer than n1 columns");
        if (row_ids) args.row_ids = quant_operand<const int32_t>(*row_ids, "row_ids", {args.m});
        args.n0 = n0, args.n1 = n1, args.accumulate = accumulate;
        const QuantGemmFn kernel = gemm_quant_kernel(level);
        nb::gil_scoped_release unlocked;
        kernel(args);
      },
      "level"_a, "weight"_a, "records"_a, "c"_a.noconvert(), "n0"_a, "n1"_a, "accumulate"_a = false,
      "row_ids"_a = nb::none(),
      "Test hook: c[i, n] (+)= dequant(record row_ids[i] or i) . dequant(W[n]) for n0 <= n < n1 with the kernel of "
      "`level`; records uint8 [rows, >= row_bytes] from quantize_activations_test, c float32 [M, >= n1] (column n "
      "of W in column n of c), row_ids int32 [M] or None.");
}

}  // namespace kt_moe::py
