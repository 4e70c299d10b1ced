// What the formats' quantized GEMMs on AMX-INT8 tiles share (native/formats/*/gemm_amx.cpp),
// written against the tile layer (amx/tile.hpp) and compiled twice: with the AMX instructions
// (level amx) and with their portable emulation (level amx_emulated, no ISA flags; the code around
// the tiles is portable C++ with GCC vector types for that reason).
//
// One tile product per 64-k unit (the activations' scale group; a product must not cross it):
//   A  16 activation rows x 64 int8, copied once per call into packed tiles (each unit's 16 rows in
//      1 KB, zero rows past m): a tile load then reads 16 consecutive lines, not 16 lines k_padded
//      bytes apart (k_padded = 2048 puts them all in two L1 sets), once per column block (INT8
//      [48, 2048] x [1408, 2048] cache-hot, 1 thread: 0.343 -> 0.313 ms)
//   B  the unit's 16 quads x 64 B of one 16-column block, in one of two ways, the format's policy F:
//      in place (F::kRequantized false): unsigned bytes straight from the packed weight (TDPBSUD),
//        the block's 16 fp32 column scales at its start and its units F::kHeaderBytes on; the
//        row's zero-point term F::row_offset(scale, sum, groups) and the column scales are
//        applied once per row at the end: out = (acc - offset) * column scale;
//      requantized (F::kRequantized true): each unit of F::kSourceUnitBytes is turned into int8
//        tiles, signed (F::kSignedTiles, TDPBSSD) or unsigned (TDPBSUD), and F::kColumnValues
//        values per column by F::requantize_unit, once per block and call, into a thread-local
//        buffer: one scale S per (column, unit) and, with F::kUnitZeros, a zero term -z per
//        (column, unit) (int4_kgroup: its zero points, in codes); out = acc
//   C  16 x 16 exact int32 sums, stored and folded into the row tile's fp32 accumulators:
//      acc = fma(C, a_s, acc) in place; acc = fma(C, S * a_s, acc) requantized; with unit zeros
//      acc = fma(fma(-z, a_sum, C), S * a_s, acc), the inner fma exact (int4_kgroup/layout.hpp).
// The folds use an explicit FMA at both levels (the emulated one rounds once too), and nothing
// else is left to FMA contraction, so amx and amx_emulated give bit-identical results.
// A block's row tiles go in passes of up to three (kMaxPassRows; 4 -> 2 + 2, 5 -> 2 + 3): a pass
// loads each unit's B tile once for its row tiles, so that R products read R + 1 KB of tiles from
// L2 instead of 2R KB. Loads, products, stores and folds of consecutive steps (unit, row tile)
// overlap as a software pipeline (four C tiles and two A and B tiles in turn). INT8
// [48, 2048] x [1408, 2048], 1 thread: 0.285 -> 0.23 ms cache-hot, 0.47 -> 0.40-0.43 ms with the
// weights read from memory; int4_group16 cache-hot 0.53 -> 0.46 ms.
// A requantization costs about as much vector work as three row tiles' pipelines per block
// (measured cache-hot for int4_group16 on [m, 2048] x [1408, 2048], 1 thread: ~0.35 of ~0.45 ms at
// m = 16), so with two or more row tiles the next block is requantized inside the current block's
// passes, where the vector units wait for the tile unit (m = 64: 0.75 ms instead of 0.85 ms
// requantizing each block before its row tiles, measured before the passes). int4_kgroup only
// unpacks nibbles, which even one row tile's pass hides (F::kOverlapRowTiles; m = 16 with the
// weights read from memory, 1 thread: 0.364 -> 0.275 ms).
// The weight bytes read next (INT8: the next block's B tiles; a requantized format: the source of
// the block after the next, requantized during the next) are asked for into L2 (prefetcht2) a few
// lines at the start of every step of every pass (WeightStream). Tile products hold back the
// instructions behind them, so requests issued after the products, a whole unit at once or into
// L1 (prefetcht0) left the memory idle under the products. INT8 [48, 2048] x [1408, 2048] with the
// weights read from memory, 1 thread: 0.47-0.52 -> 0.42-0.43 ms (0.29-0.32 ms cache-hot); the
// AMXINT8 prefill in docs/performance.md. INT4 (its requantization reads the source into L1 from
// L2) is unchanged within noise; prefetcht0 shares made it 30% slower.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernels/amx/tile.hpp"
#include "kernels/quant_kernel_common.hpp"
#include "kernels/scratch.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace amx_pipeline {

