// bf16 GEMM on AMX tiles, written against the tile layer (amx/tile.hpp) and compiled twice: with
// the AMX instructions (level amx) and with their portable emulation (level amx_emulated, no ISA
// flags; the packing and tail code here is portable C++ for that reason).
//
// Follows the plan of gemm_bf16_plan.hpp, T[rows, cols] = R[rows, depth] x P(depth, cols). Plans
// whose P is stored kj and whose R has few rows (the backward's products for the tokens of one
// expert) go to gemm_bf16_amx_parity.cpp, which reads P in place, unless P is narrower than one of
// its column blocks (the LoRA B matrices, r columns); the others are handled here:
//   - R (the weight in the forward, [N, K] as stored; the tokens in the backward) feeds the "A"
//     tiles straight from memory: 16 rows x 32 k per tile, read with R's own row stride, never
//     packed. Only partial row groups (rows % 16) and the partial last k chunk (depth % 32) go
//     through zero-padded copies, made once per call.
//   - P (the tokens in the forward; the weight in the backward, read as [K, N]) is packed into
//     VNNI form (pack_vnni.hpp): k pairs padded to whole tiles, 16 columns x 16 k pairs per 1 KB
//     "B" tile. The forward packs the tokens once (all k) and streams the weight once; the
//     backward packs the weight a block of rows at a time, across as many columns as possible, so
//     that it is read along its rows, and keeps fp32 partial sums between blocks (panel_shape).
//   - Micro-kernel: up to 2 R tiles x 2 P tiles -> 4 fp32 result tiles; results go through a small
//     buffer to C (alpha, accumulate, C or C^T: gemm_bf16_store.hpp).
// Tile registers: results 0..3 (C(a, b) = 2a + b), R tiles 4 and 5, P tiles 6 and 7.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_bf16_amx_tiles.hpp"
#include "kernels/gemm_bf16_levels.hpp"
#include "kernels/gemm_bf16_plan.hpp"
#include "kernels/gemm_bf16_store.hpp"
#include "kernels/pack_vnni.hpp"
#include "kernels/scratch.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

static_assert(kResultCols == kVnniCols, "a packed column group is one P tile wide");

enum : int { kC00 = 0, kC01 = 1, kC10 = 2, kC11 = 3, kR0 = 4, kR1 = 5, kP0 = 6, kP1 = 7 };

// Where the R tiles of one 16-row group come from: chunk kc at base + kc * 32 with row stride ld,
// except the partial last chunk, which is the zero-padded 16 x 32 copy `k_tail` when not null.
struct RowGroup {
  const bf16_t* base;
  int64_t ld;
  const bf16_t* k_tail;
};

// The row groups of R, with the zero-padded copies they need in ScratchSlot::row_tail: a 16 x 32
// k-tail tile per full group when depth % 32 != 0, and the last group whole (16 x chunks * 32)
// when rows % 16 != 0.
class RowGroups {
 public:
  RowGroups(const GemmPlan& p, int chunks) : p_(p), chunks_(chunks) {
    const int groups = (p.rows + kTileRows - 1) / kTileRows;
    full_groups_ = p.rows / kTileRows;
    const bool k_tail = p.depth % kTileK != 0;
    const int64_t tail_tiles = k_tail ? full_groups_ : 0;
    const int64_t padded_width = int64_t(chunks) * kTileK;
    const int64_t elems = tail_tiles * kTileRows * kTileK + (groups > full_groups_ ? kTileRows * padded_width : 0);
    buffer_ = static_cast<bf16_t*>(thread_scratch(ScratchSlot::row_tail, sizeof(bf16_t) * elems));
    const int last = p.depth - (chunks - 1) * kTileK;  // k in the last chunk
    if (k_tail)
      for (int g = 0; g < full_groups_; ++g)
        copy_padded(p.r + int64_t(g) * kTileRows * p.ldr + (chunks - 1) * kTileK, kTileRows, last, kTileK,
                    buffer_ + int64_t(g) * kTileRows * kTileK);
    row_tail_ = buffer_ + tail_tiles * kTileRows * kTileK;
    if (groups > full_groups_)
      copy_padded(p.r + int64_t(full_groups_) * kTileRows * p.ldr, p.rows - full_groups_ * kTileRows, p.depth,
                  padded_width, row_tail_);
  }

  RowGroup operator[](int g) const {
    if (g == full_groups_) return {row_tail_, int64_t(chunks_) * kTileK, nullptr};
    const bool k_tail = p_.depth % kTileK != 0;
    return {p_.r + int64_t(g) * kTileRows * p_.ldr, p_.ldr,
            k_tail ? buffer_ + int64_t(g) * kTileRows * kTileK : nullptr};
  }

