// Python's view of the weight-format registry (formats/weight_format.hpp): the registered formats
// with the methods that use them, and one format's part geometry, which kt_moe.quant.schemes reads
// instead of keeping its own copy. Included by bindings.cpp only.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>

#include "formats/weight_format.hpp"

namespace kt_moe::py {

// The registered format `name` with options (None: the format's defaults); ValueError for an
// unknown name or options it does not take.
inline WeightFormat registered_format(const std::string& name, std::optional<int> group_size,
                                      std::optional<bool> zero_point) {
  FormatOptions options;
  for (const FormatEntry& e : weight_format_entries())
    if (name == e.name) options = e.defaults;
  if (group_size) options.group_size = *group_size;
  if (zero_point) options.zero_point = *zero_point;
  return weight_format(name, &options);
}

inline void bind_weight_formats(nanobind::module_& m) {
  namespace nb = nanobind;
  using namespace nb::literals;
  m.def(
      "weight_formats",
      [] {
        nb::list out;
        for (const FormatEntry& e : weight_format_entries()) {
          nb::dict d;
          d["name"] = e.name;
          d["inference_methods"] = e.inference_methods;
          d["sft_methods"] = e.sft_methods;
          d["checkpoint_sft_methods"] = e.checkpoint_sft_methods;
          d["grouped_inference_methods"] = e.grouped_inference_methods;
          out.append(d);
        }
        return out;
      },
      "The registered weight formats: [{'name', 'inference_methods', 'sft_methods', 'checkpoint_sft_methods', "
      "'grouped_inference_methods'}], in registry order.");
  m.def(
      "weight_format",
      [](const std::string& name, std::optional<int> group_size, std::optional<bool> zero_point) {
        const WeightFormat f = registered_format(name, group_size, zero_point);
        nb::list parts;
        for (int i = 0; i < f.part_count; ++i) {
          const PartSpec& p = f.parts[i];
          nb::dict d;
          d["name"] = p.name, d["dtype"] = part_type_name(p.type);
          d["rows_per_unit"] = p.rows_per_unit, d["cols_per_unit"] = p.cols_per_unit;
          d["elems_per_unit"] = p.elems_per_unit;
          parts.append(d);
        }
        nb::dict d;
        d["name"] = f.name, d["group"] = f.group, d["zero_point"] = f.zero_point, d["parts"] = parts;
        d["quantized_gemm"] = f.packed != nullptr, d["dequant_bf16"] = f.dequant != nullptr;
        return d;
      },
      "name"_a, "group_size"_a = nanobind::none(), "zero_point"_a = nanobind::none(),
      "One registered format with options applied (None: the format's defaults): {'name', 'group', 'zero_point', 'parts': [{'name', 'dtype', "
      "'rows_per_unit', 'cols_per_unit' (0: one value per row), 'elems_per_unit'}], 'quantized_gemm', "
      "'dequant_bf16'}. For W [N, K] a part's shape is [ceil(N / rows_per_unit), ceil(K / cols_per_unit) * "
      "elems_per_unit], or [ceil(N / rows_per_unit)]. ValueError for an unknown name or options the format "
      "does not take.");
}

}  // namespace kt_moe::py
