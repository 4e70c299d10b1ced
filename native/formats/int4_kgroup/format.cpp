// Format int4_kgroup (method AMXINT4_KGroup_SFT): the int4 groups (formats/int4_groups) with
// G = 32, 64 or 128 inputs per group, with zero points or symmetric (no zero part). SFT only: it
// has the bf16 dequantizer, no packed GEMM.
#include "formats/int4_kgroup/format.hpp"

#include <stdexcept>
#include <string>

#include "formats/int4_groups/int4_groups.hpp"

namespace kt_moe {

WeightFormat make_int4_kgroup(const FormatOptions& options) {
  const int G = options.group_size;
  if (G != 32 && G != 64 && G != 128)
    throw std::invalid_argument("MOESFTConfig.group_size must be 32, 64 or 128 for AMXINT4_KGroup_SFT, got " +
                                std::to_string(G));
  using namespace int4_groups_layout;
  WeightFormat f;
  f.name = "int4_kgroup";
  f.group = G;
  f.zero_point = options.zero_point;
  f.part_count = options.zero_point ? 3 : 2;
  f.parts[kCodes] = {"codes", PartType::u8, 1, G, G / 2};
  f.parts[kScale] = {"scale", PartType::f16, 1, G, 1};
  if (options.zero_point) f.parts[kZero] = {"zero", PartType::u8, 1, G, 1};
  f.dequant = &kInt4GroupsDequant;
  return f;
}

}  // namespace kt_moe