 private:
  // dst [16, width] = src rows [rows, cols] (stride p_.ldr), zero elsewhere.
  void copy_padded(const bf16_t* src, int rows, int cols, int64_t width, bf16_t* dst) const {
    std::memset(dst, 0, sizeof(bf16_t) * kTileRows * width);
    for (int i = 0; i < rows; ++i) std::memcpy(dst + i * width, src + i * p_.ldr, sizeof(bf16_t) * cols);
  }

  const GemmPlan& p_;
  int chunks_;
  int full_groups_ = 0;
  bf16_t* buffer_ = nullptr;
  bf16_t* row_tail_ = nullptr;
};

// R tiles read in place also ask for their rows' line kPrefetchChunks chunks on while that chunk
// exists (prefetch_tile_rows; no address past the rows): the forward's weight streams went from
// 16-18 to 18-20 GB/s on 2 threads, 4-6 ms less per DeepSeek-V2-Lite SFT forward (measured
// interleaved in one process).
constexpr int kPrefetchChunks = 4;

template <int T>
inline void load_r(const RowGroup& g, int kc, int chunks) {
  if (g.k_tail != nullptr && kc == chunks - 1) {
    tile::load<T>(g.k_tail, kTileK * sizeof(bf16_t));
    return;
  }
  const int64_t stride = g.ld * int64_t(sizeof(bf16_t));
  if (kc + kPrefetchChunks < chunks) prefetch_tile_rows(g.base + (kc + kPrefetchChunks) * kTileK, stride, 1);
  tile::load<T>(g.base + kc * kTileK, stride);
}

// Result tiles for NR (1, 2) row groups x NC (1, 2) packed column groups over `count` chunks
// starting at chunk `first` (R's numbering; the packed groups hold exactly those chunks). The
// tiles start from zero, or from c_in when not null, and end in c_out; each holds row group a,
// column group b at + a * 16 * ld + b * 16 (fp32, row stride in_ld or out_ld).
template <int NR, int NC>
void micro_kernel(const RowGroup& g0, const RowGroup& g1, const bf16_t* p0, const bf16_t* p1, int first, int count,
                  int chunks, const float* c_in, int64_t in_ld, float* c_out, int64_t out_ld) {
  constexpr int64_t kPStride = kVnniCols * 2 * sizeof(bf16_t);  // 64 bytes per packed pair
  if (c_in == nullptr) {
    tile::zero<kC00>();
    if constexpr (NC == 2) tile::zero<kC01>();
    if constexpr (NR == 2) tile::zero<kC10>();
    if constexpr (NR == 2 && NC == 2) tile::zero<kC11>();
  } else {
    const int64_t stride = in_ld * int64_t(sizeof(float)), row1 = kTileRows * in_ld;
    tile::load<kC00>(c_in, stride);
    if constexpr (NC == 2) tile::load<kC01>(c_in + kResultCols, stride);
    if constexpr (NR == 2) tile::load<kC10>(c_in + row1, stride);
    if constexpr (NR == 2 && NC == 2) tile::load<kC11>(c_in + row1 + kResultCols, stride);
  }
  for (int i = 0; i < count; ++i) {
    const int64_t p_off = int64_t(i) * kTilePairs * kVnniCols * 2;
    load_r<kR0>(g0, first + i, chunks);
    tile::load<kP0>(p0 + p_off, kPStride);
    tile::dpbf16ps<kC00, kR0, kP0>();
    if constexpr (NC == 2) {
      tile::load<kP1>(p1 + p_off, kPStride);
      tile::dpbf16ps<kC01, kR0, kP1>();
    }
    if constexpr (NR == 2) {
      load_r<kR1>(g1, first + i, chunks);
      tile::dpbf16ps<kC10, kR1, kP0>();
      if constexpr (NC == 2) tile::dpbf16ps<kC11, kR1, kP1>();
    }
  }
  const int64_t stride = out_ld * int64_t(sizeof(float)), row1 = kTileRows * out_ld;
  tile::store<kC00>(c_out, stride);
  if constexpr (NC == 2) tile::store<kC01>(c_out + kResultCols, stride);
  if constexpr (NR == 2) tile::store<kC10>(c_out + row1, stride);
  if constexpr (NR == 2 && NC == 2) tile::store<kC11>(c_out + row1 + kResultCols, stride);
}

// How much of P is packed at once: `cols` columns (a multiple of 32) x `chunks` chunks of 32 k.
//   P jk (the tokens): every chunk, and as many columns as fit kPanelBytes, so that the weight R is
//     streamed once per call for up to a few hundred tokens; partial sums stay in the tiles.
//   P kj (a weight read as [K, N]): a block of rows as wide as possible, so that the weight is
//     read along its rows: columns while the fp32 partial sums of all rows x those columns fit
//     kAccBytes, chunks while the packed block fits kBlockBytes. Partial sums wait in
//     ScratchSlot::accumulators between blocks.
struct PanelShape {
  int cols, chunks;
};
constexpr int64_t kAccBytes = int64_t(256) << 10;
constexpr int64_t kBlockBytes = int64_t(512) << 10;

