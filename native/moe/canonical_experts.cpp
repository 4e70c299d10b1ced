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

CanonicalExperts::CanonicalExperts(const WeightFormat& format, int experts, int hidden, int intermediate,
                                   WorkerPool& pool)
    : format_(format), dequant_(format.dequant_kernels()), store_(experts, hidden, intermediate, pool) {
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
  Layout l;
  l.rows = down ? H : Is;
  l.cols = down ? Is : H;
  l.slice = down ? slice_of(format_, 0, H, begin, Is) : slice_of(format_, begin, Is, 0, H);
  for (int i = 0; i < format_.part_count; ++i) {
    const PartSlice& p = l.slice.parts[i];
    l.at[i] = at;
    l.ld[i] = p.cols;
    at += aligned(size_t(p.rows * p.cols) * part_type_bytes(format_.parts[i].type));
  }
  return l;
}

QuantMatrixView CanonicalExperts::view(int s, int slot, BaseMatrix which) const {
  const Layout& l = layouts_[s][int(which)];
  const uint8_t* expert = store_.expert(s, slot);
  QuantMatrixView v;
  v.format = &dequant_;
  v.rows = l.rows;
  v.cols = l.cols;
  v.group = format_.group;
  v.row0 = l.slice.parts[1].row_offset;  // where the slice starts inside its first scale unit
  v.col0 = l.slice.parts[1].col_offset;
  v.values = expert + l.at[0];
  v.ld_values = l.ld[0] * part_type_bytes(format_.parts[0].type);
  v.scale = expert + l.at[1];
  v.ld_scale = l.ld[1];
  if (format_.part_count > 2) {
    v.zero = expert + l.at[2];
    v.ld_zero = l.ld[2];
  }
  return v;
}

std::vector<std::vector<uint8_t>> CanonicalExperts::stored_parts(int s, int slot, BaseMatrix which) const {
  check_slot(slot);
  const Layout& l = layouts_[s][int(which)];
  const uint8_t* expert = store_.expert(s, slot);
  std::vector<std::vector<uint8_t>> parts;
  for (int i = 0; i < format_.part_count; ++i) {
    const PartSlice& p = l.slice.parts[i];
    const uint8_t* at = expert + l.at[i];
    parts.emplace_back(at, at + size_t(p.rows * p.cols) * part_type_bytes(format_.parts[i].type));
  }
  return parts;
}

void CanonicalExperts::copy(const MatrixParts& src, const Layout& l, uint8_t* expert) const {
  const MatrixParts from = slice_pointers(format_, src, l.slice);
  for (int i = 0; i < format_.part_count; ++i) {
    const PartSlice& p = l.slice.parts[i];
    const size_t elem = part_type_bytes(format_.parts[i].type), row_bytes = size_t(p.cols) * elem;
    const auto* in = static_cast<const uint8_t*>(from.data[i]);
    uint8_t* out = expert + l.at[i];
    for (int64_t r = 0; r < p.rows; ++r) std::memcpy(out + r * row_bytes, in + r * src.ld[i] * elem, row_bytes);
  }
}

void CanonicalExperts::load(int slot, const MatrixParts& gate, const MatrixParts& up, const MatrixParts& down) {
  for (const MatrixParts* m : {&gate, &up, &down})
    for (int i = 0; i < format_.part_count; ++i)
      if (!m->data[i])
        throw std::invalid_argument(std::string(format_.name) + " needs every part " + format_.part_list() +
                                    " of every matrix");
  store_.load(slot, [&](int s, uint8_t* expert) {
    copy(gate, layouts_[s][0], expert);
    copy(up, layouts_[s][1], expert);
    copy(down, layouts_[s][2], expert);
  });
}

}  // namespace kt_moe
