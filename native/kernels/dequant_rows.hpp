// The entry every format's bf16 dequantizer (native/formats/*/dequant_bf16.cpp) shares: rows
// [r0, r1) one by one through the format's row function. Compiled per level (level_namespace.hpp).
#pragma once

#include <cstdint>

#include "kernels/dequant_bf16.hpp"
#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

// Row(w, r, c0, c1, out): D[r, c0 .. c1) into out[0 .. c1 - c0).
template <void (*Row)(const QuantMatrixView&, int, int, int, bf16_t*)>
void dequant_rows(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld) {
  if (c0 >= c1) return;
  for (int r = r0; r < r1; ++r) Row(w, r, c0, c1, dst + (r - r0) * ld);
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
