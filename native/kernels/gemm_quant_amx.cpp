// Quantized GEMM (gemm_quant.hpp) on AMX-INT8 tiles, written against the tile layer
// (amx/tile.hpp) and compiled twice: with the AMX instructions (level amx) and with their portable
// emulation (level amx_emulated, no ISA flags; the code around the tiles is portable C++ with GCC
// vector types for that reason).
//
// One tile product per group of k (64 for INT8, 32 for INT4: a group's scales differ from its
// neighbours', so a dot product must not cross groups):
//   A  16 activation rows x one group of int8 (row tiles straight from the records when 16 whole
//      rows are there and no row list is given; otherwise gathered into zero-padded copies)
//   B  the group's packed quads of one 16-column block: INT8 straight from the packed weight
//      (q + 128, unsigned: TDPBSUD); INT4 from the block unpacked once per call into
//      code - zero bytes (signed, -15..15: TDPBSSD, which needs no zero-point term)
//   C  16 x 16 exact int32 group sums, stored and folded into 16 fp32 row accumulators (registers)
//      with the group's scales, as gemm_quant.hpp gives; the INT8 zero-point term is subtracted once
//      per row at the end.
// Loads, products, stores and folds of consecutive groups overlap as a software pipeline (four C
// tiles and two A and B tiles in turn).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/amx/tile.hpp"
#include "kernels/gemm_quant_levels.hpp"
#include "kernels/quant_kernel_common.hpp"
#include "kernels/scratch.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace quant_layout;

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint8_t v64u __attribute__((vector_size(64)));

constexpr int kTileRows = tile::kMaxRows;  // 16 rows per row tile
static_assert(kCols * 4 == tile::kMaxColBytes, "a C tile row is one 16-column block of int32");

// Four C tiles in turn (kTileSets groups in flight), two A and two B tiles.
constexpr int kTileSets = 4;
enum : int { kC0 = 0, kA0 = 4, kA1 = 5, kB0 = 6, kB1 = 7 };

// C: 16 x 16 int32; A: 16 rows x `group` bytes; B: group / 4 quads x 64 bytes.
tile::Config tile_config(int group) {
  tile::Config cfg;
  for (int t = kC0; t < kC0 + kTileSets; ++t) cfg.rows[t] = kTileRows, cfg.colsb[t] = tile::kMaxColBytes;
  for (int t : {kA0, kA1}) cfg.rows[t] = kTileRows, cfg.colsb[t] = static_cast<uint16_t>(group);
  for (int t : {kB0, kB1}) cfg.rows[t] = static_cast<uint8_t>(group / kQuadK), cfg.colsb[t] = kQuadBytes;
  return cfg;
}

// v = the bytes at p (out-parameter: a by-value 64-byte vector changes the ABI without AVX-512).
template <class V>
inline void load_vec(V& v, const void* p) {
  std::memcpy(&v, p, sizeof v);
}

// The A side of one row tile: int8 rows at q + r * ld; scale [groups][16] and, for INT8, the
// zero-point term offset [16] per row (zero for rows past m).
struct RowTile {
  const int8_t* q;
  int64_t ld;
  const float* scale;
  const float* offset;
  int rows;
};

// Every row tile of a call, prepared once (ScratchSlot::row_tail).
class RowTiles {
 public:
  RowTiles(const QuantGemmArgs& args, const QuantActLayout& layout)
      : args_(args), layout_(layout), tiles_((args.m + kTileRows - 1) / kTileRows) {
    const int64_t kp = layout.k_padded, groups = layout.groups;
    copied_from_ = args.row_ids ? 0 : args.m / kTileRows;  // tiles from here on are copies
    const int64_t scale_bytes = sizeof(float) * tiles_ * kTileRows * (groups + 1);
    const int64_t copy_bytes = (tiles_ - copied_from_) * kTileRows * kp;
    auto* base = static_cast<uint8_t*>(thread_scratch(ScratchSlot::row_tail, scale_bytes + copy_bytes));
    scale_ = reinterpret_cast<float*>(base);
    offset_ = scale_ + tiles_ * kTileRows * groups;
    copies_ = reinterpret_cast<int8_t*>(base + scale_bytes);
    std::memset(base, 0, scale_bytes + copy_bytes);  // rows past m: zero scales and values
    const bool int8 = args.a.format == QuantFormat::int8_channel;
    for (int i = 0; i < args.m; ++i) {
      const QuantRow a = quant_row(args, layout, i);
      float* scale = scale_ + (i / kTileRows) * kTileRows * groups + i % kTileRows;
      for (int g = 0; g < groups; ++g) scale[g * kTileRows] = a.scale[g];
      if (int8) offset_[i] = int8_row_offset(a.scale, a.sum, layout.groups);
      if (i / kTileRows >= copied_from_) std::memcpy(copies_ + (i - copied_from_ * kTileRows) * kp, a.q, kp);
    }
  }

