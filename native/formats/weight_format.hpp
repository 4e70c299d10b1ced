// A weight format as one unit (docs/design.md, "Weight formats"): its name, the geometry of its
// canonical parts (the arrays a checkpoint or kt_moe.quant stores a matrix W [N, K] in: block sizes
// along N and K, element types), and the kernel families that can read it: the packed quantized
// GEMM of the inference engine (kernels/gemm_quant.hpp) and the bf16 dequantizer of the SFT engine
// (kernels/dequant_bf16.hpp). The registry (registry.cpp) lists every format once, with the
// methods that store their experts in it; the engines, the array checks of the bindings, the SFT
// base store, the memory report and the Python schemes (kt_moe/quant, through
// _native.weight_formats()) all take a format from it. Adding a format means adding its own
// directory under native/formats/ and one registry entry.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/dequant_bf16.hpp"
#include "kernels/gemm_quant.hpp"
#include "kernels/matrix_parts.hpp"

namespace kt_moe {

enum class PartType : int { i8, u8, i32, f16, bf16, f32, f8_e4m3 };
const char* part_type_name(PartType type);  // "int8", "uint8", "int32", "float16", "bfloat16", "float32", "float8_e4m3fn"
int part_type_bytes(PartType type);

// One canonical part of W [N, K]: units of rows_per_unit rows x cols_per_unit columns, each unit
// elems_per_unit elements of `type`. Its shape is [ceil(N / rows_per_unit), ceil(K / cols_per_unit)
// * elems_per_unit], or [ceil(N / rows_per_unit)] (1-d, one value per row) when cols_per_unit is 0.
//   int8_channel  q {i8, 1, 1, 1} [N, K], scale {f32, 1, 0, 1} [N]
//   int4 groups   codes {u8, 1, G, G / 2} [N, Kp / 2], scale {f16, 1, G, 1} [N, Kp / G], ...
struct PartSpec {
  const char* name = nullptr;
  PartType type = PartType::u8;
  int rows_per_unit = 1;
  int cols_per_unit = 0;
  int elems_per_unit = 1;

  int64_t rows(int n) const { return (int64_t(n) + rows_per_unit - 1) / rows_per_unit; }
  // Elements per row of the part for K inputs (1 for a 1-d part).
  int64_t cols(int k) const {
    return cols_per_unit == 0 ? 1 : (int64_t(k) + cols_per_unit - 1) / cols_per_unit * elems_per_unit;
  }
  bool one_d() const { return cols_per_unit == 0; }
};

// What a method's configuration may choose about its format (MOESFTConfig.group_size, zero_point).
struct FormatOptions {
  int group_size = 0;
  bool zero_point = false;
};

struct WeightFormat {
  const char* name = nullptr;
  int group = 0;  // inputs per scale along K (0: one scale per row)
  bool zero_point = false;
  int part_count = 0;
  PartSpec parts[kMaxMatrixParts];
  const PackedFormat* packed = nullptr;    // the inference kernels, or null
  const DequantFormat* dequant = nullptr;  // the bf16 dequantizers, or null

  // Bytes of W [n, k] in the canonical parts.
  int64_t canonical_bytes(int n, int k) const;
  // "[q, scale]": the part names in order.
  std::string part_list() const;
  // The kernel families; std::invalid_argument naming the format when it has none of that family.
  const PackedFormat& packed_kernels() const;
  const DequantFormat& dequant_kernels() const;
};

// The registry's entry of one format.
struct FormatEntry {
  const char* name;
  std::vector<std::string> inference_methods;  // methods whose inference engine stores this format
  std::vector<std::string> sft_methods;        // methods whose SFT engine keeps its base in it
  // SFT methods that keep their base in this format when their checkpoint ships it
  // (MOESFTConfig.base_format: AMXINT4_KGroup_SFT on a pack-quantized INT4 checkpoint)
  std::vector<std::string> checkpoint_sft_methods;
  // Inference methods that store this format when MOEConfig.group_size asks for one of its group
  // sizes with a packed GEMM (AMXINT4 with group_size 64 or 128: int4_kgroup)
  std::vector<std::string> grouped_inference_methods;
  // The format with `options` applied; std::invalid_argument for options it does not take.
  WeightFormat (*make)(const FormatOptions& options);
  FormatOptions defaults;  // the options of a format asked for by name alone
};

const std::vector<FormatEntry>& weight_format_entries();
// The format named `name` with `options` (null: the entry's defaults); std::invalid_argument
// "unknown format '...'" listing the registered ones.
WeightFormat weight_format(const std::string& name, const FormatOptions* options = nullptr);
// The entry whose inference_methods (sft: sft_methods) name `method`, or null.
const FormatEntry* weight_format_entry_for_method(const std::string& method, bool sft);
// The format the inference engine stores `method`'s experts in with MOEConfig's group_size and
// zero_point: the method's entry's with those options, or, when group_size is neither 0 nor that
// format's group, the format of an entry that lists the method in grouped_inference_methods and
// has a packed GEMM at that group size; nullopt when no entry names the method.
std::optional<WeightFormat> inference_weight_format(const std::string& method, int group_size, bool zero_point);
// "A, B and C": the methods of every entry's inference_methods (sft: sft_methods), after `first`.
std::string weight_format_methods(bool sft, const std::string& first);

}  // namespace kt_moe
