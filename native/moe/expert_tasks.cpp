// Gather and weighted merge of expert rows (expert_tasks.hpp).
#include "moe/expert_tasks.hpp"

#include <cstring>

#include "moe/bf16.hpp"

namespace kt_moe {

float* thread_floats(size_t n) {
  thread_local std::vector<float> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch.data();
}

void gather_expert_rows(const Routing& rt, int e, const bf16_t* x, int hidden, bf16_t* X) {
  const int end = rt.expert_begin[e + 1];
  for (int row = rt.expert_begin[e]; row < end; ++row)
    std::memcpy(X + size_t(row) * hidden, x + size_t(rt.row_slot[row] / rt.k) * hidden, size_t(hidden) * sizeof(bf16_t));
}

namespace {

// Token t of combine_expert_outputs.
void combine_token(const Routing& rt, const float* weights, const std::vector<float*>& ys, int H,
                   const FloatOutput& out, int t) {
  const int k = rt.k, parts = static_cast<int>(ys.size());
  float* acc = thread_floats(H);
  std::fill(acc, acc + H, 0.0f);
  for (int j = 0; j < k; ++j) {
    const int row = rt.slot_row[size_t(t) * k + j];
    if (row < 0) continue;
    float* y = ys[0] + size_t(row) * H;
    for (int p = 1; p < parts; ++p) {
      const float* yp = ys[p] + size_t(row) * H;
      for (int h = 0; h < H; ++h) y[h] += yp[h];
    }
    const float w = weights[size_t(t) * k + j];
    for (int h = 0; h < H; ++h) acc[h] += w * y[h];
  }
  out.store(size_t(t) * H, acc, H);
}

}  // namespace

void combine_expert_outputs(WorkerPool& pool, const Routing& rt, const float* weights, const std::vector<float*>& ys,
                            int hidden, const FloatOutput& out) {
  pool.parallel_for_all(rt.q, [&](int t) { combine_token(rt, weights, ys, hidden, out, t); });
}

void combine_expert_outputs(Subpool& subpool, const Routing& rt, const float* weights,
                            const std::vector<float*>& ys, int hidden, const FloatOutput& out) {
  subpool.parallel_for(rt.q, [&](int t) { combine_token(rt, weights, ys, hidden, out, t); });
}

}  // namespace kt_moe