  int count() const { return tiles_; }

  RowTile operator[](int t) const {
    const int64_t groups = layout_.groups;
    const int rows = std::min(kTileRows, args_.m - t * kTileRows);
    const float* scale = scale_ + int64_t(t) * kTileRows * groups;
    const float* offset = offset_ + t * kTileRows;
    if (t < copied_from_)
      return {reinterpret_cast<const int8_t*>(args_.a.data + int64_t(t) * kTileRows * args_.a.stride), args_.a.stride,
              scale, offset, rows};
    return {copies_ + int64_t(t - copied_from_) * kTileRows * layout_.k_padded, layout_.k_padded, scale, offset, rows};
  }

 private:
  const QuantGemmArgs& args_;
  const QuantActLayout& layout_;
  int tiles_;
  int copied_from_ = 0;
  float* scale_ = nullptr;
  float* offset_ = nullptr;
  int8_t* copies_ = nullptr;
};

// The INT4 block's codes as B tiles of signed bytes code - zero: [groups][8 quads][64 B]. When
// `next` is not null, asks for the next block (block_bytes) on the way.
void unpack_int4_block(const uint8_t* block, int groups, uint8_t* dst, const uint8_t* next, int64_t block_bytes) {
  const uint8_t* zeros = block + int64_t(groups) * kInt4GroupBytes;
  const int64_t ahead = (block_bytes / groups + 63) / 64 * 64;  // bytes of `next` asked for per group
  for (int g = 0; g < groups; ++g) {
    if (next) prefetch_bytes(next + g * ahead, int(std::min(ahead, block_bytes - g * ahead)));
    uint32_t z32[kCols];  // byte 4 c + i = zero of column c
    for (int c = 0; c < kCols; ++c) z32[c] = zeros[g * kCols + c] * 0x01010101u;
    v64u z;
    load_vec(z, z32);
    const uint8_t* codes = block + int64_t(g) * kInt4GroupBytes;
    uint8_t* out = dst + int64_t(g) * kInt4UnpackedGroupBytes;
    for (int j = 0; j < kInt4CodeVectors; ++j) {
      v64u v;
      load_vec(v, codes + j * kQuadBytes);
      const v64u lo = (v & 0x0F) - z, hi = (v >> 4) - z;
      std::memcpy(out + j * kQuadBytes, &lo, kQuadBytes);
      std::memcpy(out + (kInt4CodeVectors + j) * kQuadBytes, &hi, kQuadBytes);
    }
  }
}

// The three tile stages of group g, J = g % 4: its A and B tiles (A, B tile J % 2), its product
// (C tile J), the product's store to sums + J * 256 (int32 [16][16]).
template <int J>
inline void load_group(const RowTile& rt, int g, int group, const uint8_t* b) {
  tile::load<kA0 + J % 2>(rt.q + int64_t(g) * group, rt.ld);
  tile::load<kB0 + J % 2>(b, kQuadBytes);
}

template <int J, bool Int8>
inline void multiply_group() {
  constexpr int C = kC0 + J, A = kA0 + J % 2, B = kB0 + J % 2;
  tile::zero<C>();
  if constexpr (Int8)
    tile::dpbsud<C, A, B>();
  else
    tile::dpbssd<C, A, B>();
}

template <int J>
inline void store_group(int32_t* sums) {
  tile::store<kC0 + J>(sums + J * kTileRows * kCols, kCols * sizeof(int32_t));
}

// acc[r] += sums[r] (* the group's column scales for INT4) * the row's group scale.
template <bool Int8>
inline void fold_group(const int32_t* sums, const RowTile& rt, int g, const uint8_t* block, v16f (&acc)[kTileRows]) {
  v16f col_scale = {};
  if constexpr (!Int8) load_vec(col_scale, block + int64_t(g) * kInt4GroupBytes + kInt4CodeBytes);
  const float* row_scale = rt.scale + g * kTileRows;
#pragma GCC unroll 16  // constant indices keep acc in registers
  for (int r = 0; r < kTileRows; ++r) {
    v16i sum;
    load_vec(sum, sums + r * kCols);
    const v16f d = __builtin_convertvector(sum, v16f);
    if constexpr (Int8)
      acc[r] += d * row_scale[r];
    else
      acc[r] += (d * col_scale) * row_scale[r];
  }
}

