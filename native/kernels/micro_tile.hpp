// Helpers of the register-blocked micro-kernels: a run-time width turned into a compile-time one
// (so that accumulators stay in registers for tail widths too), and the R row pointers of a
// micro-tile. Compiled per level (templates instantiated in each level's namespace).
#pragma once

#include <algorithm>
#include <type_traits>

#include "kernels/gemm_bf16_plan.hpp"
#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

// f(std::integral_constant<int, n>{}) for 1 <= n <= N (n is clamped into that range).
template <int N, class F>
inline void with_static_count(int n, F&& f) {
  if constexpr (N > 1) {
    if (n < N) return with_static_count<N - 1>(n, f);
  }
  f(std::integral_constant<int, N>{});
}

// r[i] = row i0 + i of the plan's R for i < Rows; rows past the end repeat the last row, so that
// the micro-kernels need no row tail (those results are computed and dropped).
template <int Rows>
inline void row_pointers(const GemmPlan& p, int i0, const bf16_t* (&r)[Rows]) {
  for (int i = 0; i < Rows; ++i) r[i] = p.r + std::min(i0 + i, p.rows - 1) * p.ldr;
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
