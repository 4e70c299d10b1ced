// The activation quantizer of each ISA level that has its own (contract: gemm_quant.hpp), defined
// in an object library compiled with that level's flags; gemm_quant_dispatch.cpp is the only
// caller. The products are the formats' (native/formats/*/).
#pragma once

#include "kernels/gemm_quant.hpp"

namespace kt_moe {
namespace generic {
void quantize_activations(const QuantizeArgs& args);  // quant_activations.cpp, no ISA flags
}  // namespace generic
namespace avx2 {
void quantize_activations(const QuantizeArgs& args);  // quant_activations.cpp, AVX2 + FMA flags
}  // namespace avx2
namespace avx512 {
void quantize_activations(const QuantizeArgs& args);  // quant_activations.cpp, AVX-512 F/BW/VL/DQ flags
}  // namespace avx512
}  // namespace kt_moe
