// The pieces of format int4_group16 (layout.hpp) that its registry entry (format.cpp) puts
// together: the packer and the quantized GEMM of each ISA level, each defined in an object library
// compiled with that level's flags (CMakeLists.txt, native/formats/). Its bf16 dequantizer is the
// int4 groups' one (formats/int4_groups/int4_groups.hpp), shared with int4_kgroup.
#pragma once

#include <cstdint>

#include "kernels/gemm_quant.hpp"

namespace kt_moe {

int64_t int4_group16_block_bytes(int k);                                        // pack.cpp
void int4_group16_pack(const MatrixParts& src, int n, int k, uint8_t* dst);  // pack.cpp

namespace generic {
void gemm_int4_group16(const QuantGemmArgs& args);  // gemm_generic.cpp
}
namespace avx2 {
void gemm_int4_group16(const QuantGemmArgs& args);  // gemm_avx2.cpp, vpmaddubsw on 0..15 codes
}
namespace avx512 {
void gemm_int4_group16(const QuantGemmArgs& args);  // gemm_vnni.cpp, vpdpbusd emulated with AVX512-BW
}
namespace avx512_bf16 {
void gemm_int4_group16(const QuantGemmArgs& args);  // gemm_vnni.cpp, AVX512-VNNI
}
namespace amx {
void gemm_int4_group16(const QuantGemmArgs& args);  // gemm_amx.cpp, AMX-INT8 tiles
}
namespace amx_emulated {
void gemm_int4_group16(const QuantGemmArgs& args);  // gemm_amx.cpp, tile instructions emulated
}

}  // namespace kt_moe
