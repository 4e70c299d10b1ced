// Bf16ExpertSlices: allocation per subpool node and the per-slice copy of one expert.
#include "moe/expert_slices.hpp"

#include <cstring>
#include <stdexcept>
#include <string>

#include "pool/numa_topology.hpp"

namespace kt_moe {

Bf16ExpertSlices::Slice::~Slice() { numa_free(gate, bytes); }

Bf16ExpertSlices::Bf16ExpertSlices(int experts, int hidden, int intermediate, WorkerPool& pool)
    : experts_(experts), hidden_(hidden), intermediate_(intermediate), pool_(pool) {
  const int tp = pool.subpool_count();
  if (experts < 1 || hidden < 1 || intermediate < 1)
    throw std::invalid_argument("expert weights: experts, hidden and intermediate sizes must be positive");
  if (intermediate % tp != 0)
    throw std::invalid_argument("expert weights: intermediate_size (" + std::to_string(intermediate) +
                                ") must be divisible by the subpool count (" + std::to_string(tp) + ")");
  slice_size_ = intermediate / tp;
  const size_t elems = size_t(experts) * slice_size_ * hidden;
  for (int s = 0; s < tp; ++s) {
    auto slice = std::make_unique<Slice>();
    slice->begin = s * slice_size_;
    slice->bytes = 3 * elems * sizeof(bf16_t);
    slice->gate = static_cast<bf16_t*>(numa_alloc(slice->bytes, pool.subpool(s).node()));
    slice->up = slice->gate + elems;
    slice->down = slice->up + elems;
    slices_.push_back(std::move(slice));
  }
  loaded_.assign(experts, 0);
}

void Bf16ExpertSlices::check_slot(int slot) const {
  if (slot < 0 || slot >= experts_)
    throw std::invalid_argument("expert slot " + std::to_string(slot) + " out of range [0, " +
                                std::to_string(experts_) + ")");
}

void Bf16ExpertSlices::load(int slot, const bf16_t* gate, const bf16_t* up, const bf16_t* down) {
  check_slot(slot);
  const int H = hidden_, I = intermediate_, Is = slice_size_;
  pool_.for_each_subpool([&](int s) {
    Slice& w = *slices_[s];
    std::memcpy(w.gate + size_t(slot) * Is * H, gate + size_t(w.begin) * H, size_t(Is) * H * sizeof(bf16_t));
    std::memcpy(w.up + size_t(slot) * Is * H, up + size_t(w.begin) * H, size_t(Is) * H * sizeof(bf16_t));
    for (int h = 0; h < H; ++h)
      std::memcpy(w.down + (size_t(slot) * H + h) * Is, down + size_t(h) * I + w.begin, size_t(Is) * sizeof(bf16_t));
  });
  if (!loaded_[slot]) {
    loaded_[slot] = 1;
    ++loaded_count_;
  }
}

}  // namespace kt_moe
