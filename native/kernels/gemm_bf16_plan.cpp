// Layout normalisation shared by every level (see gemm_bf16_plan.hpp).
#include "kernels/gemm_bf16_plan.hpp"

#include "kernels/scratch.hpp"

namespace kt_moe {
namespace {

// dst[j * rows + i] = src[i * ld + j]: a [rows, cols] matrix transposed into a dense [cols, rows].
// Only ever applied to the smaller operand of a (km, kn) call (the LoRA gradients' rank side).
const bf16_t* transpose_to_scratch(const bf16_t* src, int64_t ld, int rows, int cols) {
  auto* dst = static_cast<bf16_t*>(
      thread_scratch(ScratchSlot::plan_operand, sizeof(bf16_t) * static_cast<size_t>(rows) * cols));
  constexpr int kBlock = 32;  // cache blocking of the transposition
  for (int i0 = 0; i0 < rows; i0 += kBlock)
    for (int j0 = 0; j0 < cols; j0 += kBlock)
      for (int i = i0; i < rows && i < i0 + kBlock; ++i)
        for (int j = j0; j < cols && j < j0 + kBlock; ++j) dst[static_cast<int64_t>(j) * rows + i] = src[i * ld + j];
  return dst;
}

// C = accumulate ? C : 0, the result of an empty sum over k.
void finish_empty_sum(const GemmArgs& a) {
  if (a.accumulate) return;
  for (int m = 0; m < a.m; ++m)
    for (int n = 0; n < a.n; ++n) a.c[m * a.ldc + n] = 0.0f;
}

}  // namespace

GemmPlan plan_gemm_bf16(const GemmArgs& args) {
  GemmPlan plan;
  if (args.m <= 0 || args.n <= 0) return plan;
  if (args.k <= 0) {
    finish_empty_sum(args);
    return plan;
  }
  GemmArgs a = args;
  if (a.a_layout == ALayout::km && a.b_layout == BLayout::kn) {
    if (a.m <= a.n) {  // A [K, M] -> [M, K]
      a.a = transpose_to_scratch(a.a, a.lda, a.k, a.m);
      a.lda = a.k;
      a.a_layout = ALayout::mk;
    } else {  // B [K, N] -> [N, K]
      a.b = transpose_to_scratch(a.b, a.ldb, a.k, a.n);
      a.ldb = a.k;
      a.b_layout = BLayout::nk;
    }
  }
  plan.depth = a.k;
  plan.c = a.c;
  plan.alpha = a.alpha;
  plan.accumulate = a.accumulate;
  // R = B, P = A: T = C^T, so T[i = n, j = m] lands at c[m * ldc + n]. For (mk, nk) either works;
  // R = B when packing A and writing C transposed touch fewer elements than packing B.
  const int64_t m = a.m, n = a.n, k = a.k;
  const bool r_is_b = a.a_layout == ALayout::km || (a.b_layout == BLayout::nk && n * k >= m * (k + n));
  if (r_is_b) {
    plan.rows = a.n, plan.cols = a.m;
    plan.r = a.b, plan.ldr = a.ldb;
    plan.p = a.a, plan.ldp = a.lda;
    plan.p_layout = a.a_layout == ALayout::mk ? PLayout::jk : PLayout::kj;
    plan.c_row_stride = 1, plan.c_col_stride = a.ldc;
  } else {
    plan.rows = a.m, plan.cols = a.n;
    plan.r = a.a, plan.ldr = a.lda;
    plan.p = a.b, plan.ldp = a.ldb;
    plan.p_layout = a.b_layout == BLayout::nk ? PLayout::jk : PLayout::kj;
    plan.c_row_stride = a.ldc, plan.c_col_stride = 1;
  }
  return plan;
}

}  // namespace kt_moe
