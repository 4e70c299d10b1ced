// Python entry of the native weight quantizers (kt_moe.quant): the INT4 group quantizer
// (formats/int4_groups/int4_groups.hpp) over a matrix's rows, split across threads.
// Tensors cross as nb::ndarray, checked here (ValueError). Included by bindings.cpp only.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/cpu_features.hpp"
#include "formats/int4_groups/int4_groups.hpp"
#include "py/py_quant_kernels.hpp"

namespace kt_moe::py {

// fn(r0, r1) over [0, rows) in `threads` contiguous parts, each on its own thread (the caller's
// for the first); the first exception any part throws is rethrown once all have finished.
template <class Fn>
void split_rows(int rows, int threads, Fn fn) {
  const int parts = std::max(1, std::min(threads, rows));
  std::vector<std::exception_ptr> errors(parts);
  auto run = [&](int p) {
    try {
      fn(int(int64_t(rows) * p / parts), int(int64_t(rows) * (p + 1) / parts));
    } catch (...) {
      errors[p] = std::current_exception();
    }
  };
  std::vector<std::thread> helpers;
  for (int p = 1; p < parts; ++p) helpers.emplace_back(run, p);
  run(0);
  for (std::thread& t : helpers) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

inline void bind_weight_quantizers(nanobind::module_& m) {
  namespace nb = nanobind;
  using namespace nb::literals;
  m.def(
      "quantize_int4_groups",
      [](QuantArray w, int group, bool zero_point, QuantArray codes, QuantArray scale, std::optional<QuantArray> zero,
         int threads, const std::string& level_name) {
        Int4QuantizeArgs a{};
        if (w.dtype() == nb::dtype<float>()) {
          a.dtype = Int4QuantizeArgs::kFloat32, a.w = quant_operand<const float>(w, "w", {-1, -1}, &a.ldw);
        } else if (w.dtype() == kQuantBf16) {
          a.dtype = Int4QuantizeArgs::kBfloat16;
          a.w = quant_operand<const uint16_t>(w, "w", {-1, -1}, &a.ldw, kQuantBf16);
        } else if (w.dtype() == kQuantF16) {
          a.dtype = Int4QuantizeArgs::kFloat16;
          a.w = quant_operand<const uint16_t>(w, "w", {-1, -1}, &a.ldw, kQuantF16);
        } else {
          throw std::invalid_argument("w: expected dtype float32, bfloat16 or float16, got " +
                                      quant_dtype_name(w.dtype()));
        }
        if (group < 2 || group > 128 || group % 2) throw std::invalid_argument("group: expected an even size up to 128");
        const int rows = quant_dim(w.shape(0), "rows");
        a.k = quant_dim(w.shape(1), "k"), a.group = group, a.zero_point = zero_point;
        const int g = (a.k + group - 1) / group;
        a.codes = quant_operand<uint8_t>(codes, "codes", {rows, int64_t(g) * group / 2}, &a.ldc);
        a.scale = quant_operand<fp16_t>(scale, "scale", {rows, g}, &a.lds, kQuantF16);
        if (zero_point != bool(zero)) throw std::invalid_argument("zero: expected an array exactly with zero points");
        if (zero) a.zero = quant_operand<uint8_t>(*zero, "zero", {rows, g}, &a.ldz);
        if (threads < 1) throw std::invalid_argument("threads: expected a positive count");
        const Int4QuantizeFn quantize = int4_quantizer(parse_runnable_isa_level(level_name));
        nb::gil_scoped_release unlocked;
        split_rows(rows, threads, [&](int r0, int r1) { quantize(a, r0, r1); });
      },
      "w"_a, "group"_a, "zero_point"_a, "codes"_a.noconvert(), "scale"_a.noconvert(), "zero"_a.noconvert() = nb::none(),
      "threads"_a = 1, "level"_a = "generic",
      "Quantize w float32 / bfloat16 / float16 [R, K] (rows may be strided) into INT4 groups of `group` inputs "
      "(kt_moe.quant.int4_groups): codes uint8 [R, Kp / 2], scale float16 [R, g] and, with zero_point, zero uint8 "
      "[R, g], Kp = K rounded up to whole groups, g = Kp / group; rows split across `threads` threads, with the "
      "quantizer of ISA level `level` (every level gives the same bytes).");
}

}  // namespace kt_moe::py
