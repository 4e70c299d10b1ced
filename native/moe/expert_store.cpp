// ExpertStore (expert_store.hpp): the per-subpool allocations and the slot bookkeeping.
#include "moe/expert_store.hpp"

#include <stdexcept>
#include <string>

#include "pool/numa_topology.hpp"

namespace kt_moe {

struct ExpertStore::Slice {
  uint8_t* data = nullptr;
  size_t expert_bytes = 0;
  size_t bytes = 0;
  ~Slice() { numa_free(data, bytes); }
};

ExpertStore::ExpertStore(int experts, int hidden, int intermediate, WorkerPool& pool)
    : experts_(experts), hidden_(hidden), intermediate_(intermediate), pool_(pool) {
  const int tp = pool.subpool_count();
  if (experts < 1 || hidden < 1 || intermediate < 1)
    throw std::invalid_argument("expert weights: experts, hidden and intermediate sizes must be positive");
  if (intermediate % tp != 0)
    throw std::invalid_argument("expert weights: intermediate_size (" + std::to_string(intermediate) +
                                ") must be divisible by the subpool count (" + std::to_string(tp) + ")");
  slice_size_ = intermediate / tp;
  slices_.resize(tp);
  loaded_.assign(experts, 0);
}

ExpertStore::~ExpertStore() = default;

void ExpertStore::allocate(const std::function<size_t(int s)>& expert_bytes) {
  for (int s = 0; s < slice_count(); ++s) {
    auto slice = std::make_unique<Slice>();
    slice->expert_bytes = expert_bytes(s);
    slice->bytes = slice->expert_bytes * experts_;
    slice->data = static_cast<uint8_t*>(numa_alloc(slice->bytes, pool_.subpool(s).node()));
    slices_[s] = std::move(slice);
  }
}

uint8_t* ExpertStore::expert(int s, int slot) const {
  const Slice& slice = *slices_[s];
  return slice.data + size_t(slot) * slice.expert_bytes;
}

size_t ExpertStore::bytes_per_expert() const {
  size_t bytes = 0;
  for (const auto& slice : slices_) bytes += slice->expert_bytes;
  return bytes;
}

void ExpertStore::check_slot(int slot) const {
  if (slot < 0 || slot >= experts_)
    throw std::invalid_argument("expert slot " + std::to_string(slot) + " out of range [0, " +
                                std::to_string(experts_) + ")");
}

void ExpertStore::load(int slot, const std::function<void(int s, int m, uint8_t* expert)>& fill) {
  check_slot(slot);
  pool_.for_each_subpool([&](int s) {
    pool_.subpool(s).parallel_for(3, [&](int m) { fill(s, m, expert(s, slot)); });
  });
  if (!loaded_[slot]) {
    loaded_[slot] = 1;
    ++loaded_count_;
  }
}

}  // namespace kt_moe
