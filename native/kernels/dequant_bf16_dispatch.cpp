// The one table from ISA level to dequantizer.
#include "kernels/dequant_bf16.hpp"

namespace kt_moe {

DequantFn dequant_bf16_kernel(IsaLevel level) {
  switch (level) {
    case IsaLevel::generic:
    case IsaLevel::amx_emulated: return &generic::dequant_bf16;
    case IsaLevel::avx512: return &avx512::dequant_bf16;
    case IsaLevel::avx512_bf16:
    case IsaLevel::amx: return &avx512_bf16::dequant_bf16;
  }
  return &generic::dequant_bf16;
}

}  // namespace kt_moe
