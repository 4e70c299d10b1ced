// bf16 GEMM in portable C++: the generic level (compiled without ISA flags: SSE2, 16 xmm) and,
// from this same source, the avx2 level (AVX2 + FMA: 16 ymm, the products fused into FMAs) and the
// avx512 level (compiled with AVX-512 F/BW/VL/DQ flags: 32 zmm). The
// arithmetic is written with GCC/Clang vector extensions of one native register width, which the
// compiler lowers to whichever instructions the flags allow; the register-block sizes follow the
// register count. bf16 -> fp32 is exact and needs no widening: a vector of 32-bit words holding
// 2 x kLanes consecutive bf16 gives the even elements as (word << 16) and the odd ones as
// (word & 0xffff0000). Both levels follow the plan of gemm_bf16_plan.hpp:
//   P jk (both operands k-contiguous, e.g. tokens x [N, K] weight): dot products, even and odd k
//     in two fp32 vectors of partial sums, 4 R rows x kDotCols P rows per micro-tile.
//   P kj (P rows run along j, e.g. a weight read as [K, N]), and P jk with a short depth (the LoRA
//     rank): rank-1 updates of a 4 x kAxpyCols tile: per k, kAxpyCols columns of one P row as
//     even/odd vectors, times 4 broadcast R values.
// Only the fp32 summation order differs from a plain loop.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/bf16.hpp"
#include "kernels/gemm_bf16_levels.hpp"
#include "kernels/gemm_bf16_plan.hpp"
#include "kernels/gemm_bf16_store.hpp"
#include "kernels/micro_tile.hpp"
#include "kernels/scratch.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;     // fp32 per zmm
constexpr int kDotCols = 3;    // 4 x 3 x 2 accumulators + 4 x 2 + 2 operands of 32 registers
constexpr int kAxpyPairs = 2;  // 4 x 2 x 2 accumulators + 2 x 2 + 1 operands
#elif defined(__AVX2__)
constexpr int kLanes = 8;      // fp32 per ymm
constexpr int kDotCols = 1;    // 4 x 1 x 2 accumulators + 4 x 2 + 2 operands of 16 registers
constexpr int kAxpyPairs = 1;  // 4 x 1 x 2 accumulators + 1 x 2 + 1 operands
#else
constexpr int kLanes = 4;      // fp32 per xmm
constexpr int kDotCols = 1;    // 4 x 1 x 2 accumulators + 4 x 2 + 2 operands of 16 registers
constexpr int kAxpyPairs = 1;  // 4 x 1 x 2 accumulators + 1 x 2 + 1 operands
#endif
constexpr int kRows = 4;                              // R rows per micro-tile
// Up to this depth the dot products' per-output sums cost more than copying P: rank-1 updates.
constexpr int kShortDepth = 64;
constexpr int kWords = 2 * kLanes;                    // bf16 per vector of 32-bit words
constexpr int kAxpyCols = kAxpyPairs * kWords;        // columns of T per rank-1-update micro-tile

typedef float F32v __attribute__((vector_size(4 * kLanes)));
typedef uint32_t U32v __attribute__((vector_size(4 * kLanes)));

// 2 * kLanes consecutive bf16 as fp32: the even-indexed ones and the odd-indexed ones.
struct EvenOdd {
  F32v even, odd;
};
inline EvenOdd load_bf16(const bf16_t* src) {
  U32v w;
  std::memcpy(&w, src, sizeof w);
  return {(F32v)(w << 16), (F32v)(w & 0xffff0000u)};
}

