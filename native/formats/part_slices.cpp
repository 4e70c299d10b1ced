// Slices of canonical parts (part_slices.hpp).
#include "formats/part_slices.hpp"

namespace kt_moe {

MatrixSlice slice_of(const WeightFormat& format, int n0, int n, int k0, int k) {
  MatrixSlice m;
  for (int i = 0; i < format.part_count; ++i) {
    const PartSpec& p = format.parts[i];
    PartSlice& s = m.parts[i];
    s.row0 = n0 / p.rows_per_unit;
    s.rows = (int64_t(n0) + n + p.rows_per_unit - 1) / p.rows_per_unit - s.row0;
    s.row_offset = n0 - int(s.row0) * p.rows_per_unit;
    if (p.one_d()) {
      s.cols = 1;
      continue;
    }
    const int64_t unit0 = k0 / p.cols_per_unit, unit1 = (int64_t(k0) + k + p.cols_per_unit - 1) / p.cols_per_unit;
    s.col0 = unit0 * p.elems_per_unit;
    s.cols = (unit1 - unit0) * p.elems_per_unit;
    s.col_offset = k0 - int(unit0) * p.cols_per_unit;
  }
  return m;
}

MatrixParts slice_pointers(const WeightFormat& format, const MatrixParts& whole, const MatrixSlice& slice) {
  MatrixParts m = whole;
  for (int i = 0; i < format.part_count; ++i) {
    const PartSlice& s = slice.parts[i];
    const int64_t offset = (s.row0 * whole.ld[i] + s.col0) * part_type_bytes(format.parts[i].type);
    m.data[i] = static_cast<const uint8_t*>(whole.data[i]) + offset;
  }
  return m;
}

MatrixParts contiguous_parts(const WeightFormat& format, const void* const* data, int K) {
  MatrixParts m;
  for (int i = 0; i < format.part_count; ++i) {
    m.data[i] = data[i];
    m.ld[i] = format.parts[i].cols(K);
  }
  return m;
}

}  // namespace kt_moe
