// The memory of every expert of a layer, split by intermediate slice over a pool's subpools (tensor
// parallel): subpool s owns rows [s Is, (s + 1) Is) of gate and up and the same columns of down,
// Is = I / tp, in one allocation on its NUMA node holding the E experts one after another. What
// every engine's weight storage shares (bf16 slices, packed formats, canonical parts): the slicing,
// the NUMA placement, slot checks and the count of loaded slots. What an expert's bytes hold is the
// storage's own.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "pool/worker_pool.hpp"

namespace kt_moe {

class ExpertStore {
 public:
  // The geometry; std::invalid_argument when a size is not positive or I is not divisible by tp.
  ExpertStore(int experts, int hidden, int intermediate, WorkerPool& pool);
  ~ExpertStore();
  ExpertStore(const ExpertStore&) = delete;
  ExpertStore& operator=(const ExpertStore&) = delete;

  // Allocates every slice, expert_bytes(s) per expert in slice s (64-byte multiples kept aligned).
  void allocate(const std::function<size_t(int s)>& expert_bytes);

  int experts() const { return experts_; }
  int hidden() const { return hidden_; }
  int intermediate() const { return intermediate_; }
  int slice_count() const { return int(slices_.size()); }
  int slice_size() const { return slice_size_; }                // Is
  int slice_begin(int s) const { return s * slice_size_; }      // first intermediate row of slice s
  uint8_t* expert(int s, int slot) const;                       // expert `slot`'s bytes in slice s
  size_t bytes_per_expert() const;                              // all slices together

  // std::invalid_argument naming the slot unless 0 <= slot < E.
  void check_slot(int slot) const;
  // Checks the slot, runs fill(s, m, expert(s, slot)) for every slice s and matrix m (0 gate, 1 up,
  // 2 down; the three matrices of a slice on its subpool's threads at once, so that its pages are
  // first touched on their node), then counts the slot as loaded.
  void load(int slot, const std::function<void(int s, int m, uint8_t* expert)>& fill);
  int loaded_count() const { return loaded_count_; }

 private:
  struct Slice;
  int experts_, hidden_, intermediate_, slice_size_;
  WorkerPool& pool_;
  std::vector<std::unique_ptr<Slice>> slices_;
  std::vector<char> loaded_;
  std::atomic<int> loaded_count_{0};  // written by loads on the dispatcher, read by callers
};

}  // namespace kt_moe
