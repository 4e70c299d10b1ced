// Every level's first step: restate a GemmArgs call (two A layouts x two B layouts) as one
// product of a k-contiguous "row" operand R with a second operand P, so that the kernels below
// implement two shapes of loop instead of four layout combinations. Compiled without ISA flags.
//
//   T[i, j] = sum_k R[i, k] * P(k, j)        i < rows, j < cols, k < depth
//   C: c[i * c_row_stride + j * c_col_stride] = (accumulate ? c : 0) + alpha * T[i, j]
//
// R is read in place, row by row (the weight of the forward products); P is the operand the
// packed kernels copy (the tokens, or a weight read as [K, N], which has no k-contiguous rows).
#pragma once

#include <cstdint>

#include "kernels/gemm_bf16.hpp"

namespace kt_moe {

// How P(k, j) is stored: jk: p[j * ldp + k] (k contiguous, like R); kj: p[k * ldp + j].
enum class PLayout { jk, kj };

struct GemmPlan {
  int rows = 0, cols = 0, depth = 0;
  const bf16_t* r = nullptr;  // R[i, k] = r[i * ldr + k]
  int64_t ldr = 0;
  const bf16_t* p = nullptr;
  int64_t ldp = 0;
  PLayout p_layout = PLayout::jk;
  float* c = nullptr;
  int64_t c_row_stride = 0, c_col_stride = 0;
  float alpha = 1.0f;
  bool accumulate = false;
};

// The plan of `args`:
//   (mk, nk): R = B [N, K] (the weight), P = A (jk), C^T, when N K >= M (K + N), i.e. when packing
//             A and writing C transposed touch fewer elements than packing B; else R = A, P = B.
//   (mk, kn): R = A [M, K], P = B (kj).                 (km, nk): R = B [N, K], P = A (kj), C^T.
//   (km, kn): the smaller of A and B is transposed into thread scratch (ScratchSlot::plan_operand),
//             which turns the call into (mk, kn) or (km, nk).
// Calls with nothing to compute are finished here and return a plan with rows = cols = 0: M = 0
// or N = 0, and K = 0 (C becomes accumulate ? C : 0). Otherwise depth >= 1.
GemmPlan plan_gemm_bf16(const GemmArgs& args);

}  // namespace kt_moe
