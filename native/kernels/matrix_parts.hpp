// One weight matrix W [N, K] (or a slice of it) as the canonical parts of its format: the arrays a
// checkpoint or kt_moe.quant stores it in, in the order of the format's part list
// (formats/weight_format.hpp), each a row-major 2-d array (a 1-d part, one value per row, has
// ld 1). The packers and the SFT base read them through this view; a slice points at the slice's
// first unit of every part (formats/part_slices.hpp).
#pragma once

#include <cstdint>

namespace kt_moe {

constexpr int kMaxMatrixParts = 4;

struct MatrixParts {
  const void* data[kMaxMatrixParts] = {};
  int64_t ld[kMaxMatrixParts] = {};  // row stride of each part, in its elements

  template <class T>
  const T* part(int i) const {
    return static_cast<const T*>(data[i]);
  }
};

}  // namespace kt_moe
