// The bf16 weights of every expert of a layer, split by intermediate slice over a pool's subpools
// (tensor parallel): subpool s owns rows [s * Is, (s + 1) * Is) of gate and up and the same columns
// of down, Is = I / tp, in memory on its NUMA node. Shared by the SFT and the inference engines.
// Rows are stored with padded strides (kernels/row_stride.hpp): gate_ld >= H, down_ld >= Is.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <vector>

#include "kernels/gemm_bf16.hpp"
#include "pool/worker_pool.hpp"

namespace kt_moe {

class Bf16ExpertSlices {
 public:
  struct Slice {
    int begin = 0;           // first intermediate row of the slice
    bf16_t* gate = nullptr;  // [E, Is, H], rows gate_ld apart
    bf16_t* up = nullptr;    // [E, Is, H], rows gate_ld apart
    bf16_t* down = nullptr;  // [E, H, Is], rows down_ld apart
    size_t bytes = 0;        // of the one allocation the three live in
    ~Slice();
  };

  // Allocates one slice per subpool of `pool` (tp = its subpool count) on the subpool's node.
  // std::invalid_argument when a size is not positive or I is not divisible by tp.
  Bf16ExpertSlices(int experts, int hidden, int intermediate, WorkerPool& pool);

  int slice_size() const { return slice_size_; }  // Is
  int64_t gate_ld() const { return gate_ld_; }     // row stride of gate and up (elements)
  int64_t down_ld() const { return down_ld_; }     // row stride of down (elements)
  // Expert `slot`'s matrices in slice s.
  const bf16_t* gate(int s, int slot) const { return slices_[s]->gate + gate_offset(slot); }
  const bf16_t* up(int s, int slot) const { return slices_[s]->up + gate_offset(slot); }
  const bf16_t* down(int s, int slot) const { return slices_[s]->down + down_offset(slot); }
  // Bytes one expert holds, all slices together (padding included).
  size_t bytes_per_expert() const;
  // std::invalid_argument naming the slot unless 0 <= slot < E.
  void check_slot(int slot) const;

  // Copies one expert (gate, up [I, H], down [H, I], bf16, contiguous) into physical slot `slot`
  // (checked with check_slot first), each subpool its own slice (so pages are first touched on
  // their node). Runs for_each_subpool on the calling thread: the engines call it from a task
  // queued on the pool, behind their other work.
  void load(int slot, const bf16_t* gate, const bf16_t* up, const bf16_t* down);

  int loaded_count() const { return loaded_count_; }
  bool all_loaded() const { return loaded_count_ == experts_; }

 private:
  size_t gate_offset(int slot) const { return size_t(slot) * slice_size_ * gate_ld_; }  // of gate and up
  size_t down_offset(int slot) const { return size_t(slot) * hidden_ * down_ld_; }

  int experts_, hidden_, intermediate_, slice_size_;
  int64_t gate_ld_, down_ld_;
  WorkerPool& pool_;
  std::vector<std::unique_ptr<Slice>> slices_;
  std::vector<char> loaded_;
  std::atomic<int> loaded_count_{0};  // written by loads on the dispatcher, read by callers
};

}  // namespace kt_moe
