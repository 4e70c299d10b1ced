// The bf16 GEMM entry of each ISA level (contract: gemm_bf16.hpp). Each is defined in its own
// object library compiled with that level's flags; gemm_bf16_dispatch.cpp is the only caller.
#pragma once

#include "kernels/gemm_bf16.hpp"

namespace kt_moe {
namespace generic {
void gemm_bf16(const GemmArgs& args);  // gemm_bf16_generic.cpp, no ISA flags
}
namespace avx2 {
void gemm_bf16(const GemmArgs& args);  // gemm_bf16_generic.cpp, AVX2 + FMA flags
}
namespace avx512 {
void gemm_bf16(const GemmArgs& args);  // gemm_bf16_generic.cpp, AVX-512 F/BW/VL/DQ flags
}
namespace avx512_bf16 {
void gemm_bf16(const GemmArgs& args);  // gemm_bf16_avx512bf16.cpp
}
namespace amx {
void gemm_bf16(const GemmArgs& args);  // gemm_bf16_amx.cpp, AMX intrinsics
}
namespace amx_emulated {
void gemm_bf16(const GemmArgs& args);  // gemm_bf16_amx.cpp, tile instructions emulated, no ISA flags
}
}  // namespace kt_moe