using namespace quant_layout;

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

constexpr int kTileRows = tile::kMaxRows;  // 16 rows per row tile
static_assert(kCols * 4 == tile::kMaxColBytes, "a C tile row is one 16-column block of int32");
static_assert(kUnitK == tile::kMaxColBytes && kUnitQuads == tile::kMaxRows, "one unit is one full A / B tile");

// Four C tiles in turn (kTileSets units in flight), two A and two B tiles.
constexpr int kTileSets = 4;
enum : int { kC0 = 0, kA0 = 4, kA1 = 5, kB0 = 6, kB1 = 7 };

// Every tile is 16 rows x 64 bytes (tile::full_config(); C: 16 x 16 int32; A: 16 rows x 64 k; B: 16
// quads x 64 B).

// v = the bytes at p (out-parameter: a by-value 64-byte vector changes the ABI without AVX-512).
template <class V>
inline void load_vec(V& v, const void* p) {
  std::memcpy(&v, p, sizeof v);
}

// v = x in every lane, a broadcast (`v16f{} + x` is not one: it turns -0 into +0); an
// out-parameter, as in load_vec.
inline void splat(v16f& v, float x) {
#if defined(__AVX512F__)
  v = (v16f)_mm512_set1_ps(x);
#else
  for (int l = 0; l < 16; ++l) v[l] = x;
#endif
}

// acc = fma(a, b, acc) per lane, rounded once at both levels.
inline void fmadd(v16f& acc, const v16f& a, const v16f& b) {
#if defined(__AVX512F__)
  acc = (v16f)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#else
  for (int l = 0; l < 16; ++l) acc[l] = __builtin_fmaf(a[l], b[l], acc[l]);
#endif
}

// A whole block of a requantized format: unit u into tiles + u * kTileBytes and its column values
// (scales, then zero terms) to columns + u * F::kColumnValues. When `next` is not null, asks for
// the next block on the way.
template <class F>
void requantize_block(const uint8_t* block, int units, uint8_t* tiles, float* columns, const uint8_t* next) {
  for (int u = 0; u < units; ++u) {
    if (next) prefetch_bytes(next + int64_t(u) * F::kSourceUnitBytes, F::kSourceUnitBytes);
    F::requantize_unit(block + int64_t(u) * F::kSourceUnitBytes, tiles + int64_t(u) * kTileBytes,
                       columns + u * F::kColumnValues);
  }
}

// The weight bytes a block's passes ask for on the way: `lines` cache lines from `base` (null:
// none) over the `steps` pipeline steps of all the block's passes, `share` lines per step, step s
// (counted over the passes in order) taking share number s, so that each line is asked for once.
struct WeightStream {
  const uint8_t* base = nullptr;
  int lines = 0, share = 0;

  WeightStream(const uint8_t* p, int64_t bytes, int steps) : base(p), lines(int((bytes + 63) / 64)) {
    share = (lines + steps - 1) / steps;
  }

  void ask(int step) const {
    if (!base) return;
    const int first = step * share, last = std::min(first + share, lines);
    for (int l = first; l < last; ++l) __builtin_prefetch(base + int64_t(l) * 64, 0, 1);  // prefetcht2
  }
};

// ---- activation row tiles ----------------------------------------------------------------------

// The A side of one row tile: its packed int8 tiles (unit g at q + g * kTileBytes, rows kUnitK
// bytes apart); scale [units][16], for formats with unit zeros the activation sums sum [units][16],
// and for INT8 the zero-point term offset [16] per row (zero for rows past m).
struct RowTile {
  const int8_t* q;
  const float* scale;
  const float* sum;
  const float* offset;
  int rows;
};

