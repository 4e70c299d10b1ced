// The pieces of int4_kgroup's packed form (layout.hpp) that its registry entry (format.cpp) puts
// together: the packers (one per group size and zero-point choice) and the quantized GEMM of each
// ISA level, each defined in an object library compiled with that level's flags (CMakeLists.txt).
#pragma once

#include <cstdint>

#include "kernels/gemm_quant.hpp"

namespace kt_moe {

int64_t int4_kgroup_block_bytes(int k);  // pack.cpp
// Packs codes, scale (and zero with zero points) of groups of G = 64 or 128 (pack.cpp).
template <int G, bool ZeroPoint>
void int4_kgroup_pack(const MatrixParts& src, int n, int k, uint8_t* dst);

#define KT_INT4_KGROUP_GEMM void gemm_int4_kgroup(const QuantGemmArgs& args);
namespace generic {
KT_INT4_KGROUP_GEMM  // gemm_generic.cpp
}
namespace avx2 {
KT_INT4_KGROUP_GEMM  // gemm_avx2.cpp, vpmaddubsw on 0..15 codes
}
namespace avx512 {
KT_INT4_KGROUP_GEMM  // gemm_vnni.cpp, vpdpbusd emulated with AVX512-BW
}
namespace avx512_bf16 {
KT_INT4_KGROUP_GEMM  // gemm_vnni.cpp, AVX512-VNNI
}
// gemm_amx.cpp: AMX-INT8 tiles (amx_emulated: tile instructions emulated); with zero points, and for
// symmetric groups (signed tiles, a fold without the zero term)
#define KT_INT4_KGROUP_AMX_GEMMS \
  KT_INT4_KGROUP_GEMM void gemm_int4_kgroup_symmetric(const QuantGemmArgs& args);
namespace amx {
KT_INT4_KGROUP_AMX_GEMMS
}
namespace amx_emulated {
KT_INT4_KGROUP_AMX_GEMMS
}
#undef KT_INT4_KGROUP_AMX_GEMMS
#undef KT_INT4_KGROUP_GEMM

}  // namespace kt_moe
