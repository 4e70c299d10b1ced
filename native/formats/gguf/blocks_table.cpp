// The GGUF block types' dequantizers by ISA level (gguf_blocks.hpp); portable (the core library).
#include "formats/gguf/gguf_blocks.hpp"

namespace kt_moe {

#define KT_GGUF_TABLE(T, t)                                                                                 \
  const DequantFormat kGguf##T##Dequant = {                                                                 \
      "gguf_" #t,                                                                                            \
      false,                                                                                                 \
      {&generic::dequant_gguf_##t, &avx512::dequant_gguf_##t, &avx512_bf16::dequant_gguf_##t,                 \
       &avx512_bf16::dequant_gguf_##t, &generic::dequant_gguf_##t},                                          \
      {}};
KT_GGUF_TYPES(KT_GGUF_TABLE)
#undef KT_GGUF_TABLE

}  // namespace kt_moe