// Every row tile of a call, packed once (ScratchSlot::row_tail).
template <class F>
class RowTiles {
 public:
  RowTiles(const QuantGemmArgs& args, const QuantActLayout& layout)
      : args_(args), units_(layout.groups), tiles_((args.m + kTileRows - 1) / kTileRows) {
    const int64_t scale_bytes = sizeof(float) * tiles_ * kTileRows * ((F::kUnitZeros ? 2 : 1) * units_ + 1);
    const int64_t tile_bytes = int64_t(tiles_) * units_ * kTileBytes;
    auto* base = static_cast<uint8_t*>(thread_scratch(ScratchSlot::row_tail, scale_bytes + tile_bytes));
    scale_ = reinterpret_cast<float*>(base);
    offset_ = scale_ + tiles_ * kTileRows * units_;
    sum_ = offset_ + tiles_ * kTileRows;
    packed_ = reinterpret_cast<int8_t*>(base + scale_bytes);
    std::memset(base, 0, scale_bytes);  // rows past m: zero scales
    if (args.m % kTileRows)  // ... and zero values in the last tile
      std::memset(packed_ + int64_t(tiles_ - 1) * units_ * kTileBytes, 0, int64_t(units_) * kTileBytes);
    for (int i = 0; i < args.m; ++i) {
      const QuantRow a = quant_row(args, layout, i);
      const int t = i / kTileRows, r = i % kTileRows;
      float* scale = scale_ + int64_t(t) * kTileRows * units_ + r;
      int8_t* row = packed_ + int64_t(t) * units_ * kTileBytes + r * kUnitK;
      for (int g = 0; g < units_; ++g) {
        scale[g * kTileRows] = a.scale[g];
        if constexpr (F::kUnitZeros) sum_[int64_t(t) * kTileRows * units_ + g * kTileRows + r] = a.sum[g];
        std::memcpy(row + int64_t(g) * kTileBytes, a.q + int64_t(g) * kUnitK, kUnitK);
      }
      if constexpr (!F::kRequantized) offset_[i] = F::row_offset(a.scale, a.sum, units_);
    }
  }

  int count() const { return tiles_; }

  RowTile operator[](int t) const {
    return {packed_ + int64_t(t) * units_ * kTileBytes, scale_ + int64_t(t) * kTileRows * units_,
            F::kUnitZeros ? sum_ + int64_t(t) * kTileRows * units_ : nullptr, offset_ + t * kTileRows,
            std::min(kTileRows, args_.m - t * kTileRows)};
  }

 private:
  const QuantGemmArgs& args_;
  int units_;
  int tiles_;
  float* scale_ = nullptr;
  float* offset_ = nullptr;
  float* sum_ = nullptr;  // unit zeros only
  int8_t* packed_ = nullptr;
};

// ---- the tile pipeline -------------------------------------------------------------------------

// The tile stages of a step other than its loads: its product into C tile Cj of A tile Aj and B
// tile Bj, and the product's store to sums + Cj * 256 (int32 [16][16]).
template <int Cj, int Aj, int Bj, bool SignedTiles>
inline void multiply_step() {
  constexpr int C = kC0 + Cj, A = kA0 + Aj, B = kB0 + Bj;
  tile::zero<C>();
  if constexpr (SignedTiles)
    tile::dpbssd<C, A, B>();
  else
    tile::dpbsud<C, A, B>();
}

template <int Cj>
inline void store_step(int32_t* sums) {
  tile::store<kC0 + Cj>(sums + Cj * kTileRows * kCols, kCols * sizeof(int32_t));
}

// acc[r] = fma(sums[r] (- the zero term), the row's unit scale (* the unit's column scales S of a
// requantized format), acc[r]); `columns`: a requantized format's column values of the block.
template <class F>
inline void fold_unit(const int32_t* sums, const RowTile& rt, int g, const float* columns, v16f (&acc)[kTileRows]) {
  v16f col_scale = {}, col_zero = {};
  if constexpr (F::kRequantized) load_vec(col_scale, columns + g * F::kColumnValues);
  if constexpr (F::kUnitZeros) load_vec(col_zero, columns + g * F::kColumnValues + kCols);
  const float* row_scale = rt.scale + g * kTileRows;
#pragma GCC unroll 16
  for (int r = 0; r < kTileRows; ++r) {
    v16i sum;
    load_vec(sum, sums + r * kCols);
    v16f d = __builtin_convertvector(sum, v16f);  // exact: |sum| < 2^24
    if constexpr (F::kUnitZeros) {
      v16f row_sum;
      splat(row_sum, rt.sum[g * kTileRows + r]);
      fmadd(d, col_zero, row_sum);  // exact
    }
    v16f m;
    if constexpr (F::kRequantized)
      m = col_scale * row_scale[r];
    else
      splat(m, row_scale[r]);
    fmadd(acc[r], d, m);
  }
}

// Requantized formats: the requantization of the next block, spread over the current block's
// passes (the vector units requantize while the tile unit multiplies): pass p does unit g of
// `block` at the step of g's first product when g % every == phase, so that each unit is done once
// over the `every` passes.
struct RequantWork {
  const uint8_t* block = nullptr;  // null: nothing to do
  uint8_t* tiles = nullptr;
  float* columns = nullptr;
  int every = 1, phase = 0;
};

