// The GGUF block formats (gguf_blocks.hpp): one part, `blocks`, uint8 [N, K / QK * Bytes]; units of one
// row x QK columns (a block), so a tensor-parallel slice keeps the whole blocks covering its columns.
// No options.
#include "formats/gguf/format.hpp"

#include <stdexcept>
#include <string>

#include "formats/gguf/gguf_blocks.hpp"

namespace kt_moe {
namespace {

template <class Block>
WeightFormat gguf_format(const char* name, const DequantFormat& dequant, const FormatOptions& options) {
  if (options.group_size != 0 || options.zero_point)
    throw std::invalid_argument(std::string(name) + " takes no options (its blocks are " + std::to_string(Block::QK) +
                                " weights)");
  WeightFormat f;
  f.name = name;
  f.group = Block::QK;
  f.part_count = 1;
  f.parts[0] = {"blocks", PartType::u8, 1, Block::QK, Block::Bytes};
  f.dequant = &dequant;
  return f;
}

}  // namespace

WeightFormat make_gguf_q8_0(const FormatOptions& o) { return gguf_format<gguf_blocks::Q8_0>("gguf_q8_0", kGgufQ8_0Dequant, o); }
WeightFormat make_gguf_q4_0(const FormatOptions& o) { return gguf_format<gguf_blocks::Q4_0>("gguf_q4_0", kGgufQ4_0Dequant, o); }
WeightFormat make_gguf_q4_1(const FormatOptions& o) { return gguf_format<gguf_blocks::Q4_1>("gguf_q4_1", kGgufQ4_1Dequant, o); }
WeightFormat make_gguf_q5_0(const FormatOptions& o) { return gguf_format<gguf_blocks::Q5_0>("gguf_q5_0", kGgufQ5_0Dequant, o); }
WeightFormat make_gguf_q5_1(const FormatOptions& o) { return gguf_format<gguf_blocks::Q5_1>("gguf_q5_1", kGgufQ5_1Dequant, o); }

}  // namespace kt_moe
