// The GGUF block types' dequantizers by ISA level (gguf_blocks.hpp); portable (the core library).
#include "formats/gguf/gguf_blocks.hpp"

namespace kt_moe {

#define KT_GGUF_TABLE(table, fn)                                                                          \
  const DequantFormat table = {#fn, false,                                                               \
                               {&generic::fn, &avx512::fn, &avx512_bf16::fn, &avx512_bf16::fn, &generic::fn}, \
                               {}};
KT_GGUF_TABLE(kGgufQ8_0Dequant, dequant_gguf_q8_0)
KT_GGUF_TABLE(kGgufQ4_0Dequant, dequant_gguf_q4_0)
KT_GGUF_TABLE(kGgufQ4_1Dequant, dequant_gguf_q4_1)
KT_GGUF_TABLE(kGgufQ5_0Dequant, dequant_gguf_q5_0)
KT_GGUF_TABLE(kGgufQ5_1Dequant, dequant_gguf_q5_1)
#undef KT_GGUF_TABLE

}  // namespace kt_moe
