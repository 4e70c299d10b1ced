// Row strides for weights and blocks that the GEMM kernels read 16 rows at a time (an AMX tile, a
// VNNI pack, a group of rows in flight). A stride that is a multiple of 4 KB (H = 2048 in bf16)
// puts all 16 rows' lines in the same L1 set (12 ways) and the same few L2 sets, so the lines of
// one tile load evict each other and the ones fetched ahead. Measured on the DeepSeek-V2-Lite
// backward (the weight read along its rows, two threads): 5-7 GB/s at a 4 KB stride, 17-18 GB/s
// with the padded one. A stride of an odd number of 64-byte lines sends the lines of up to 64
// consecutive rows to distinct L1 sets.
#pragma once

#include <cstdint>

namespace kt_moe {

// Elements per row for rows of `cols` elements of `elem_bytes` bytes: at least cols, a whole
// number of cache lines, and an odd number of them.
inline int64_t padded_row_stride(int64_t cols, int64_t elem_bytes) {
  constexpr int64_t kLine = 64;
  const int64_t per_line = kLine / elem_bytes;
  int64_t lines = (cols + per_line - 1) / per_line;
  if (lines % 2 == 0) ++lines;
  return lines * per_line;
}

}  // namespace kt_moe
