// The one table from ISA level to bf16 GEMM kernel.
#include "kernels/gemm_bf16.hpp"
#include "kernels/gemm_bf16_levels.hpp"

namespace kt_moe {

GemmFn gemm_bf16_kernel(IsaLevel level) {
  switch (level) {
    case IsaLevel::generic: return &generic::gemm_bf16;
    case IsaLevel::avx512: return &avx512::gemm_bf16;
    case IsaLevel::avx512_bf16: return &avx512_bf16::gemm_bf16;
    case IsaLevel::amx:
      cpu_features();  // the probe asks Linux for the AMX tile-data permission, once per process
      return &amx::gemm_bf16;
    case IsaLevel::amx_emulated: return &amx_emulated::gemm_bf16;
  }
  return &generic::gemm_bf16;
}

}  // namespace kt_moe
