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

#define KT_GGUF_MAKE(T, t)                                                                \
  WeightFormat make_gguf_##t(const FormatOptions& options) {                                \
    return gguf_format<gguf_blocks::T>("gguf_" #t, kGguf##T##Dequant, options);            \
  }
KT_GGUF_TYPES(KT_GGUF_MAKE)
#undef KT_GGUF_MAKE

}  // namespace kt_moe
