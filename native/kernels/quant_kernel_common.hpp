// What every format's quantized GEMM kernels (native/formats/*/gemm_*.cpp) share: reading an
// activation record, prefetching the weight stream (the GGUF few-rows products too) and writing a block of results into C.
// Compiled per level (everything lives in the level's namespace, see level_namespace.hpp).
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/gemm_quant.hpp"
#include "kernels/level_namespace.hpp"
#include "kernels/quant_layout.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

// One quantized activation row: q [k_padded], scale [groups] (per 64 k), sum [sums] (per the
// format's act_sum_group k).
struct QuantRow {
  const int8_t* q;
  const float* scale;
  const float* sum;
};

// Row i of the product: record row_ids[i] (or i).
inline QuantRow quant_row(const QuantGemmArgs& args, const QuantActLayout& layout, int i) {
  const int r = args.row_ids ? args.row_ids[i] : i;
  const uint8_t* rec = args.a.data + int64_t(r) * args.a.stride;
  return {reinterpret_cast<const int8_t*>(rec), reinterpret_cast<const float*>(rec + layout.scale_offset),
          reinterpret_cast<const float*>(rec + layout.sum_offset)};
}

// Asks for the cache lines of [p, p + bytes) (prefetcht0): the kernels stream the packed weight
// and request it 2 KB ahead, so that enough misses are in flight for one thread to
// approach the memory bandwidth (the hardware prefetchers stop at 4 KB pages).
inline void prefetch_bytes(const void* p, int bytes) {
  for (int i = 0; i < bytes; i += 64) __builtin_prefetch(static_cast<const char*>(p) + i, 0, 3);
}

// The weight stream runs through the matrix block after block; each unit asks for the lines this
// far ahead, as long as they lie inside the weight (`end`: no address is formed past it). Of the
// distances tried (1, 2, 3, 4 and 8 KB), 2 KB gave the fastest decode of a DeepSeek-V2-Lite layer on
// a Sapphire Rapids machine, at 1 and 2 threads, for MOE_INT8, MOE_INT4, AMXINT8 and AMXINT4 (4 KB,
// the former distance, left MOE_INT8 at 73% of the streaming read on one thread; docs/performance.md).
constexpr int kPrefetchAheadBytes = 2048;

inline void prefetch_ahead(const uint8_t* w, const uint8_t* end, int bytes) {
  if (end - w >= kPrefetchAheadBytes + bytes) prefetch_bytes(w + kPrefetchAheadBytes, bytes);
}

// c[j] = (accumulate ? c[j] : 0) + v[j] for j < cols.
inline void store_columns(float* c, const float* v, int cols, bool accumulate) {
  for (int j = 0; j < cols; ++j) c[j] = accumulate ? c[j] + v[j] : v[j];
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
