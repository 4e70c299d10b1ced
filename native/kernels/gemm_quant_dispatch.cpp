// The table from ISA level to quantized GEMM kernel and activation quantizer.
//   generic       gemm_quant_generic.cpp; quantizer quant_activations.cpp (no flags)
//   avx512        gemm_quant_vnni.cpp with vpdpbusd emulated by AVX512-BW; quantizer (AVX-512 build)
//   avx512_bf16   gemm_quant_vnni.cpp with vpdpbusd
//   amx           few rows: the avx512_bf16 kernel, since a tile would hold a few of its 16 rows and
//                 the decode is bound by memory, not by the dot products; from quant_amx_min_rows() on:
//                 gemm_quant_amx.cpp on the AMX instructions. Measured with bench/bench_qgemm.py on
//                 [m, 2048] x [1408, 2048] (weights from memory, 1 thread, Sapphire Rapids class):
//                 INT8 tiles win from 5 rows (8 rows: 0.32 vs 0.38 ms); INT4 tiles only from 24
//                 (they requantize each 64-k unit of a block to int8 first, ~0.35 ms per call
//                 whatever m is: 16 rows 0.47 vs 0.44 ms, 20 rows 0.61 vs 0.54 ms, 24 rows 0.62 vs
//                 0.62 ms, 32 rows 0.62 vs 0.80 ms).
//   amx_emulated  gemm_quant_amx.cpp on the emulated tiles for every m (so that tests run the tile
//                 code on every shape); the generic quantizer (it must run on any CPU)
#include "kernels/gemm_quant.hpp"
#include "kernels/gemm_quant_levels.hpp"

namespace kt_moe {

int quant_amx_min_rows(QuantFormat format) { return format == QuantFormat::int8_channel ? 5 : 24; }

namespace {

void gemm_quant_amx_or_vnni(const QuantGemmArgs& args) {
  if (args.m < quant_amx_min_rows(args.w.format))
    avx512_bf16::gemm_quant(args);
  else
    amx::gemm_quant(args);
}

}  // namespace

QuantGemmFn gemm_quant_kernel(IsaLevel level) {
  switch (level) {
    case IsaLevel::generic: return &generic::gemm_quant;
    case IsaLevel::avx512: return &avx512::gemm_quant;
    case IsaLevel::avx512_bf16: return &avx512_bf16::gemm_quant;
    case IsaLevel::amx:
      cpu_features();  // the probe asks Linux for the AMX tile-data permission, once per process
      return &gemm_quant_amx_or_vnni;
    case IsaLevel::amx_emulated: return &amx_emulated::gemm_quant;
  }
  return &generic::gemm_quant;
}

QuantizeFn quantize_activations_kernel(IsaLevel level) {
  switch (level) {
    case IsaLevel::avx512:
    case IsaLevel::avx512_bf16:
    case IsaLevel::amx: return &avx512::quantize_activations;
    case IsaLevel::generic:
    case IsaLevel::amx_emulated: return &generic::quantize_activations;
  }
  return &generic::quantize_activations;
}

}  // namespace kt_moe