PanelShape panel_shape(const GemmPlan& p, int chunks) {
  constexpr int kUnit = 2 * kVnniCols;
  if (p.p_layout == PLayout::jk) return {panel_columns(p.cols, chunks * kTilePairs, kUnit), chunks};
  const int64_t rows = (p.rows + 2 * kTileRows - 1) / (2 * kTileRows) * (2 * kTileRows);
  const int64_t fit_cols = std::max<int64_t>(kUnit, kAccBytes / (rows * int64_t(sizeof(float))) / kUnit * kUnit);
  const int cols = static_cast<int>(std::min<int64_t>(fit_cols, (p.cols + kUnit - 1) / kUnit * kUnit));
  const int64_t chunk_bytes = int64_t(cols) * kTilePairs * 2 * int64_t(sizeof(bf16_t));
  return {cols, static_cast<int>(std::clamp<int64_t>(kBlockBytes / chunk_bytes, 1, chunks))};
}

void gemm_tiles(const GemmPlan& p) {
  const int chunks = (p.depth + kTileK - 1) / kTileK;
  const PanelShape shape = panel_shape(p, chunks);
  const int64_t group_elems = vnni_group_elems(shape.chunks * kTilePairs);
  auto* panel = static_cast<bf16_t*>(
      thread_scratch(ScratchSlot::packed, sizeof(bf16_t) * (shape.cols / kVnniCols) * group_elems));
  auto* out = static_cast<float*>(thread_scratch(ScratchSlot::tile_out, sizeof(float) * 4 * kTileRows * kResultCols));
  constexpr int64_t kOutLd = 2 * kResultCols;
  const int64_t acc_ld = shape.cols;
  float* acc = nullptr;
  if (shape.chunks < chunks) {
    const int64_t acc_rows = (p.rows + 2 * kTileRows - 1) / (2 * kTileRows) * (2 * kTileRows);
    acc = static_cast<float*>(thread_scratch(ScratchSlot::accumulators, sizeof(float) * acc_rows * acc_ld));
  }
  const RowGroups groups(p, chunks);
  const tile::Scope scope(tile::full_config());
  for (int j0 = 0; j0 < p.cols; j0 += shape.cols) {
    const int jn = std::min(shape.cols, p.cols - j0);
    for (int c0 = 0; c0 < chunks; c0 += shape.chunks) {
      const int cn = std::min(shape.chunks, chunks - c0);
      const bool first = c0 == 0, last = c0 + cn == chunks;
      const int64_t block_elems = vnni_group_elems(cn * kTilePairs);
      pack_vnni(p, j0, jn, c0 * kTileK, cn * kTilePairs, panel);
      for (int i0 = 0; i0 < p.rows; i0 += 2 * kTileRows) {
        const int g = i0 / kTileRows;
        const bool two_rows = i0 + kTileRows < p.rows;
        const RowGroup g0 = groups[g];
        const RowGroup g1 = two_rows ? groups[g + 1] : g0;
        for (int jb = 0; jb < jn; jb += 2 * kVnniCols) {
          const bf16_t* p0 = panel + (jb / kVnniCols) * block_elems;
          const bool two_cols = jb + kVnniCols < jn;
          float* acc_block = acc != nullptr ? acc + i0 * acc_ld + jb : nullptr;
          const float* c_in = first ? nullptr : acc_block;
          float* c_out = last ? out : acc_block;
          const int64_t out_ld = last ? kOutLd : acc_ld;
          if (two_rows && two_cols)
            micro_kernel<2, 2>(g0, g1, p0, p0 + block_elems, c0, cn, chunks, c_in, acc_ld, c_out, out_ld);
          else if (two_rows)
            micro_kernel<2, 1>(g0, g1, p0, p0, c0, cn, chunks, c_in, acc_ld, c_out, out_ld);
          else if (two_cols)
            micro_kernel<1, 2>(g0, g0, p0, p0 + block_elems, c0, cn, chunks, c_in, acc_ld, c_out, out_ld);
          else
            micro_kernel<1, 1>(g0, g0, p0, p0, c0, cn, chunks, c_in, acc_ld, c_out, out_ld);
          if (last)
            store_block(p, i0, j0 + jb, std::min(2 * kTileRows, p.rows - i0), std::min(2 * kVnniCols, jn - jb), out,
                        kOutLd);
        }
      }
    }
  }
}

}  // namespace

void gemm_bf16(const GemmArgs& args) {
  const GemmPlan plan = plan_gemm_bf16(args);
  if (plan.rows == 0 || plan.cols == 0) return;
  if (plan.p_layout == PLayout::kj && plan.rows <= kParityMaxRows && plan.cols >= kParityMinCols)
    gemm_bf16_amx_parity(plan);
  else
    gemm_tiles(plan);
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
