// The GGUF block types' bf16 dequantizers (gguf_blocks.hpp): each covered block decoded to fp32 as
// its layout defines, the requested columns rounded once to bf16. Portable C++, compiled for the
// generic, avx512 and avx512_bf16 levels alike (the compiler vectorizes the decode loops).
#include <algorithm>
#include <cstdint>

#include "formats/gguf/gguf_blocks.hpp"
#include "kernels/bf16.hpp"
#include "kernels/dequant_rows.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

// Row r, columns [c0, c1) (stored columns col0 + c): whole blocks decoded, the covered part copied.
template <class Block>
void gguf_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const uint8_t* row = w.values + r * w.ld_values;
  float block[Block::QK];
  for (int j = w.col0 + c0, end = w.col0 + c1; j < end;) {
    const int b = j / Block::QK, first = j - b * Block::QK, count = std::min(Block::QK - first, end - j);
    Block::decode(row + size_t(b) * Block::Bytes, block);
    for (int i = 0; i < count; ++i) dst[j - w.col0 - c0 + i] = float_to_bf16(block[first + i]);
    j += count;
  }
}

}  // namespace

#define KT_GGUF_DEQUANT(T, t)                                                                              \
  void dequant_gguf_##t(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld) { \
    dequant_rows<gguf_row<gguf_blocks::T>>(w, r0, r1, c0, c1, dst, ld);                                    \
  }
KT_GGUF_TYPES(KT_GGUF_DEQUANT)
#undef KT_GGUF_DEQUANT

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