// t[i * NJ + j] = sum_k r[i][k] * q[j][k]   r: kRows rows, q: NJ rows, both k-contiguous.
template <int NJ>
__attribute__((noinline)) void dot_tile(const bf16_t* const r[kRows], const bf16_t* const q[], int depth, float* t) {
  F32v acc[kRows][NJ][2] = {};
  int k = 0;
  for (; k + kWords <= depth; k += kWords) {
    EvenOdd rv[kRows];
    for (int i = 0; i < kRows; ++i) rv[i] = load_bf16(r[i] + k);
    for (int j = 0; j < NJ; ++j) {
      const EvenOdd qv = load_bf16(q[j] + k);
      for (int i = 0; i < kRows; ++i) {
        acc[i][j][0] += rv[i].even * qv.even;
        acc[i][j][1] += rv[i].odd * qv.odd;
      }
    }
  }
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < NJ; ++j) {
      const F32v sum = acc[i][j][0] + acc[i][j][1];
      float s = 0.0f;
      for (int l = 0; l < kLanes; ++l) s += sum[l];
      for (int kt = k; kt < depth; ++kt) s += bf16_to_float(r[i][kt]) * bf16_to_float(q[j][kt]);
      t[i * NJ + j] = s;
    }
}

// P jk: R [rows, depth] x P^T [cols, depth]; each R micro-tile stays in cache while every P row passes.
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

// t[i * kAxpyCols + c] = sum_k r[i][k] * q[k * ldq + c]   for i < kRows, c < kAxpyCols.
__attribute__((noinline)) void axpy_tile(const bf16_t* const r[kRows], const bf16_t* q, int64_t ldq, int depth,
                                         float* t) {
  F32v acc[kRows][kAxpyPairs][2] = {};
  for (int k = 0; k < depth; ++k) {
    EvenOdd qv[kAxpyPairs];
    for (int v = 0; v < kAxpyPairs; ++v) qv[v] = load_bf16(q + k * ldq + v * kWords);
    for (int i = 0; i < kRows; ++i) {
      const float a = bf16_to_float(r[i][k]);
      for (int v = 0; v < kAxpyPairs; ++v) {
        acc[i][v][0] += a * qv[v].even;
        acc[i][v][1] += a * qv[v].odd;
      }
    }
  }
  for (int i = 0; i < kRows; ++i)
    for (int v = 0; v < kAxpyPairs; ++v)
      for (int l = 0; l < kLanes; ++l) {
        t[i * kAxpyCols + v * kWords + 2 * l] = acc[i][v][0][l];
        t[i * kAxpyCols + v * kWords + 2 * l + 1] = acc[i][v][1][l];
      }
}

// P kj, or P jk with a short depth: one kAxpyCols-wide slab of P at a time, read once per R
// micro-tile. A jk slab, or the last, partial one, is first copied into a zero-padded
// [depth, kAxpyCols] buffer.
void gemm_axpy(const GemmPlan& p) {
  float t[kRows * kAxpyCols];
  for (int j0 = 0; j0 < p.cols; j0 += kAxpyCols) {
    const int jn = std::min(kAxpyCols, p.cols - j0);
    const bf16_t* q = p.p + j0;
    int64_t ldq = p.ldp;
    if (jn < kAxpyCols || p.p_layout == PLayout::jk) {
      auto* slab = static_cast<bf16_t*>(
          thread_scratch(ScratchSlot::packed, sizeof(bf16_t) * static_cast<size_t>(p.depth) * kAxpyCols));
      const int64_t k_step = p.p_layout == PLayout::kj ? p.ldp : 1, j_step = p.p_layout == PLayout::kj ? 1 : p.ldp;
      const bf16_t* src = p.p + j0 * j_step;  // P(k, j0 + c) = src[k * k_step + c * j_step]
      for (int k = 0; k < p.depth; ++k)
        for (int c = 0; c < kAxpyCols; ++c) slab[k * kAxpyCols + c] = c < jn ? src[k * k_step + c * j_step] : bf16_t(0);
      q = slab;
      ldq = kAxpyCols;
    }
    for (int i0 = 0; i0 < p.rows; i0 += kRows) {
      const bf16_t* r[kRows];
      row_pointers(p, i0, r);
      axpy_tile(r, q, ldq, p.depth, t);
      store_block(p, i0, j0, std::min(kRows, p.rows - i0), jn, t, kAxpyCols);
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
    gemm_axpy(plan);
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
