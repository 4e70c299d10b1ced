// The GGUF block types' dequantizers by ISA level (gguf_blocks.hpp); portable (the core library).
#include "formats/gguf/gguf_blocks.hpp"
#include "kernels/by_level.hpp"

namespace kt_moe {
namespace {

// A type's few-rows and many-rows products at avx2 and the AVX-512 levels (dequant_dot.cpp,
// dequant_gemm.cpp), where it has them.
template <class Block>
struct Products {
  static constexpr ByLevel<DequantDotFn> dot = {};
  static constexpr ByLevel<DequantGemmFn> gemm = {};
};
#define KT_GGUF_PRODUCTS(T, t)                                                                            \
  template <>                                                                                             \
  struct Products<gguf_blocks::T> {                                                                       \
    static constexpr ByLevel<DequantDotFn> dot = {KT_X86_ENTRY(avx2, &avx2::dot_gguf_##t)                 \
                                                  KT_X86_ENTRY(avx512, &avx512::dot_gguf_##t)             \
                                                  KT_X86_ENTRY(avx512_bf16, &avx512_bf16::dot_gguf_##t)};   \
    static constexpr ByLevel<DequantGemmFn> gemm = {KT_X86_ENTRY(avx2, &avx2::gemm_gguf_##t)              \
                                                    KT_X86_ENTRY(avx512, &avx512::gemm_gguf_##t)          \
                                                    KT_X86_ENTRY(avx512_bf16, &avx512_bf16::gemm_gguf_##t)}; \
  };
KT_GGUF_PRODUCTS(Q8_0, q8_0)
KT_GGUF_PRODUCTS(Q4_K, q4_k)
KT_GGUF_PRODUCTS(Q5_K, q5_k)
KT_GGUF_PRODUCTS(Q6_K, q6_k)
#undef KT_GGUF_PRODUCTS

}  // namespace

#define KT_GGUF_TABLE(T, t)                                                                          \
  const DequantFormat kGguf##T##Dequant = {"gguf_" #t,                                               \
                                           false,                                                    \
                                           {{IsaLevel::generic, &generic::dequant_gguf_##t},         \
                                            KT_X86_ENTRY(avx2, &avx2::dequant_gguf_##t)               \
                                            KT_X86_ENTRY(avx512, &avx512::dequant_gguf_##t)           \
                                            KT_X86_ENTRY(avx512_bf16, &avx512_bf16::dequant_gguf_##t)}, \
                                           Products<gguf_blocks::T>::dot,                            \
                                           Products<gguf_blocks::T>::gemm};
KT_GGUF_TYPES(KT_GGUF_TABLE)
#undef KT_GGUF_TABLE

}  // namespace kt_moe
