// Pieces of the engines' forward shared by the SFT and the inference engines: how an expert's
// output columns are split into (expert, block) tasks, the gather of an expert's tokens into
// contiguous rows, and the weighted merge of the rows' outputs back into tokens. Rows are the
// routed (token, slot) pairs grouped by expert (routing.hpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "kernels/gemm_bf16.hpp"
#include "moe/float_output.hpp"
#include "moe/routing.hpp"
#include "pool/worker_pool.hpp"

namespace kt_moe {

// Column blocks per expert task: whole rows stream best (one kernel call per weight), so an
// expert is split only when there are too few experts to give every thread several tasks (decode:
// then all threads share each expert's weights, and every weight byte is still read once).
constexpr int kTasksPerThread = 4;
constexpr int kBlockAlign = 32;

// Columns per (expert, block) task for a `size`-wide output over `experts` experts and `threads` threads.
inline int block_columns(int size, int experts, int threads) {
  const int blocks = std::max(1, (kTasksPerThread * threads + experts - 1) / std::max(experts, 1));
  const int columns = (size + blocks - 1) / blocks;
  return std::min(size, (columns + kBlockAlign - 1) / kBlockAlign * kBlockAlign);
}

inline int block_count(int size, int block) { return (size + block - 1) / block; }

// Up to this many elements, a pass over rows (gather, input conversion) is done by the subpool's
// leader alone: waking the other threads costs more than the pass (decode: a few rows).
constexpr size_t kLeaderOnlyElements = size_t(1) << 15;

// fn(i) for i < n on the subpool's threads, or on the calling leader alone when the n calls touch
// at most kLeaderOnlyElements elements in all.
inline void row_pass(Subpool& sp, int n, size_t elements, const std::function<void(int)>& fn) {
  if (elements > kLeaderOnlyElements) return sp.parallel_for(n, fn);
  for (int i = 0; i < n; ++i) fn(i);
}

// A per-thread fp32 scratch of at least n elements (small products, merge accumulators), kept for
// the thread's lifetime; contents unspecified.
float* thread_floats(size_t n);

// X[row, :] = x[token of row, :] for the rows of expert e.   x: [q, H], X: [R, H] bf16
void gather_expert_rows(const Routing& rt, int e, const bf16_t* x, int hidden, bf16_t* X);

// out[t, :] = sum_j weights[t, j] * y(row of slot (t, j))  for every token t < rt.q, where
// y(row) = sum over parts p of ys[p][row, :] (fp32 [R, H] each, one per tensor-parallel slice); that
// sum is left in ys[0]. Slots without a row add nothing (a token without any gets zeros).
// weights: [q, k] fp32; out: [q, H]. Runs on all threads of the pool, or on those of one subpool
// (from its leader, when that subpool is the pool's only one: no hand-over to another thread).
void combine_expert_outputs(WorkerPool& pool, const Routing& rt, const float* weights, const std::vector<float*>& ys,
                            int hidden, const FloatOutput& out);
void combine_expert_outputs(Subpool& subpool, const Routing& rt, const float* weights,
                            const std::vector<float*>& ys, int hidden, const FloatOutput& out);

}  // namespace kt_moe