// Row tiles from which a requantized format requantizes the next block inside the current block's
// passes (F::kOverlapRowTiles): int4_group16's requantization costs about as much vector work as
// three row tiles' folds, so with one row tile there is little to overlap it with (2); int4_kgroup
// only unpacks nibbles, which one row tile's passes hide (1).
template <class F>
constexpr int overlap_row_tiles() {
  if constexpr (F::kRequantized)
    return F::kOverlapRowTiles;
  else
    return 0;
}

// The most row tiles one pass multiplies with each B tile it loads: R row tiles share the unit's
// B tile (R + 1 KB of tile loads per R products instead of 2R KB); their accumulators
// (R x 16 x 16 fp32) live on the stack.
constexpr int kMaxPassRows = 3;

// Steps per unrolled round of a pass of R row tiles: a whole number of rounds of the four C tiles
// and of two units (the B tile alternates per unit).
constexpr int pass_span(int rows) { return rows == 3 ? 12 : 4; }

// step(std::integral_constant<int, P>) for P = 0, 1, ... in order (a pass's unrolled round).
template <class Step, int... P>
inline void each_position(Step& step, std::integer_sequence<int, P...>) {
  (step(std::integral_constant<int, P>{}), ...);
}

// acc[t] = the fp32 sums of row tile rts[t] (t < R) x one column block over all units, as one
// software pipeline of units x R steps, step s = (unit s / R, row tile s % R): step s asks for
// its share of `stream` (as step first_step + s), multiplies step s - 1, stores step s - 3, loads
// the tiles of step s (the unit's B tile only with its first row tile) and folds step s - 4, so
// that no tile instruction waits for the one just before it (a product for its loads, a store for
// its product) and the vector unit folds while the tile unit multiplies. Tiles: step s's C tile
// s % 4, A tile s % 2, B tile (s / R) % 2. b: the block's B tiles, one per unit (kTileBytes apart).
template <class F, int R>
inline void pass_block(const RowTile* rts, int units, const uint8_t* b, const float* columns,
                       const WeightStream& stream, int first_step, const RequantWork& rq, int32_t* sums,
                       v16f (&acc)[R][kTileRows]) {
  constexpr int kSpan = pass_span(R);
  static_assert(kSpan % kTileSets == 0 && kSpan % (2 * R) == 0, "a round repeats every tile choice");
  const int steps = units * R;
  for (int s0 = 0; s0 < steps + 4; s0 += kSpan) {
    auto step = [&](auto position) {
      constexpr int P = decltype(position)::value;  // s % kSpan
      constexpr int kPrev = (P + kSpan - 1) % kSpan, kFolded = (P + kSpan - 4) % kSpan;
      const int s = s0 + P;
      if (s < steps) stream.ask(first_step + s);
      if (s >= 1 && s - 1 < steps)
        multiply_step<kPrev % kTileSets, kPrev % 2, (kPrev / R) % 2, F::kSignedTiles>();
      if (s >= 3 && s - 3 < steps) store_step<(P + 1) % kTileSets>(sums);
      if (s < steps) {
        const int g = s / R;
        tile::load<kA0 + P % 2>(rts[P % R].q + int64_t(g) * kTileBytes, kUnitK);
        if constexpr (P % R == 0) {
          tile::load<kB0 + (P / R) % 2>(b + int64_t(g) * kTileBytes, kQuadBytes);
          if constexpr (F::kRequantized) {
            if (rq.block && g % rq.every == rq.phase)
              F::requantize_unit(rq.block + int64_t(g) * F::kSourceUnitBytes, rq.tiles + int64_t(g) * kTileBytes,
                                 rq.columns + g * F::kColumnValues);
          }
        }
      }
      if (s >= 4 && s - 4 < steps)
        fold_unit<F>(sums + (P % kTileSets) * kTileRows * kCols, rts[kFolded % R], (s - 4) / R, columns,
                     acc[kFolded % R]);
    };
    each_position(step, std::make_integer_sequence<int, kSpan>{});
  }
}

