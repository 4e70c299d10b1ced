// The one table from ISA level to bf16 GEMM kernel.
#include "kernels/by_level.hpp"
#include "kernels/gemm_bf16.hpp"
#include "kernels/gemm_bf16_levels.hpp"

namespace kt_moe {

namespace {

constexpr ByLevel<GemmFn> kGemmBf16 = {
    {IsaLevel::generic, &generic::gemm_bf16},
    KT_X86_ENTRY(avx2, &avx2::gemm_bf16)
    KT_X86_ENTRY(avx512, &avx512::gemm_bf16)
    KT_X86_ENTRY(avx512_bf16, &avx512_bf16::gemm_bf16)
    KT_X86_ENTRY(amx, &amx::gemm_bf16)
    {IsaLevel::amx_emulated, &amx_emulated::gemm_bf16},
};

}  // namespace

GemmFn gemm_bf16_kernel(IsaLevel level) {
  if (level == IsaLevel::amx) cpu_features();  // the probe asks Linux for the AMX tile-data permission, once
  return kGemmBf16.at(level);
}

}  // namespace kt_moe
