// Format int8_channel (layout.hpp): its canonical parts and kernel families, by ISA level.
#include "formats/int8_channel/format.hpp"

#include "formats/int8_channel/int8_channel.hpp"
#include "formats/int8_channel/layout.hpp"
#include "kernels/by_level.hpp"

namespace kt_moe {
namespace {

const PackedFormat kPacked = {
    "int8_channel", int8_channel_layout::kSumGroup, int8_channel_layout::kAmxMinRows, 1,
    &int8_channel_block_bytes, &int8_channel_pack,
    {{IsaLevel::generic, &generic::gemm_int8_channel},
     KT_X86_ENTRY(avx2, &avx2::gemm_int8_channel)
     KT_X86_ENTRY(avx512, &avx512::gemm_int8_channel)
     KT_X86_ENTRY(avx512_bf16, &avx512_bf16::gemm_int8_channel)
     KT_X86_ENTRY(amx, &amx::gemm_int8_channel)
     {IsaLevel::amx_emulated, &amx_emulated::gemm_int8_channel}}};

}  // namespace

// D = q (exact); the products apply the row scale. At the AMX levels the many-rows products take
// the int8 rows into the tiles instead (gemm_stored_amx.cpp, gemm_stored_nn_amx.cpp).
const DequantFormat kInt8ChannelDequant = {
    "int8_channel", true,
    {{IsaLevel::generic, &generic::dequant_int8_channel},
     KT_X86_ENTRY(avx2, &avx2::dequant_int8_channel)
     KT_X86_ENTRY(avx512, &avx512::dequant_int8_channel)
     KT_X86_ENTRY(avx512_bf16, &avx512_bf16::dequant_int8_channel)},
    {},
    {KT_X86_ENTRY(amx, &amx::gemm_stored_int8_channel)
     {IsaLevel::amx_emulated, &amx_emulated::gemm_stored_int8_channel}},
    {KT_X86_ENTRY(amx, &amx::gemm_stored_nn_int8_channel)
     {IsaLevel::amx_emulated, &amx_emulated::gemm_stored_nn_int8_channel}}};

WeightFormat make_int8_channel(const FormatOptions&) {
  WeightFormat f;
  f.name = "int8_channel";
  f.part_count = 2;
  f.parts[int8_channel_layout::kQ] = {"q", PartType::i8, 1, 1, 1};
  f.parts[int8_channel_layout::kScale] = {"scale", PartType::f32, 1, 0, 1};
  f.packed = &kPacked;
  f.dequant = &kInt8ChannelDequant;
  return f;
}

}  // namespace kt_moe
