// route_tokens: a counting sort of the batch's slots by expert id.
#include "moe/routing.hpp"

#include <stdexcept>
#include <string>

namespace kt_moe {

Routing route_tokens(const int64_t* expert_ids, int q, int k, int num_experts, const uint8_t* skip) {
  Routing r;
  r.q = q;
  r.k = k;
  r.expert_begin.assign(num_experts + 1, 0);
  r.slot_row.assign(static_cast<size_t>(q) * k, -1);
  for (int64_t slot = 0; slot < int64_t(q) * k; ++slot) {
    const int64_t id = expert_ids[slot];
    if (id == -1) continue;
    if (id < 0 || id >= num_experts)
      throw std::invalid_argument("expert_ids[" + std::to_string(slot / k) + ", " + std::to_string(slot % k) +
                                  "] = " + std::to_string(id) + " is out of range: expected -1 or an id in [0, " +
                                  std::to_string(num_experts) + ")");
    if (skip && skip[id]) continue;
    ++r.expert_begin[id + 1];
  }
  for (int e = 0; e < num_experts; ++e) {
    if (r.expert_begin[e + 1] > 0) r.active_experts.push_back(e);
    r.expert_begin[e + 1] += r.expert_begin[e];
  }
  r.row_slot.resize(r.expert_begin[num_experts]);
  std::vector<int> next(r.expert_begin.begin(), r.expert_begin.end() - 1);
  for (int slot = 0; slot < q * k; ++slot) {
    const int64_t id = expert_ids[slot];
    if (id == -1 || (skip && skip[id])) continue;  // the range was checked above
    const int row = next[id]++;
    r.row_slot[row] = slot;
    r.slot_row[slot] = row;
  }
  return r;
}

Routing route_tokens(const int64_t* expert_ids, int q, int k, int num_experts, int num_gpu_experts) {
  std::vector<uint8_t> on_gpu(num_experts, 0);
  for (int e = 0; e < num_gpu_experts && e < num_experts; ++e) on_gpu[e] = 1;
  return route_tokens(expert_ids, q, k, num_experts, on_gpu.data());
}

}  // namespace kt_moe
