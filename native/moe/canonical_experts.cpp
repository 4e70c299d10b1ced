// CanonicalExperts (canonical_experts.hpp): the slices' part layouts, their views and the copy of
// one expert.
#include "moe/canonical_experts.hpp"

#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace kt_moe {

namespace {

constexpr size_t kAlign = 64;

size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

}  // namespace

CanonicalExperts::CanonicalExperts(const std::array<WeightFormat, 3>& formats, int experts, int hidden,
                                   int intermediate, WorkerPool& pool)
    : formats_(formats), store_(experts, hidden, intermediate, pool) {
  for (const WeightFormat& f : formats_) f.dequant_kernels();  // std::invalid_argument without a dequantizer
  layouts_.resize(store_.slice_count());
  std::vector<size_t> bytes(store_.slice_count());
  for (int s = 0; s < store_.slice_count(); ++s) {
    size_t at = 0;
    for (int m = 0; m < 3; ++m) layouts_[s][m] = layout(store_.slice_begin(s), BaseMatrix(m), at);
    bytes[s] = at;
  }
  store_.allocate([&](int s) { return bytes[s]; });
}

// The slice's matrix: gate and up rows [begin, begin + Is) of W [I, H]; down columns [begin,
// begin + Is) of W [H, I]. Its parts follow each other from `at` on.
CanonicalExperts::Layout CanonicalExperts::layout(int begin, BaseMatrix which, size_t& at) const {
  const bool down = which == BaseMatrix::down;
  const int Is = store_.slice_size(), H = store_.hidden();
  const WeightFormat& f = format(which);
  Layout l;
  l.rows = down ? H : Is;
  l.cols = down ? Is : H;
  l.slice = down ? slice_of(f, 0, H, begin, Is) : slice_of(f, begin, Is, 0, H);
  for (int i = 0; i < f.part_count; ++i) {
    const PartSlice& p = l.slice.parts[i];
    l.at[i] = at;
    l.ld[i] = p.cols;
    at += aligned(size_t(p.rows * p.cols) * part_type_bytes(f.parts[i].type));
  }
  return l;
}

QuantMatrixView CanonicalExperts::view(int s, int slot, BaseMatrix which) const {
  const Layout& l = layouts_[s][int(which)];
  const WeightFormat& f = format(which);
  const uint8_t* expert = store_.expert(s, slot);
  const int scale_part = f.part_count > 1 ? 1 : 0;  // one part: the scales are inside the value blocks
  QuantMatrixView v;
  v.format = &f.dequant_kernels();
  v.rows = l.rows;
  v.cols = l.cols;
  v.group = f.group;
  v.row0 = l.slice.parts[scale_part].row_offset;  // where the slice starts inside its first scale unit
  v.col0 = l.slice.parts[scale_part].col_offset;
  v.values = expert + l.at[0];
  v.ld_values = l.ld[0] * part_type_bytes(f.parts[0].type);
  if (f.part_count > 1) {
    v.scale = expert + l.at[1];
    v.ld_scale = l.ld[1];
  }
  if (f.part_count > 2) {
    v.zero = expert + l.at[2];
    v.ld_zero = l.ld[2];
  }
  return v;
}

std::vector<std::vector<uint8_t>> CanonicalExperts::stored_parts(int s, int slot, BaseMatrix which) const {
  check_slot(slot);
  const Layout& l = layouts_[s][int(which)];
  const WeightFormat& f = format(which);
  const uint8_t* expert = store_.expert(s, slot);
  std::vector<std::vector<uint8_t>> parts;
  for (int i = 0; i < f.part_count; ++i) {
    const PartSlice& p = l.slice.parts[i];
    const uint8_t* at = expert + l.at[i];
    parts.emplace_back(at, at + size_t(p.rows * p.cols) * part_type_bytes(f.parts[i].type));
  }
  return parts;
}

void CanonicalExperts::copy(const MatrixParts& src, BaseMatrix which, const Layout& l, uint8_t* expert) const {
  const WeightFormat& f = format(which);
  const MatrixParts from = slice_pointers(f, src, l.slice);
  for (int i = 0; i < f.part_count; ++i) {
    const PartSlice& p = l.slice.parts[i];
    const size_t elem = part_type_bytes(f.parts[i].type), row_bytes = size_t(p.cols) * elem;
    const auto* in = static_cast<const uint8_t*>(from.data[i]);
    uint8_t* out = expert + l.at[i];
    for (int64_t r = 0; r < p.rows; ++r) std::memcpy(out + r * row_bytes, in + r * src.ld[i] * elem, row_bytes);
  }
}

void CanonicalExperts::load(int slot, const MatrixParts& gate, const MatrixParts& up, const MatrixParts& down) {
  const MatrixParts* matrices[3] = {&gate, &up, &down};
  for (int m = 0; m < 3; ++m) {
    const WeightFormat& f = formats_[m];
    for (int i = 0; i < f.part_count; ++i)
      if (!matrices[m]->data[i])
        throw std::invalid_argument(std::string(f.name) + " needs every part " + f.part_list() + " of every matrix");
  }
  store_.load(slot, [&](int s, int m, uint8_t* expert) { copy(*matrices[m], BaseMatrix(m), layouts_[s][m], expert); });
}

}  // namespace kt_moe
