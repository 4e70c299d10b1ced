// The registry entries of the GGUF block formats (formats/registry.cpp, gguf_blocks.hpp): the
// formats LLAMAFILE keeps each matrix of a GGUF file in, chosen per matrix (MOEConfig.matrix_formats).
#pragma once

#include "formats/weight_format.hpp"

namespace kt_moe {

WeightFormat make_gguf_q8_0(const FormatOptions& options);
WeightFormat make_gguf_q4_0(const FormatOptions& options);
WeightFormat make_gguf_q4_1(const FormatOptions& options);
WeightFormat make_gguf_q5_0(const FormatOptions& options);
WeightFormat make_gguf_q5_1(const FormatOptions& options);

}  // namespace kt_moe
