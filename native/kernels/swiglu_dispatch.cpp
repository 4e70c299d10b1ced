// The one table from ISA level to SwiGLU kernels.
#include "kernels/by_level.hpp"
#include "kernels/swiglu.hpp"

namespace kt_moe {

namespace {

constexpr ByLevel<SwigluKernels> kSwiglu = {
    {IsaLevel::generic, {&generic::swiglu_forward, &generic::swiglu_backward}},
    KT_X86_ENTRY(avx2, {&avx2::swiglu_forward, &avx2::swiglu_backward})
    KT_X86_ENTRY(avx512, {&avx512::swiglu_forward, &avx512::swiglu_backward})
};

}  // namespace

SwigluKernels swiglu_kernels(IsaLevel level) { return kSwiglu.at(level); }

}  // namespace kt_moe
