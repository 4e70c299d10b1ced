// bf16 GEMM with AVX512-BF16 (vdpbf16ps: 16 fp32 lanes, each += a pair of bf16 products), level
// avx512_bf16. Follows the plan of gemm_bf16_plan.hpp:
//   P jk (both operands k-contiguous: the forward, tokens x [N, K] weight): dot products with no
//     packing at all; a zmm holds 32 consecutive k of one row, 4 R rows x up to 4 P rows per
//     micro-tile, the K tail through masked loads, horizontal sums at the end.
//   P kj (P rows run along j: the backward's weight read as [K, N], or tokens read as [K, M]), and
//     P jk with a short depth (the LoRA rank): P is packed into VNNI form (pack_vnni.hpp) a panel
//     of columns at a time, then each k pair of an R row is broadcast against 4 packed vectors
//     (64 columns), 4 R rows per micro-tile.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_bf16_levels.hpp"
#include "kernels/gemm_bf16_plan.hpp"
#include "kernels/gemm_bf16_store.hpp"
#include "kernels/pack_vnni.hpp"
#include "kernels/scratch.hpp"
#include "kernels/micro_tile.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

constexpr int kRows = 4;        // R rows per micro-tile
constexpr int kDotCols = 4;     // P rows per dot micro-tile
constexpr int kPanelVecs = 4;   // packed vectors (16 columns each) per rank-update micro-tile
constexpr int kPanelCols = kPanelVecs * kVnniCols;
constexpr int kChunk = 32;      // bf16 per zmm
// Up to this depth the dot products' per-output sums cost more than packing P: rank updates.
constexpr int kShortDepth = 64;

// The sum of the 16 lanes (GCC 12's _mm512_reduce_add_ps trips -Wuninitialized in its header).
inline float sum_lanes(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float s = 0.0f;
  for (float x : lanes) s += x;
  return s;
}

inline __m512bh load_bf16(const bf16_t* src) { return (__m512bh)_mm512_loadu_si512(src); }
inline __m512bh load_bf16(const bf16_t* src, __mmask32 mask) { return (__m512bh)_mm512_maskz_loadu_epi16(mask, src); }

// t[i * NJ + j] = sum_k r[i][k] * q[j][k]   for i < kRows, j < NJ.
template <int NJ>
__attribute__((noinline)) void dot_tile(const bf16_t* const r[kRows], const bf16_t* const q[], int depth, float* t) {
  __m512 acc[kRows][NJ];
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < NJ; ++j) acc[i][j] = _mm512_setzero_ps();
  auto step = [&](int k, auto load) {
    __m512bh qv[NJ];
    for (int j = 0; j < NJ; ++j) qv[j] = load(q[j] + k);
    for (int i = 0; i < kRows; ++i) {
      const __m512bh rv = load(r[i] + k);
      for (int j = 0; j < NJ; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], rv, qv[j]);
    }
  };
  int k = 0;
  for (; k + kChunk <= depth; k += kChunk) step(k, [](const bf16_t* s) { return load_bf16(s); });
  if (k < depth) {
    const __mmask32 mask = static_cast<__mmask32>((uint64_t(1) << (depth - k)) - 1);
    step(k, [mask](const bf16_t* s) { return load_bf16(s, mask); });
  }
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < NJ; ++j) t[i * NJ + j] = sum_lanes(acc[i][j]);
}

void gemm_dot(const GemmPlan& p) {
  float t[kRows * kDotCols];
  for (int i0 = 0; i0 < p.rows; i0 += kRows) {
    const bf16_t* r[kRows];
    row_pointers(p, i0, r);
    for (int j0 = 0; j0 < p.cols; j0 += kDotCols) {
      const int jn = std::min(kDotCols, p.cols - j0);
      const bf16_t* q[kDotCols];
      for (int j = 0; j < jn; ++j) q[j] = p.p + (j0 + j) * p.ldp;
      with_static_count<kDotCols>(jn, [&](auto nj) { dot_tile<nj()>(r, q, p.depth, t); });
      store_block(p, i0, j0, std::min(kRows, p.rows - i0), jn, t, jn);
    }
  }
}

