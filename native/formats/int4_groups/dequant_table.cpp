// The int4 groups' dequantizers by ISA level (int4_groups.hpp), shared by int4_group16 and int4_kgroup.
#include "formats/int4_groups/int4_groups.hpp"

namespace kt_moe {

const DequantFormat kInt4GroupsDequant = {
    "int4 groups", false,
    {&generic::dequant_int4_groups, &avx512::dequant_int4_groups, &avx512_bf16::dequant_int4_groups,
     &avx512_bf16::dequant_int4_groups, &generic::dequant_int4_groups}};

}  // namespace kt_moe