// The product of format policy F (see the top of this file).
template <class F>
void gemm_quant_tiles(const QuantGemmArgs& args) {
  validate_quant_gemm(args);
  if (args.m == 0 || args.n0 == args.n1) return;
  const QuantActLayout layout = quant_act_layout(*args.a.format, args.a.k);
  constexpr bool InPlace = !F::kRequantized;
  const int units = layout.groups;
  const int64_t block_bytes = args.w.format->block_bytes(args.w.k);
  // requantized formats: two buffers of a block's B tiles [units][1024 B] and column values
  // [units][F::kColumnValues]: the current block's, and the next one's being written
  const int64_t requant_bytes = InPlace ? 0 : int64_t(units) * (kTileBytes + F::kColumnValues * 4);
  auto* requantized = InPlace ? nullptr : static_cast<uint8_t*>(thread_scratch(ScratchSlot::packed, 2 * requant_bytes));
  auto tiles_of = [&](int i) { return requantized + (i % 2) * requant_bytes; };
  auto columns_of = [&](int i) { return reinterpret_cast<float*>(tiles_of(i) + int64_t(units) * kTileBytes); };
  auto* sums = static_cast<int32_t*>(
      thread_scratch(ScratchSlot::tile_out, kTileSets * kTileRows * kCols * sizeof(int32_t)));
  const RowTiles<F> tiles(args, layout);
  const tile::Scope scope(tile::full_config());
  // the row tiles in passes of at most kMaxPassRows, as even as can be (4 -> 2 + 2)
  const int passes = (tiles.count() + kMaxPassRows - 1) / kMaxPassRows;
  auto pass_first = [&](int p) { return p * tiles.count() / passes; };
  const int blocks = (args.n1 - args.n0 + kCols - 1) / kCols;
  const uint8_t* first = args.w.data + (args.n0 / kCols) * block_bytes;
  if constexpr (F::kRequantized)
    requantize_block<F>(first, units, tiles_of(0), columns_of(0), blocks > 1 ? first + block_bytes : nullptr);
  // requantize the next block inside the current block's passes (else between the blocks)
  const bool overlap = !InPlace && tiles.count() >= overlap_row_tiles<F>();
  for (int i = 0; i < blocks; ++i) {
    const int n = args.n0 + i * kCols;
    const uint8_t* block = first + i * block_bytes;
    const uint8_t* next = i + 1 < blocks ? block + block_bytes : nullptr;
    RequantWork rq;
    if (overlap && next) rq = {next, tiles_of(i + 1), columns_of(i + 1), passes, 0};
    // the bytes read next: INT8 multiplies the next block in place; a requantized format that
    // overlaps requantizes the next block during this one and reads the one after it then
    // (otherwise requantize_block asks for its next block itself)
    const uint8_t* wanted = nullptr;
    if (InPlace)
      wanted = next;
    else if (overlap && i + 2 < blocks)
      wanted = block + 2 * block_bytes;
    const WeightStream stream(wanted, block_bytes, units * tiles.count());
    const uint8_t* b = InPlace ? block + F::kHeaderBytes : tiles_of(i);
    const float* columns = InPlace ? nullptr : columns_of(i);
    v16f col_scale = {};
    if constexpr (InPlace) load_vec(col_scale, block);
    const int cols = std::min(kCols, args.n1 - n);
    for (int p = 0; p < passes; ++p) {
      const int t0 = pass_first(p), rows = pass_first(p + 1) - t0;
      RowTile rts[kMaxPassRows];
      for (int t = 0; t < rows; ++t) rts[t] = tiles[t0 + t];
      rq.phase = p;
      auto run = [&](auto pass_rows) {
        constexpr int R = decltype(pass_rows)::value;
        v16f acc[R][kTileRows] = {};
        pass_block<F, R>(rts, units, b, columns, stream, units * t0, rq, sums, acc);
        for (int t = 0; t < R; ++t) {
          const RowTile& rt = rts[t];
#pragma GCC unroll 16
          for (int r = 0; r < kTileRows; ++r) {
            if (r >= rt.rows) break;
            v16f out = acc[t][r];
            if constexpr (InPlace) out = (out - rt.offset[r]) * col_scale;
            store_columns(args.c + int64_t((t0 + t) * kTileRows + r) * args.ldc + n,
                          reinterpret_cast<const float*>(&out), cols, args.accumulate);
          }
        }
      };
      if (rows == 1)
        run(std::integral_constant<int, 1>{});
      else if (rows == 2)
        run(std::integral_constant<int, 2>{});
      else
        run(std::integral_constant<int, 3>{});
    }
    if constexpr (F::kRequantized) {
      if (next && !overlap)
        requantize_block<F>(next, units, tiles_of(i + 1), columns_of(i + 1),
                            i + 2 < blocks ? next + block_bytes : nullptr);
    }
  }
}

}  // namespace amx_pipeline

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
