// Bf16ExpertSlices: the per-expert layout in its ExpertStore and the per-slice copy of one expert.
#include "moe/expert_slices.hpp"

#include <cstring>

#include "kernels/row_stride.hpp"

namespace kt_moe {
namespace {

// dst[0, ld) = src[0, n) followed by zeros (the padding is never used, but always defined).
void copy_row(bf16_t* dst, const bf16_t* src, int n, int64_t ld) {
  std::memcpy(dst, src, size_t(n) * sizeof(bf16_t));
  std::memset(dst + n, 0, size_t(ld - n) * sizeof(bf16_t));
}

}  // namespace

Bf16ExpertSlices::Bf16ExpertSlices(int experts, int hidden, int intermediate, WorkerPool& pool)
    : store_(experts, hidden, intermediate, pool) {
  gate_ld_ = padded_row_stride(hidden, sizeof(bf16_t));
  down_ld_ = padded_row_stride(store_.slice_size(), sizeof(bf16_t));
  const size_t bytes = (2 * gate_elems() + size_t(hidden) * down_ld_) * sizeof(bf16_t);
  store_.allocate([&](int) { return bytes; });
}

void Bf16ExpertSlices::load(int slot, const bf16_t* gate, const bf16_t* up, const bf16_t* down) {
  const int H = store_.hidden(), I = store_.intermediate(), Is = store_.slice_size();
  store_.load(slot, [&](int s, int m, uint8_t* expert) {
    const int begin = store_.slice_begin(s);
    bf16_t* g = reinterpret_cast<bf16_t*>(expert);
    bf16_t* u = g + gate_elems();
    bf16_t* d = u + gate_elems();
    if (m < 2) {
      bf16_t* out = m == 0 ? g : u;
      const bf16_t* in = m == 0 ? gate : up;
      for (int i = 0; i < Is; ++i) copy_row(out + i * gate_ld_, in + size_t(begin + i) * H, H, gate_ld_);
    } else {
      for (int h = 0; h < H; ++h) copy_row(d + h * down_ld_, down + size_t(h) * I + begin, Is, down_ld_);
    }
  });
}

}  // namespace kt_moe
