// The GGUF block types' dequantizers by ISA level (gguf_blocks.hpp); portable (the core library).
#include "formats/gguf/gguf_blocks.hpp"

namespace kt_moe {
namespace {

// A type's few-rows and many-rows products at the AVX-512 levels (dequant_dot.cpp,
// dequant_gemm.cpp), where it has them: index 0 avx512, 1 avx512_bf16 (also amx).
template <class Block>
struct Products {
  static constexpr DequantDotFn dot[2] = {nullptr, nullptr};
  static constexpr DequantGemmFn gemm[2] = {nullptr, nullptr};
};
#define KT_GGUF_PRODUCTS(T, t)                                                                      \
  template <>                                                                                       \
  struct Products<gguf_blocks::T> {                                                                 \
    static constexpr DequantDotFn dot[2] = {&avx512::dot_gguf_##t, &avx512_bf16::dot_gguf_##t};      \
    static constexpr DequantGemmFn gemm[2] = {&avx512::gemm_gguf_##t, &avx512_bf16::gemm_gguf_##t};  \
  };
KT_GGUF_PRODUCTS(Q8_0, q8_0)
KT_GGUF_PRODUCTS(Q4_K, q4_k)
KT_GGUF_PRODUCTS(Q5_K, q5_k)
KT_GGUF_PRODUCTS(Q6_K, q6_k)
#undef KT_GGUF_PRODUCTS

}  // namespace

#define KT_GGUF_TABLE(T, t)                                                                                 \
  const DequantFormat kGguf##T##Dequant = {                                                                 \
      "gguf_" #t,                                                                                            \
      false,                                                                                                 \
      {&generic::dequant_gguf_##t, &avx512::dequant_gguf_##t, &avx512_bf16::dequant_gguf_##t,                 \
       &avx512_bf16::dequant_gguf_##t, &generic::dequant_gguf_##t},                                          \
      {nullptr, Products<gguf_blocks::T>::dot[0], Products<gguf_blocks::T>::dot[1],                         \
       Products<gguf_blocks::T>::dot[1], nullptr},                                                          \
      {nullptr, Products<gguf_blocks::T>::gemm[0], Products<gguf_blocks::T>::gemm[1],                       \
       Products<gguf_blocks::T>::gemm[1], nullptr}};
KT_GGUF_TYPES(KT_GGUF_TABLE)
#undef KT_GGUF_TABLE

}  // namespace kt_moe
