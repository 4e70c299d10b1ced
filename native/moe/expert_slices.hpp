// The bf16 weights of every expert of a layer in an ExpertStore (expert_store.hpp: one slice per
// subpool, tensor parallel). Per expert and slice: gate [Is, H], up [Is, H], down [H, Is], rows
// stored with padded strides (kernels/row_stride.hpp): gate_ld >= H, down_ld >= Is. Shared by the
// SFT and the inference engines.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/gemm_bf16.hpp"
#include "moe/expert_store.hpp"
#include "pool/worker_pool.hpp"

namespace kt_moe {

class Bf16ExpertSlices {
 public:
  // Allocates one slice per subpool of `pool` (tp = its subpool count) on the subpool's node.
  // std::invalid_argument when a size is not positive or I is not divisible by tp.
  Bf16ExpertSlices(int experts, int hidden, int intermediate, WorkerPool& pool);

  int slice_size() const { return store_.slice_size(); }  // Is
  int64_t gate_ld() const { return gate_ld_; }            // row stride of gate and up (elements)
  int64_t down_ld() const { return down_ld_; }            // row stride of down (elements)
  // Expert `slot`'s matrices in slice s.
  const bf16_t* gate(int s, int slot) const { return matrices(s, slot); }
  const bf16_t* up(int s, int slot) const { return matrices(s, slot) + gate_elems(); }
  const bf16_t* down(int s, int slot) const { return matrices(s, slot) + 2 * gate_elems(); }
  // Bytes one expert holds, all slices together (padding included).
  size_t bytes_per_expert() const { return store_.bytes_per_expert(); }
  // std::invalid_argument naming the slot unless 0 <= slot < E.
  void check_slot(int slot) const { store_.check_slot(slot); }

  // Copies one expert (gate, up [I, H], down [H, I], bf16, contiguous) into physical slot `slot`
  // (checked with check_slot first), each subpool its own slice (ExpertStore::load). The engines
  // call it from a task queued on the pool, behind their other work.
  void load(int slot, const bf16_t* gate, const bf16_t* up, const bf16_t* down);

  int loaded_count() const { return store_.loaded_count(); }

 private:
  size_t gate_elems() const { return size_t(store_.slice_size()) * gate_ld_; }
  bf16_t* matrices(int s, int slot) const { return reinterpret_cast<bf16_t*>(store_.expert(s, slot)); }

  ExpertStore store_;
  int64_t gate_ld_, down_ld_;
};

}  // namespace kt_moe
