// The GGUF block types' dequantizers by ISA level (gguf_blocks.hpp); portable (the core library).
#include "formats/gguf/gguf_blocks.hpp"

namespace kt_moe {
namespace {

// The AVX-512 levels' few-rows product of a type, where it has one (dequant_dot.cpp).
template <class Block>
struct DotFns {
  static constexpr DequantDotFn avx512 = nullptr, avx512_bf16 = nullptr;
};
template <>
struct DotFns<gguf_blocks::Q8_0> {
  static constexpr DequantDotFn avx512 = &avx512::dot_gguf_q8_0, avx512_bf16 = &avx512_bf16::dot_gguf_q8_0;
};
template <>
struct DotFns<gguf_blocks::Q4_K> {
  static constexpr DequantDotFn avx512 = &avx512::dot_gguf_q4_k, avx512_bf16 = &avx512_bf16::dot_gguf_q4_k;
};
template <>
struct DotFns<gguf_blocks::Q6_K> {
  static constexpr DequantDotFn avx512 = &avx512::dot_gguf_q6_k, avx512_bf16 = &avx512_bf16::dot_gguf_q6_k;
};

// The AVX-512 levels' many-rows product of a type, where it has one (dequant_gemm.cpp).
template <class Block>
struct GemmFns {
  static constexpr DequantGemmFn avx512 = nullptr, avx512_bf16 = nullptr;
};
template <>
struct GemmFns<gguf_blocks::Q8_0> {
  static constexpr DequantGemmFn avx512 = &avx512::gemm_gguf_q8_0, avx512_bf16 = &avx512_bf16::gemm_gguf_q8_0;
};
template <>
struct GemmFns<gguf_blocks::Q4_K> {
  static constexpr DequantGemmFn avx512 = &avx512::gemm_gguf_q4_k, avx512_bf16 = &avx512_bf16::gemm_gguf_q4_k;
};
template <>
struct GemmFns<gguf_blocks::Q6_K> {
  static constexpr DequantGemmFn avx512 = &avx512::gemm_gguf_q6_k, avx512_bf16 = &avx512_bf16::gemm_gguf_q6_k;
};

}  // namespace

#define KT_GGUF_TABLE(T, t)                                                                                 \
  const DequantFormat kGguf##T##Dequant = {                                                                 \
      "gguf_" #t,                                                                                            \
      false,                                                                                                 \
      {&generic::dequant_gguf_##t, &avx512::dequant_gguf_##t, &avx512_bf16::dequant_gguf_##t,                 \
       &avx512_bf16::dequant_gguf_##t, &generic::dequant_gguf_##t},                                          \
      {nullptr, DotFns<gguf_blocks::T>::avx512, DotFns<gguf_blocks::T>::avx512_bf16,                         \
       DotFns<gguf_blocks::T>::avx512_bf16, nullptr},                                                      \
      {nullptr, GemmFns<gguf_blocks::T>::avx512, GemmFns<gguf_blocks::T>::avx512_bf16,                       \
       GemmFns<gguf_blocks::T>::avx512_bf16, nullptr}};
KT_GGUF_TYPES(KT_GGUF_TABLE)
#undef KT_GGUF_TABLE

}  // namespace kt_moe
