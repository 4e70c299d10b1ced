// Where a tensor-parallel slice of a matrix lies in its canonical parts (formats/weight_format.hpp):
// for rows [n0, n0 + n) and columns [k0, k0 + k) of W [N, K], each part's whole units that cover
// them. Shared by the packer calls of the inference store and the SFT base store, so that no
// engine knows a format's geometry.
#pragma once

#include <cstdint>

#include "formats/weight_format.hpp"
#include "kernels/matrix_parts.hpp"

namespace kt_moe {

struct PartSlice {
  int64_t row0 = 0, rows = 0;  // the part's rows (units along N) that the slice covers
  int64_t col0 = 0, cols = 0;  // the part's elements per row that the slice covers
  int row_offset = 0;          // n0 - the first covered unit's first row
  int col_offset = 0;          // k0 - the first covered unit's first column
};

struct MatrixSlice {
  PartSlice parts[kMaxMatrixParts];
};

MatrixSlice slice_of(const WeightFormat& format, int n0, int n, int k0, int k);

// The slice's first covered element of every part of `whole` (W's parts, whole, with their row
// strides); the strides stay those of `whole`.
MatrixParts slice_pointers(const WeightFormat& format, const MatrixParts& whole, const MatrixSlice& slice);

// The row strides of W [N, K]'s parts when each is a whole C-contiguous array.
MatrixParts contiguous_parts(const WeightFormat& format, const void* const* data, int K);

}  // namespace kt_moe
