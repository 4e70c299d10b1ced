// The registry of weight formats (weight_format.hpp): every format once, with the methods that
// store their experts in it. A new format adds its directory and one line here.
#include <stdexcept>
#include <string>

#include "formats/fp8/format.hpp"
#include "formats/gguf/format.hpp"
#include "formats/int4_group16/format.hpp"
#include "formats/int4_kgroup/format.hpp"
#include "formats/int4_packed/format.hpp"
#include "formats/int8_channel/format.hpp"
#include "formats/int_rows/format.hpp"
#include "formats/weight_format.hpp"

namespace kt_moe {

const std::vector<FormatEntry>& weight_format_entries() {
  static const std::vector<FormatEntry> entries = {
      {"int8_channel", {"AMXINT8"}, {"AMXINT8_SFT"}, {}, {}, &make_int8_channel, {}},
      {"int4_group16", {"AMXINT4"}, {"AMXINT4_SFT"}, {}, {}, &make_int4_group16, {}},
      {"int4_kgroup", {}, {"AMXINT4_KGroup_SFT"}, {}, {"AMXINT4"}, &make_int4_kgroup, {128, true}},
      {"fp8", {"FP8"}, {"AMXFP8_SFT"}, {}, {}, &make_fp8, {128, false}},
      {"int4_packed", {"RAWINT4"}, {}, {"AMXINT4_KGroup_SFT"}, {}, &make_int4_packed, {32, false}},
      {"int8_rows", {"MOE_INT8"}, {}, {}, {}, &make_int8_rows, {}},
      {"int4_rows", {"MOE_INT4"}, {}, {}, {}, &make_int4_rows, {}},
      // GGUF block types: LLAMAFILE takes one per matrix from MOEConfig.matrix_formats
      KT_GGUF_TYPES(KT_GGUF_REGISTRY_ENTRY)
  };
  return entries;
}

WeightFormat weight_format(const std::string& name, const FormatOptions* options) {
  std::string names;
  for (const FormatEntry& e : weight_format_entries()) {
    if (name == e.name) return e.make(options ? *options : e.defaults);
    names += (names.empty() ? "'" : ", '") + std::string(e.name) + "'";
  }
  throw std::invalid_argument("kt-moe: unknown format '" + name + "' (expected one of " + names + ")");
}

const FormatEntry* weight_format_entry_for_method(const std::string& method, bool sft) {
  for (const FormatEntry& e : weight_format_entries())
    for (const std::string& m : sft ? e.sft_methods : e.inference_methods)
      if (m == method) return &e;
  return nullptr;
}

std::optional<WeightFormat> inference_weight_format(const std::string& method, int group_size, bool zero_point) {
  const FormatEntry* entry = weight_format_entry_for_method(method, false);
  if (!entry) return std::nullopt;
  const FormatOptions options{group_size, zero_point};
  WeightFormat own = entry->make(options);
  if (group_size != 0 && group_size != own.group)
    for (const FormatEntry& e : weight_format_entries())
      for (const std::string& m : e.grouped_inference_methods)
        if (m == method) {
          WeightFormat grouped = e.make(options);
          if (grouped.packed) return grouped;
        }
  return own;
}

std::string weight_format_methods(bool sft, const std::string& first) {
  std::vector<std::string> all{first};
  for (const FormatEntry& e : weight_format_entries())
    for (const std::string& m : sft ? e.sft_methods : e.inference_methods) all.push_back(m);
  std::string s;
  for (size_t i = 0; i < all.size(); ++i) s += (i == 0 ? "" : i + 1 == all.size() ? " and " : ", ") + all[i];
  return s;
}

}  // namespace kt_moe
