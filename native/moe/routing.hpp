// Routing of one batch: groups its (token, slot) pairs by expert, so that every expert's work is
// a GEMM over contiguous "rows" (one row per routed slot).
#pragma once

#include <cstdint>
#include <vector>

namespace kt_moe {

struct Routing {
  int q = 0, k = 0;                    // tokens, slots per token
  std::vector<int> expert_begin;       // [E + 1]: expert e owns rows [expert_begin[e], expert_begin[e + 1])
  std::vector<int> row_slot;           // [R]: the slot t * k + j a row came from
  std::vector<int> slot_row;           // [q * k]: the row of each slot, -1 for a skipped slot
  std::vector<int> active_experts;     // experts with at least one row, ascending

  int rows() const { return static_cast<int>(row_slot.size()); }
  int rows_of(int e) const { return expert_begin[e + 1] - expert_begin[e]; }
};

// expert_ids: [q, k]. A slot with id -1, or with an id e whose skip[e] is nonzero (an expert that
// lives on the GPU; skip: [num_experts], or null for none), is skipped. Throws
// std::invalid_argument naming the token, slot and id for any other id outside [0, num_experts).
Routing route_tokens(const int64_t* expert_ids, int q, int k, int num_experts, const uint8_t* skip);

// The same with the experts [0, num_gpu_experts) skipped.
Routing route_tokens(const int64_t* expert_ids, int q, int k, int num_experts, int num_gpu_experts);

}  // namespace kt_moe
