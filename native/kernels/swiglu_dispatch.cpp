// The one table from ISA level to SwiGLU kernels: every AVX-512 level uses the avx512 build.
#include "kernels/swiglu.hpp"

namespace kt_moe {

SwigluKernels swiglu_kernels(IsaLevel level) {
  if (level == IsaLevel::generic || level == IsaLevel::amx_emulated)
    return {&generic::swiglu_forward, &generic::swiglu_backward};
  return {&avx512::swiglu_forward, &avx512::swiglu_backward};
}

}  // namespace kt_moe
