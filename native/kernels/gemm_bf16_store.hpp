// The epilogue every level shares: a block of the plan's result T, computed in fp32, written to
// C with alpha, accumulate and the plan's orientation (C or C^T). Portable; compiled per level.
#pragma once

#include <cstdint>

#include "kernels/gemm_bf16_plan.hpp"
#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

// For i < rows, j < cols: C at plan (i0 + i, j0 + j) = (accumulate ? C : 0) + alpha * t[i * ldt + j].
inline void store_block(const GemmPlan& p, int i0, int j0, int rows, int cols, const float* t, int64_t ldt) {
  float* c = p.c + i0 * p.c_row_stride + j0 * p.c_col_stride;
  if (p.c_col_stride == 1) {  // C: rows of T are rows of C
    for (int i = 0; i < rows; ++i) {
      float* ci = c + i * p.c_row_stride;
      const float* ti = t + i * ldt;
      if (p.accumulate)
        for (int j = 0; j < cols; ++j) ci[j] += p.alpha * ti[j];
      else
        for (int j = 0; j < cols; ++j) ci[j] = p.alpha * ti[j];
    }
  } else {  // C^T: columns of T are rows of C
    for (int j = 0; j < cols; ++j) {
      float* cj = c + j * p.c_col_stride;
      if (p.accumulate)
        for (int i = 0; i < rows; ++i) cj[i] += p.alpha * t[i * ldt + j];
      else
        for (int i = 0; i < rows; ++i) cj[i] = p.alpha * t[i * ldt + j];
    }
  }
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
