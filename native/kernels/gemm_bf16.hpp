// The bf16 GEMM family every engine uses, behind one entry per ISA level: the forward products
// (weights stored [N, K] as Hugging Face stores them), the backward's transposed products
// (weights read as [K, N]) and the thin LoRA products and gradients (A read as [K, M]).
// Inputs are bf16, accumulation and output fp32. Each call is single-threaded: the engines
// parallelise over experts and blocks and call these from the worker threads. The avx512_bf16 and
// amx levels (amx_emulated too) keep their instructions' DAZ/FTZ: bf16 denormal inputs count as
// zero and denormal fp32 results become zero; generic and avx512 keep denormals.
#pragma once

#include <cstdint>

#include "cpu/cpu_features.hpp"

namespace kt_moe {

using bf16_t = uint16_t;  // raw bfloat16 bits (the upper half of an IEEE fp32)

// How A's element a(m, k) is stored: mk: A[m * lda + k] (row-major [M, K]);
// km: A[k * lda + m] (row-major [K, M], i.e. A transposed).
enum class ALayout { mk, km };
// How B's element b(k, n) is stored: nk: B[n * ldb + k] (row-major [N, K], a weight as stored);
// kn: B[k * ldb + n] (row-major [K, N]).
enum class BLayout { nk, kn };

// C[m, n] = (accumulate ? C[m, n] : 0) + alpha * sum_k a(m, k) * b(k, n)   for m < M, n < N.
// C is fp32 row-major with leading dimension ldc. Any M, N, K >= 0 (no block-size multiples
// needed); leading dimensions are in elements and at least the stored row length.
struct GemmArgs {
  int m = 0, n = 0, k = 0;
  const bf16_t* a = nullptr;
  int64_t lda = 0;
  ALayout a_layout = ALayout::mk;
  const bf16_t* b = nullptr;
  int64_t ldb = 0;
  BLayout b_layout = BLayout::nk;
  float* c = nullptr;
  int64_t ldc = 0;
  float alpha = 1.0f;
  bool accumulate = false;
};

using GemmFn = void (*)(const GemmArgs&);

// The kernel of `level` (amx_emulated included). Levels without a kernel of their own use the
// best one below them. Never null.
GemmFn gemm_bf16_kernel(IsaLevel level);

}  // namespace kt_moe
