// The quantized GEMM of an ISA level for whatever format the call's weight has (its PackedFormat's
// kernel of that level), and the activation quantizer of each level.
//   generic       the format's portable kernel; quantizer quant_activations.cpp (no flags)
//   avx2          the format's AVX2 kernel (vpmaddwd / vpmaddubsw); quantizer (AVX2 build)
//   avx512        the format's VNNI kernel with vpdpbusd emulated by AVX512-BW; quantizer (AVX-512 build)
//   avx512_bf16   the format's VNNI kernel with vpdpbusd
//   amx           few rows: the format's avx512_bf16 kernel, since a tile would hold a few of its 16
//                 rows and the decode is bound by memory, not by the dot products; from the format's
//                 amx_min_rows on: its AMX kernel. Measured with bench/bench_qgemm.py on [m, 2048] x
//                 [1408, 2048] (weights from memory, 1 thread, Sapphire Rapids class): int8_channel
//                 tiles win from 5 rows (8 rows: 0.32 vs 0.38 ms); int4_group16 tiles only from 24
//                 (they requantize each 64-k unit of a block to int8 first, ~0.35 ms per call whatever
//                 m is: 16 rows 0.47 vs 0.44 ms, 20 rows 0.61 vs 0.54 ms, 24 rows 0.62 vs 0.62 ms, 32
//                 rows 0.62 vs 0.80 ms).
//   amx_emulated  the format's AMX kernel on the emulated tiles for every m (so that tests run the
//                 tile code on every shape); the generic quantizer (it must run on any CPU)
// A level a format or the quantizer has no kernel of its own at takes its fallback level's
// (cpu/isa_levels.def, kernels/by_level.hpp).
#include <stdexcept>
#include <string>

#include "kernels/by_level.hpp"
#include "kernels/gemm_quant.hpp"
#include "kernels/gemm_quant_levels.hpp"
#include "kernels/quant_checks.hpp"

namespace kt_moe {

namespace {

QuantGemmFn format_kernel(const QuantGemmArgs& args, IsaLevel level) {
  if (!args.w.format) quant_fail("the weight has no format");
  const QuantGemmFn kernel = args.w.format->kernels.at(level);
  if (!kernel)
    quant_fail(std::string("format ") + args.w.format->name + " has no kernel at ISA level " + isa_level_name(level));
  return kernel;
}

template <IsaLevel Level>
void gemm_at_level(const QuantGemmArgs& args) {
  format_kernel(args, Level)(args);
}

void gemm_amx_or_vnni(const QuantGemmArgs& args) {
  const bool few_rows = args.w.format && args.m < args.w.format->amx_min_rows;
  format_kernel(args, few_rows ? IsaLevel::avx512_bf16 : IsaLevel::amx)(args);
}

constexpr QuantGemmFn kGemmAtLevel[kIsaLevelCount] = {
#define KT_ISA_LEVEL(name, fallback, automatic, flags, requirement) &gemm_at_level<IsaLevel::name>,
#include "cpu/isa_levels.def"
#undef KT_ISA_LEVEL
};

constexpr ByLevel<QuantizeFn> kQuantize = {
    {IsaLevel::generic, &generic::quantize_activations},
    KT_X86_ENTRY(avx2, &avx2::quantize_activations)
    KT_X86_ENTRY(avx512, &avx512::quantize_activations)
};

}  // namespace

QuantGemmFn gemm_quant_kernel(IsaLevel level) {
  if (level != IsaLevel::amx) return kGemmAtLevel[int(level)];
  cpu_features();  // the probe asks Linux for the AMX tile-data permission, once per process
  return &gemm_amx_or_vnni;
}

QuantizeFn quantize_activations_kernel(IsaLevel level) { return kQuantize.at(level); }

}  // namespace kt_moe
