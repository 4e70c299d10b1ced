// The pieces of format int8_channel (layout.hpp) that its registry entry (format.cpp) puts
// together: the packer and the quantized GEMM and bf16 dequantizer of each ISA level, each defined
// in an object library compiled with that level's flags (CMakeLists.txt, native/formats/).
#pragma once

#include <cstdint>

#include "kernels/dequant_bf16.hpp"
#include "kernels/gemm_quant.hpp"

namespace kt_moe {

int64_t int8_channel_block_bytes(int k);                                        // pack.cpp
void int8_channel_pack(const MatrixParts& src, int n, int k, uint8_t* dst);  // pack.cpp

namespace generic {
void gemm_int8_channel(const QuantGemmArgs& args);  // gemm_generic.cpp
void dequant_int8_channel(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld);
}  // namespace generic
namespace avx2 {
void gemm_int8_channel(const QuantGemmArgs& args);  // gemm_avx2.cpp, vpmaddwd on 16-bit words
void dequant_int8_channel(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld);
}  // namespace avx2
namespace avx512 {
void gemm_int8_channel(const QuantGemmArgs& args);  // gemm_vnni.cpp, vpdpbusd emulated with AVX512-BW
void dequant_int8_channel(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld);
}  // namespace avx512
namespace avx512_bf16 {
void gemm_int8_channel(const QuantGemmArgs& args);  // gemm_vnni.cpp, AVX512-VNNI
void dequant_int8_channel(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld);
}  // namespace avx512_bf16
namespace amx {
void gemm_int8_channel(const QuantGemmArgs& args);  // gemm_amx.cpp, AMX-INT8 tiles
// gemm_stored_amx.cpp, gemm_stored_nn_amx.cpp: the products from the stored rows (a DequantGemmFn,
// a DequantGemmNnFn)
bool gemm_stored_int8_channel(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda,
                              float* c, int64_t ldc);
bool gemm_stored_nn_int8_channel(const QuantMatrixView& w, int m, int j0, int j1, const bf16_t* a, int64_t lda,
                                 float* c, int64_t ldc, bool accumulate);
}  // namespace amx
namespace amx_emulated {
void gemm_int8_channel(const QuantGemmArgs& args);  // gemm_amx.cpp, tile instructions emulated
bool gemm_stored_int8_channel(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda,
                              float* c, int64_t ldc);  // gemm_stored_amx.cpp
bool gemm_stored_nn_int8_channel(const QuantMatrixView& w, int m, int j0, int j1, const bf16_t* a, int64_t lda,
                                 float* c, int64_t ldc, bool accumulate);  // gemm_stored_nn_amx.cpp
}  // namespace amx_emulated

// The bf16 dequantizers by level (format.cpp).
extern const DequantFormat kInt8ChannelDequant;

}  // namespace kt_moe
