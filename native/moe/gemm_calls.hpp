// The three shapes of bf16 GEMM call the engines make, spelled as the products they compute (the
// weights stored [out, in] as Hugging Face stores them). Thin wrappers over a GemmFn.
#pragma once

#include <cstdint>

#include "kernels/gemm_bf16.hpp"

namespace kt_moe {

// C[m, n] (+)= alpha * a[m, :] . b[n, :]   (a [M, K] mk, b stored [N, K]): tokens x weight
inline void gemm_nt(GemmFn gemm, int m, int n, int k, const bf16_t* a, int64_t lda, const bf16_t* b, int64_t ldb,
                    float* c, int64_t ldc, float alpha = 1.0f, bool accumulate = false) {
  gemm({m, n, k, a, lda, ALayout::mk, b, ldb, BLayout::nk, c, ldc, alpha, accumulate});
}

// C[m, n] (+)= alpha * sum_k a[m, k] b[k, n]   (a [M, K] mk, b stored [K, N]): the weight transposed
inline void gemm_nn(GemmFn gemm, int m, int n, int k, const bf16_t* a, int64_t lda, const bf16_t* b, int64_t ldb,
                    float* c, int64_t ldc, float alpha = 1.0f, bool accumulate = false) {
  gemm({m, n, k, a, lda, ALayout::mk, b, ldb, BLayout::kn, c, ldc, alpha, accumulate});
}

// C[m, n] = alpha * sum_k a[k, m] b[k, n]   (a stored [K, M], b stored [K, N]): a sum over rows
inline void gemm_tn(GemmFn gemm, int m, int n, int k, const bf16_t* a, int64_t lda, const bf16_t* b, int64_t ldb,
                    float* c, int64_t ldc, float alpha) {
  gemm({m, n, k, a, lda, ALayout::km, b, ldb, BLayout::kn, c, ldc, alpha, false});
}

}  // namespace kt_moe
