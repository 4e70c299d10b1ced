// Format fp8 (layout.hpp): scale blocks of b x b (b = options.group_size > 0) or a scale per output
// row (b = 0), read through the bf16 dequantizer and, for a few rows (the decode), the fused product
// (no packed GEMM: the inference engine multiplies by dequantized row blocks).
#include "formats/fp8/format.hpp"

#include <stdexcept>
#include <string>

#include "formats/fp8/fp8.hpp"
#include "formats/fp8/layout.hpp"
#include "kernels/by_level.hpp"

namespace kt_moe {
namespace {

const DequantFormat kBlockDequant = {
    "fp8 blocks", false,
    {{IsaLevel::generic, &generic::dequant_fp8_block},
     KT_X86_ENTRY(avx2, &avx2::dequant_fp8_block)
     KT_X86_ENTRY(avx512, &avx512::dequant_fp8_block)
     KT_X86_ENTRY(avx512_bf16, &avx512_bf16::dequant_fp8_block)},
    {{IsaLevel::generic, &generic::dot_fp8_block},
     KT_X86_ENTRY(avx2, &avx2::dot_fp8_block)
     KT_X86_ENTRY(avx512, &avx512::dot_fp8_block)
     KT_X86_ENTRY(avx512_bf16, &avx512_bf16::dot_fp8_block)},
    {}};

// D = the fp8 value (exact); the products apply the row scale.
const DequantFormat kChannelDequant = {
    "fp8 channels", true,
    {{IsaLevel::generic, &generic::dequant_fp8_channel},
     KT_X86_ENTRY(avx2, &avx2::dequant_fp8_channel)
     KT_X86_ENTRY(avx512, &avx512::dequant_fp8_channel)
     KT_X86_ENTRY(avx512_bf16, &avx512_bf16::dequant_fp8_channel)},
    {{IsaLevel::generic, &generic::dot_fp8_channel},
     KT_X86_ENTRY(avx2, &avx2::dot_fp8_channel)
     KT_X86_ENTRY(avx512, &avx512::dot_fp8_channel)
     KT_X86_ENTRY(avx512_bf16, &avx512_bf16::dot_fp8_channel)},
    {}};

constexpr int kMaxBlock = 1 << 16;

}  // namespace

WeightFormat make_fp8(const FormatOptions& options) {
  const int b = options.group_size;
  if (b < 0 || b > kMaxBlock)
    throw std::invalid_argument("fp8: the scale block side must be in [1, " + std::to_string(kMaxBlock) +
                                "] (or 0: one scale per output row), got " + std::to_string(b));
  using namespace fp8_layout;
  WeightFormat f;
  f.name = "fp8";
  f.group = b;
  f.part_count = 2;
  f.parts[kWeight] = {"weight", PartType::f8_e4m3, 1, 1, 1};
  if (b > 0) {
    f.parts[kScale] = {"weight_scale_inv", PartType::f32, b, b, 1};
    f.dequant = &kBlockDequant;
  } else {
    f.parts[kScale] = {"weight_scale", PartType::f32, 1, 0, 1};
    f.dequant = &kChannelDequant;
  }
  return f;
}

}  // namespace kt_moe
