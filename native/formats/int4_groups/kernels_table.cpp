// The int4 groups' dequantizers by ISA level (int4_groups.hpp): fp16 scales (int4_group16, int4_kgroup)
// and bf16 scales (int4_packed); and their quantizer.
#include "formats/int4_groups/int4_groups.hpp"
#include "kernels/by_level.hpp"

namespace kt_moe {

const DequantFormat kInt4GroupsDequant = {
    "int4 groups", false,
    {{IsaLevel::generic, &generic::dequant_int4_groups},
     KT_X86_ENTRY(avx2, &avx2::dequant_int4_groups)
     KT_X86_ENTRY(avx512, &avx512::dequant_int4_groups)
     KT_X86_ENTRY(avx512_bf16, &avx512_bf16::dequant_int4_groups)},
    {},
    {}};

const DequantFormat kInt4GroupsBf16Dequant = {
    "int4 groups, bf16 scales", false,
    {{IsaLevel::generic, &generic::dequant_int4_groups_bf16},
     KT_X86_ENTRY(avx2, &avx2::dequant_int4_groups_bf16)
     KT_X86_ENTRY(avx512, &avx512::dequant_int4_groups_bf16)
     KT_X86_ENTRY(avx512_bf16, &avx512_bf16::dequant_int4_groups_bf16)},
    {KT_X86_ENTRY(avx2, &avx2::dot_int4_groups_bf16)
     KT_X86_ENTRY(avx512_bf16, &avx512_bf16::dot_int4_groups_bf16)},
    {}};

namespace {
constexpr ByLevel<Int4QuantizeFn> kInt4Quantizer = {{IsaLevel::generic, &generic::quantize_int4_rows},
                                                    KT_X86_ENTRY(avx2, &avx2::quantize_int4_rows)
                                                    KT_X86_ENTRY(avx512, &avx512::quantize_int4_rows)};
}  // namespace

Int4QuantizeFn int4_quantizer(IsaLevel level) { return kInt4Quantizer.at(level); }

}  // namespace kt_moe
