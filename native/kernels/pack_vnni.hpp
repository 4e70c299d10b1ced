// Packing of the plan's P operand into the "VNNI" form that AVX512-BF16 (vdpbf16ps) and AMX
// (tdpbf16ps) read: for each group of 16 columns, each pair of consecutive k holds the 16
// columns' two values side by side, 64 bytes per pair, which is one zmm vector or one tile row.
// Portable; compiled per level (autovectorised where the level has AVX-512).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_bf16_plan.hpp"
#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

constexpr int kVnniCols = 16;  // columns per packed group: 16 fp32 lanes of a zmm / tile row

// Elements of one packed column group: kpairs pairs x 16 columns x 2.
inline int64_t vnni_group_elems(int kpairs) { return static_cast<int64_t>(kpairs) * kVnniCols * 2; }

// Packed panels are kept to about this size: half of a 2 MB L2, so that the panel and the
// streamed R rows stay in L2 while every R row meets every packed column.
constexpr int64_t kPanelBytes = int64_t(1) << 20;

// Columns of P packed per panel: whole multiples of `unit` (a multiple of 16; the micro-kernel's
// width), at least one unit, at most what P has (rounded up), and within kPanelBytes otherwise.
inline int panel_columns(int cols, int kpairs, int unit) {
  const int64_t unit_bytes = vnni_group_elems(kpairs) * int64_t(sizeof(bf16_t)) * (unit / kVnniCols);
  const int64_t fit = std::max<int64_t>(1, kPanelBytes / unit_bytes);
  const int64_t needed = (cols + unit - 1) / unit;
  return static_cast<int>(std::min(fit, needed)) * unit;
}

// Packs P(k0 + k, j0 + j) for k < 2 * kpairs, j < ncols into dst: [ceil(ncols / 16)][kpairs][16][2],
//   dst[((g * kpairs + k / 2) * 16 + c) * 2 + k % 2] = P(k0 + k, j0 + 16 g + c),
// zero where k0 + k >= depth or the column is past ncols (k0 is even). The AMX kernel packs whole
// tiles (kpairs a multiple of 16), the AVX512-BF16 kernel ceil(depth / 2) pairs.
// P is read in runs along its memory order: kj: 32 rows (16 pairs) at a time, 16 columns of each
// per step, so that many rows stream at once; jk: one column at a time along k.
// kj also asks for the line kPackPrefetchBytes on in each of the 32 rows once per 64-byte line:
// 32 streams are more than the hardware prefetcher follows (DeepSeek-V2-Lite SFT backward at
// q = 512, which packs its weights: 200 -> 165 ms, medians of variants interleaved in one process).
// Only lines that start inside P's columns are asked for (no address past the array is formed).
constexpr int64_t kPackPrefetchBytes = 256;
constexpr int64_t kPackPrefetchElems = kPackPrefetchBytes / sizeof(bf16_t);

inline void pack_vnni(const GemmPlan& p, int j0, int ncols, int k0, int kpairs, bf16_t* dst) {
  constexpr int kStepPairs = 16;
  const int depth = p.depth;
  const int groups = (ncols + kVnniCols - 1) / kVnniCols;
  const int64_t pair_elems = kVnniCols * 2;
  if (p.p_layout == PLayout::kj) {
    for (int kp0 = 0; kp0 < kpairs; kp0 += kStepPairs) {
      const int k_end = std::min(depth, k0 + 2 * std::min(kpairs, kp0 + kStepPairs));
      for (int g = 0; g < groups; ++g) {
        const int c0 = g * kVnniCols;
        if (g % 2 == 0 && j0 + c0 + kPackPrefetchElems < p.cols)  // 2 groups of 16 columns per 64-byte line
          for (int k = k0 + 2 * kp0; k < k_end; ++k)
            __builtin_prefetch(reinterpret_cast<const char*>(p.p + k * p.ldp + j0 + c0) + kPackPrefetchBytes);
        const bool whole_group = c0 + kVnniCols <= ncols;
        bf16_t* d = dst + g * vnni_group_elems(kpairs) + kp0 * pair_elems;
        for (int kp = kp0; kp < std::min(kpairs, kp0 + kStepPairs); ++kp, d += pair_elems) {
          const int k = k0 + 2 * kp;
          const bf16_t* r0 = p.p + std::min(k, depth - 1) * p.ldp + j0 + c0;  // clamped rows are not read
          const bf16_t* r1 = p.p + std::min(k + 1, depth - 1) * p.ldp + j0 + c0;
          if (whole_group && k + 1 < depth) {
            uint32_t words[kVnniCols];  // little endian: the even k in the low half
            for (int c = 0; c < kVnniCols; ++c) words[c] = r0[c] | static_cast<uint32_t>(r1[c]) << 16;
            std::memcpy(d, words, sizeof words);
            continue;
          }
          for (int c = 0; c < kVnniCols; ++c) {
            const bool col = c0 + c < ncols;
            d[2 * c] = col && k < depth ? r0[c] : bf16_t(0);
            d[2 * c + 1] = col && k + 1 < depth ? r1[c] : bf16_t(0);
          }
        }
      }
    }
    return;
  }
  const int left = std::max(0, depth - k0);                 // k of P from k0 on
  const int whole_pairs = std::min(kpairs, left / 2);       // pairs with both k inside depth
  const bool half_pair = whole_pairs < kpairs && left % 2;  // then the last k alone
  for (int g = 0; g < groups; ++g, dst += vnni_group_elems(kpairs)) {
    const int cn = std::min(kVnniCols, ncols - g * kVnniCols);
    if (cn < kVnniCols || whole_pairs < kpairs) std::memset(dst, 0, sizeof(bf16_t) * vnni_group_elems(kpairs));
    for (int c = 0; c < cn; ++c) {
      bf16_t* d = dst + 2 * c;
      const bf16_t* col = p.p + (j0 + g * kVnniCols + c) * p.ldp + k0;
      for (int kp = 0; kp < whole_pairs; ++kp) std::memcpy(d + kp * pair_elems, col + 2 * kp, 4);
      if (half_pair) d[whole_pairs * pair_elems] = col[2 * whole_pairs];
    }
  }
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
