// Bf16ExpertSlices: allocation per subpool node and the per-slice copy of one expert.
#include "moe/expert_slices.hpp"

#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/row_stride.hpp"
#include "pool/numa_topology.hpp"

namespace kt_moe {
namespace {

// dst[0, ld) = src[0, n) followed by zeros (the padding is never used, but always defined).
void copy_row(bf16_t* dst, const bf16_t* src, int n, int64_t ld) {
  std::memcpy(dst, src, size_t(n) * sizeof(bf16_t));
  std::memset(dst + n, 0, size_t(ld - n) * sizeof(bf16_t));
}

}  // namespace

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
  gate_ld_ = padded_row_stride(hidden, sizeof(bf16_t));
  down_ld_ = padded_row_stride(slice_size_, sizeof(bf16_t));
  const size_t gate_elems = size_t(experts) * slice_size_ * gate_ld_;
  const size_t down_elems = size_t(experts) * hidden * down_ld_;
  for (int s = 0; s < tp; ++s) {
    auto slice = std::make_unique<Slice>();
    slice->begin = s * slice_size_;
    slice->bytes = (2 * gate_elems + down_elems) * sizeof(bf16_t);
    slice->gate = static_cast<bf16_t*>(numa_alloc(slice->bytes, pool.subpool(s).node()));
    slice->up = slice->gate + gate_elems;
    slice->down = slice->up + gate_elems;
    slices_.push_back(std::move(slice));
  }
  loaded_.assign(experts, 0);
}

void Bf16ExpertSlices::check_slot(int slot) const {
  if (slot < 0 || slot >= experts_)
    throw std::invalid_argument("expert slot " + std::to_string(slot) + " out of range [0, " +
                                std::to_string(experts_) + ")");
}

size_t Bf16ExpertSlices::bytes_per_expert() const {
  return slices_.size() * size_t(slice_size_ * 2 * gate_ld_ + hidden_ * down_ld_) * sizeof(bf16_t);
}

void Bf16ExpertSlices::load(int slot, const bf16_t* gate, const bf16_t* up, const bf16_t* down) {
  check_slot(slot);
  const int H = hidden_, I = intermediate_, Is = slice_size_;
  pool_.for_each_subpool([&](int s) {
    Slice& w = *slices_[s];
    const int begin = w.begin;
    bf16_t* g = w.gate + gate_offset(slot);
    bf16_t* u = w.up + gate_offset(slot);
    bf16_t* d = w.down + down_offset(slot);
    for (int i = 0; i < Is; ++i) {
      copy_row(g + i * gate_ld_, gate + size_t(begin + i) * H, H, gate_ld_);
      copy_row(u + i * gate_ld_, up + size_t(begin + i) * H, H, gate_ld_);
    }
    for (int h = 0; h < H; ++h) copy_row(d + h * down_ld_, down + size_t(h) * I + begin, Is, down_ld_);
  });
  if (!loaded_[slot]) {
    loaded_[slot] = 1;
    ++loaded_count_;
  }
}

}  // namespace kt_moe
