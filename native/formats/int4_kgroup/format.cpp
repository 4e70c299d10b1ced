// Format int4_kgroup (methods AMXINT4_KGroup_SFT, and AMXINT4 with group_size 64 or 128): the int4
// groups (formats/int4_groups) with G = 32, 64 or 128 inputs per group, with zero points or
// symmetric (no zero part). The bf16 dequantizer at every G; the packed quantized GEMM
// (layout.hpp) at G = 64 and 128, where a group covers whole 64-k units.
#include "formats/int4_kgroup/format.hpp"

#include <stdexcept>
#include <string>

#include "formats/int4_groups/int4_groups.hpp"
#include "formats/int4_kgroup/int4_kgroup.hpp"
#include "formats/int4_kgroup/layout.hpp"
#include "kernels/by_level.hpp"

namespace kt_moe {
namespace {

// The same kernels for every G (the packer and the slice alignment differ); the AMX ones of
// symmetric groups skip the zero term.
template <bool ZeroPoint>
constexpr ByLevel<QuantGemmFn> kernels() {
  return {{IsaLevel::generic, &generic::gemm_int4_kgroup},
          KT_X86_ENTRY(avx2, &avx2::gemm_int4_kgroup)
          KT_X86_ENTRY(avx512, &avx512::gemm_int4_kgroup)
          KT_X86_ENTRY(avx512_bf16, &avx512_bf16::gemm_int4_kgroup)
          KT_X86_ENTRY(amx, ZeroPoint ? &amx::gemm_int4_kgroup : &amx::gemm_int4_kgroup_symmetric)
          {IsaLevel::amx_emulated,
           ZeroPoint ? &amx_emulated::gemm_int4_kgroup : &amx_emulated::gemm_int4_kgroup_symmetric}};
}

template <int G, bool ZeroPoint>
constexpr PackedFormat packed() {
  using namespace int4_kgroup_layout;
  return {"int4_kgroup", kSumGroup, kAmxMinRows, G, &int4_kgroup_block_bytes, &int4_kgroup_pack<G, ZeroPoint>,
          kernels<ZeroPoint>()};
}
constexpr PackedFormat kPacked64 = packed<64, false>(), kPacked64Zero = packed<64, true>();
constexpr PackedFormat kPacked128 = packed<128, false>(), kPacked128Zero = packed<128, true>();

}  // namespace

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
  if (G == 64) f.packed = options.zero_point ? &kPacked64Zero : &kPacked64;
  if (G == 128) f.packed = options.zero_point ? &kPacked128Zero : &kPacked128;
  return f;
}

}  // namespace kt_moe
