// Format int4_group16 (layout.hpp): the int4 groups (formats/int4_groups) with G = 16 and zero
// points, packed for the quantized GEMM kernels of every ISA level.
#include "formats/int4_group16/format.hpp"

#include "formats/int4_group16/int4_group16.hpp"
#include "formats/int4_group16/layout.hpp"
#include "formats/int4_groups/int4_groups.hpp"
#include "kernels/by_level.hpp"

namespace kt_moe {
namespace {

using namespace int4_group16_layout;

// Slices along K start at whole groups: each slice is packed on its own, its K padded to 64.
const PackedFormat kPacked = {
    "int4_group16", kSumGroup, kAmxMinRows, kGroup, &int4_group16_block_bytes, &int4_group16_pack,
    {{IsaLevel::generic, &generic::gemm_int4_group16},
     KT_X86_ENTRY(avx2, &avx2::gemm_int4_group16)
     KT_X86_ENTRY(avx512, &avx512::gemm_int4_group16)
     KT_X86_ENTRY(avx512_bf16, &avx512_bf16::gemm_int4_group16)
     KT_X86_ENTRY(amx, &amx::gemm_int4_group16)
     {IsaLevel::amx_emulated, &amx_emulated::gemm_int4_group16}}};

}  // namespace

WeightFormat make_int4_group16(const FormatOptions&) {
  WeightFormat f;
  f.name = "int4_group16";
  f.group = kGroup;
  f.zero_point = true;
  f.part_count = 3;
  f.parts[kCodes] = {"codes", PartType::u8, 1, kGroup, kGroup / 2};
  f.parts[kScale] = {"scale", PartType::f16, 1, kGroup, 1};
  f.parts[kZero] = {"zero", PartType::u8, 1, kGroup, 1};
  f.packed = &kPacked;
  f.dequant = &kInt4GroupsDequant;
  return f;
}

}  // namespace kt_moe
