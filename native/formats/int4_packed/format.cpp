// Format int4_packed: compressed-tensors "pack-quantized" symmetric INT4 as Kimi-K2-Thinking and
// Kimi-K2.5 ship their experts (method RAWINT4; kt_moe/quant/int4_packed.py defines it in torch).
// For W [N, K] with G = options.group_size inputs per scale (32 for Kimi; K a multiple of G):
//   weight_packed int32 [N, K / 8]: eight 4-bit values per word, lowest nibble first, each the
//                                   unsigned q + 8 (q in [-8, 7]); as bytes, the int4 groups'
//                                   codes (low nibble = even k)
//   weight_scale  bf16  [N, K / G]
//   W[n, k] = (nibble - 8) * weight_scale[n, k / G]
// so it is the int4 groups (formats/int4_groups) without zero points, with bf16 scales, read by
// their bf16 dequantizer. The stored integers and scales are kept as they are.
#include "formats/int4_packed/format.hpp"

#include <stdexcept>
#include <string>

#include "formats/int4_groups/int4_groups.hpp"

namespace kt_moe {

WeightFormat make_int4_packed(const FormatOptions& options) {
  const int G = options.group_size;
  if (G < 16 || G > 1024 || (G & (G - 1)) != 0)
    throw std::invalid_argument("int4_packed: the group size must be a power of two in [16, 1024], got " +
                                std::to_string(G));
  WeightFormat f;
  f.name = "int4_packed";
  f.group = G;
  f.part_count = 2;
  f.parts[int4_groups_layout::kCodes] = {"weight_packed", PartType::i32, 1, G, G / 8};
  f.parts[int4_groups_layout::kScale] = {"weight_scale", PartType::bf16, 1, G, 1};
  f.dequant = &kInt4GroupsBf16Dequant;
  return f;
}

}  // namespace kt_moe