// acc = the fp32 sums of one row tile x one column block over all groups, as a software
// pipeline: step s multiplies group s - 1, stores group s - 2, loads the tiles of group s and
// folds group s - 3, so that no tile instruction waits for the one just before it (a product for
// its loads, a store for its product) and the vector unit folds while the tile unit multiplies.
// When `next` is not null, each group asks for the same group of the next block (INT8 reads B in
// place, so the first row tile's loads come from memory).
template <bool Int8>
inline void row_tile_block(const RowTile& rt, int groups, int group, const uint8_t* b, int64_t b_group_bytes,
                           const uint8_t* block, const uint8_t* next, int32_t* sums, v16f (&acc)[kTileRows]) {
  for (int s0 = 0; s0 < groups + 3; s0 += kTileSets) {
    auto step = [&](auto u) {
      constexpr int J = decltype(u)::value;  // s % 4
      const int s = s0 + J;
      if (s >= 1 && s - 1 < groups) multiply_group<(J + 3) % kTileSets, Int8>();
      if (s >= 2 && s - 2 < groups) store_group<(J + 2) % kTileSets>(sums);
      if (s < groups) load_group<J>(rt, s, group, b + s * b_group_bytes);
      if (s >= 3 && s - 3 < groups) {
        if (next) prefetch_bytes(next + (s - 3) * b_group_bytes, int(b_group_bytes));
        fold_group<Int8>(sums + (J + 1) % kTileSets * kTileRows * kCols, rt, s - 3, block, acc);
      }
    };
    step(std::integral_constant<int, 0>{});
    step(std::integral_constant<int, 1>{});
    step(std::integral_constant<int, 2>{});
    step(std::integral_constant<int, 3>{});
  }
}

template <bool Int8>
void gemm_tiles(const QuantGemmArgs& args, const QuantActLayout& layout) {
  const int groups = layout.groups, group = layout.group;
  const int64_t block_bytes = quant_block_bytes(args.w.format, args.w.k);
  const int64_t b_group_bytes = Int8 ? kInt8GroupBytes : kInt4UnpackedGroupBytes;
  auto* unpacked = Int8 ? nullptr
                        : static_cast<uint8_t*>(thread_scratch(ScratchSlot::packed, groups * kInt4UnpackedGroupBytes));
  auto* sums = static_cast<int32_t*>(
      thread_scratch(ScratchSlot::tile_out, kTileSets * kTileRows * kCols * sizeof(int32_t)));
  const RowTiles tiles(args, layout);
  const tile::Scope scope(tile_config(group));
  for (int n = args.n0; n < args.n1; n += kCols) {
    const uint8_t* block = args.w.data + (n / kCols) * block_bytes;
    const uint8_t* next = n + kCols < args.n1 ? block + block_bytes : nullptr;
    if (!Int8) unpack_int4_block(block, groups, unpacked, next, block_bytes);
    const uint8_t* b = Int8 ? block + kInt8HeaderBytes : unpacked;
    v16f col_scale = {};
    if constexpr (Int8) load_vec(col_scale, block);
    const int cols = std::min(kCols, args.n1 - n);
    for (int t = 0; t < tiles.count(); ++t) {
      const RowTile rt = tiles[t];
      v16f acc[kTileRows] = {};
      row_tile_block<Int8>(rt, groups, group, b, b_group_bytes, block,
                           Int8 && t == 0 && next ? next + kInt8HeaderBytes : nullptr, sums, acc);
#pragma GCC unroll 16
      for (int r = 0; r < kTileRows; ++r) {
        if (r >= rt.rows) break;
        v16f out = acc[r];
        if constexpr (Int8) out = (out - rt.offset[r]) * col_scale;
        store_columns(args.c + int64_t(t * kTileRows + r) * args.ldc + n, reinterpret_cast<const float*>(&out), cols,
                      args.accumulate);
      }
    }
  }
}

}  // namespace

void gemm_quant(const QuantGemmArgs& args) {
  validate_quant_gemm(args);
  if (args.m == 0 || args.n0 == args.n1) return;
  const QuantActLayout layout = quant_act_layout(args.a.format, args.a.k);
  if (args.w.format == QuantFormat::int8_channel)
    gemm_tiles<true>(args, layout);
  else
    gemm_tiles<false>(args, layout);
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