// acc[i][v] += pair word w[i] of R row i . packed vector v of one k pair.
template <int NV>
__attribute__((always_inline)) inline void rank_update_step(__m512 (&acc)[kRows][NV], const bf16_t* pair,
                                                            int64_t group_elems, const int32_t (&w)[kRows]) {
  __m512bh pv[NV];
  for (int v = 0; v < NV; ++v) pv[v] = load_bf16(pair + v * group_elems);
  for (int i = 0; i < kRows; ++i) {
    const __m512bh a = (__m512bh)_mm512_set1_epi32(w[i]);
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], a, pv[v]);
  }
}

// t[i * ldt + 16 v + c] = sum_k r[i][k] * P(k, 16 v + c)   for i < kRows, v < NV; `panel` holds NV
// packed column groups, group_elems apart.
template <int NV>
__attribute__((noinline)) void rank_update_tile(const bf16_t* const r[kRows], const bf16_t* panel,
                                                int64_t group_elems, int depth, float* t, int64_t ldt) {
  __m512 acc[kRows][NV];
  for (int i = 0; i < kRows; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  const int full_pairs = depth / 2;
  int32_t w[kRows];
  for (int kp = 0; kp < full_pairs; ++kp) {
    for (int i = 0; i < kRows; ++i) std::memcpy(&w[i], r[i] + 2 * kp, 4);
    rank_update_step<NV>(acc, panel + kp * kVnniCols * 2, group_elems, w);
  }
  if (depth % 2 != 0) {  // the last k alone; its packed partner is zero
    for (int i = 0; i < kRows; ++i) w[i] = r[i][depth - 1];
    rank_update_step<NV>(acc, panel + full_pairs * kVnniCols * 2, group_elems, w);
  }
  for (int i = 0; i < kRows; ++i)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(t + i * ldt + v * kVnniCols, acc[i][v]);
}

// P kj or short P jk: P packed a panel (kPanelBytes) of columns at a time; every R micro-tile meets
// the panel.
void gemm_rank_update(const GemmPlan& p) {
  const int kpairs = (p.depth + 1) / 2;
  const int64_t group_elems = vnni_group_elems(kpairs);
  const int panel_cols = panel_columns(p.cols, kpairs, kPanelCols);
  auto* panel = static_cast<bf16_t*>(
      thread_scratch(ScratchSlot::packed, sizeof(bf16_t) * (panel_cols / kVnniCols) * group_elems));
  alignas(64) float t[kRows * kPanelCols];
  for (int j0 = 0; j0 < p.cols; j0 += panel_cols) {
    const int jn = std::min(panel_cols, p.cols - j0);
    pack_vnni(p, j0, jn, 0, kpairs, panel);
    for (int i0 = 0; i0 < p.rows; i0 += kRows) {
      const bf16_t* r[kRows];
      row_pointers(p, i0, r);
      for (int jb = 0; jb < jn; jb += kPanelCols) {
        const int cn = std::min(kPanelCols, jn - jb);
        const bf16_t* block = panel + (jb / kVnniCols) * group_elems;
        with_static_count<kPanelVecs>((cn + kVnniCols - 1) / kVnniCols, [&](auto nv) {
          rank_update_tile<nv()>(r, block, group_elems, p.depth, t, kPanelCols);
        });
        store_block(p, i0, j0 + jb, std::min(kRows, p.rows - i0), cn, t, kPanelCols);
      }
    }
  }
}

}  // namespace

void gemm_bf16(const GemmArgs& args) {
  const GemmPlan plan = plan_gemm_bf16(args);
  if (plan.rows == 0 || plan.cols == 0) return;
  if (plan.p_layout == PLayout::jk && plan.depth > kShortDepth)
    gemm_dot(plan);
  else
    gemm_rank_update(plan);
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
