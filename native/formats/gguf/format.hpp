// The registry entries of the GGUF block formats (formats/registry.cpp, gguf_blocks.hpp): the
// formats LLAMAFILE keeps each matrix of a GGUF file in, chosen per matrix (MOEConfig.matrix_formats).
#pragma once

#include "formats/gguf/gguf_blocks.hpp"
#include "formats/weight_format.hpp"

namespace kt_moe {

#define KT_GGUF_MAKE_DECLARATION(T, t) WeightFormat make_gguf_##t(const FormatOptions& options);
KT_GGUF_TYPES(KT_GGUF_MAKE_DECLARATION)
#undef KT_GGUF_MAKE_DECLARATION

// The registry's entries, one per type (no methods: LLAMAFILE takes them from MOEConfig.matrix_formats).
#define KT_GGUF_REGISTRY_ENTRY(T, t) {"gguf_" #t, {}, {}, {}, {}, &make_gguf_##t, {}},

}  // namespace kt_moe
