// The quantized GEMM entry and the activation quantizer of each ISA level (contract:
// gemm_quant.hpp). Each is defined in an object library compiled with that level's flags;
// gemm_quant_dispatch.cpp is the only caller.
#pragma once

#include "kernels/gemm_quant.hpp"

namespace kt_moe {
namespace generic {
void gemm_quant(const QuantGemmArgs& args);            // gemm_quant_generic.cpp, no ISA flags
void quantize_activations(const QuantizeArgs& args);  // quant_activations.cpp, no ISA flags
}  // namespace generic
namespace avx512 {
void gemm_quant(const QuantGemmArgs& args);            // gemm_quant_vnni.cpp, vpdpbusd emulated with AVX512-BW
void quantize_activations(const QuantizeArgs& args);  // quant_activations.cpp, AVX-512 F/BW/VL/DQ flags
}  // namespace avx512
namespace avx512_bf16 {
void gemm_quant(const QuantGemmArgs& args);  // gemm_quant_vnni.cpp, AVX512-VNNI vpdpbusd
}
namespace amx {
void gemm_quant(const QuantGemmArgs& args);  // gemm_quant_amx.cpp, AMX-INT8 tiles
}
namespace amx_emulated {
void gemm_quant(const QuantGemmArgs& args);  // gemm_quant_amx.cpp, tile instructions emulated, no ISA flags
}
}  // namespace kt_moe
