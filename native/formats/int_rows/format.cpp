// Formats int8_rows and int4_rows (int_rows.hpp): the canonical parts of int8_channel and
// int4_group16 kept as they are, multiplied by the integer products of every level (any number of
// rows), with those formats' dequantizers for the slices the products do not take.
#include "formats/int_rows/format.hpp"

#include "formats/int4_group16/format.hpp"
#include "formats/int4_groups/int4_groups.hpp"
#include "formats/int8_channel/format.hpp"
#include "formats/int8_channel/int8_channel.hpp"
#include "formats/int_rows/int_rows.hpp"
#include "kernels/by_level.hpp"

namespace kt_moe {
namespace {

constexpr ByLevel<DequantDotFn> kInt8Products = {{IsaLevel::generic, &generic::product_int8_rows},
                                                 KT_X86_ENTRY(avx2, &avx2::product_int8_rows)};
constexpr ByLevel<DequantDotFn> kInt4Products = {{IsaLevel::generic, &generic::product_int4_rows},
                                                 KT_X86_ENTRY(avx2, &avx2::product_int4_rows)};

const DequantFormat kInt8RowsDequant = {"int8_rows", true, kInt8ChannelDequant.kernels, kInt8Products,
                                        kInt8Products};
const DequantFormat kInt4RowsDequant = {"int4_rows", false, kInt4GroupsDequant.kernels, kInt4Products,
                                        kInt4Products};

}  // namespace

WeightFormat make_int8_rows(const FormatOptions& options) {
  WeightFormat f = make_int8_channel(options);
  f.name = "int8_rows";
  f.packed = nullptr;
  f.dequant = &kInt8RowsDequant;
  return f;
}

WeightFormat make_int4_rows(const FormatOptions& options) {
  WeightFormat f = make_int4_group16(options);
  f.name = "int4_rows";
  f.packed = nullptr;
  f.dequant = &kInt4RowsDequant;
  return f;
}

}  // namespace kt_moe
