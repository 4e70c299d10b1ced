// Quantized GEMM (gemm_quant.hpp) on AMX-INT8 tiles, written against the tile layer
// (amx/tile.hpp) and compiled twice: with the AMX instructions (level amx) and with their portable
// emulation (level amx_emulated, no ISA flags; the code around the tiles is portable C++ with GCC
// vector types for that reason, except the INT4 requantization, which has an AVX-512 form and a
// scalar form that give the same bytes).
//
// One tile product per 64-k unit (the activations' scale group; a product must not cross it):
//   A  16 activation rows x 64 int8 (row tiles straight from the records when 16 whole rows are
//      there and no row list is given; otherwise gathered into zero-padded copies)
//   B  the unit's 16 quads x 64 B of one 16-column block: INT8 straight from the packed weight
//      (q + 128, unsigned: TDPBSUD); INT4 requantized to int8 (signed: TDPBSSD) with one scale S
//      per (column, unit), as gemm_quant.hpp defines it, once per block and call, into a
//      thread-local buffer
//   C  16 x 16 exact int32 sums, stored and folded into 16 fp32 row accumulators (registers):
//      acc = fma(C, a_s (INT8) or S * a_s (INT4), acc); the INT8 zero-point term and column scale
//      are applied once per row at the end.
// The folds use an explicit FMA at both levels (the emulated one rounds once too), and nothing
// else is left to FMA contraction, so amx and amx_emulated give bit-identical results.
// Loads, products, stores and folds of consecutive units overlap as a software pipeline (four C
// tiles and two A and B tiles in turn). The INT4 requantization costs about as much vector work
// as three row tiles' pipelines per block (measured cache-hot on [m, 2048] x [1408, 2048], 1
// thread: ~0.35 of ~0.45 ms at m = 16), so with two or more row tiles the next block is
// requantized inside the current block's pipeline steps, where the vector units wait for the tile
// unit (m = 64: 0.75 ms instead of 0.85 ms requantizing each block before its row tiles).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

constexpr int kTileRows = tile::kMaxRows;  // 16 rows per row tile
static_assert(kCols * 4 == tile::kMaxColBytes, "a C tile row is one 16-column block of int32");
static_assert(kUnitK == tile::kMaxColBytes && kUnitQuads == tile::kMaxRows, "one unit is one full A / B tile");

// Four C tiles in turn (kTileSets units in flight), two A and two B tiles.
constexpr int kTileSets = 4;
enum : int { kC0 = 0, kA0 = 4, kA1 = 5, kB0 = 6, kB1 = 7 };

// Every tile is 16 rows x 64 bytes (C: 16 x 16 int32; A: 16 rows x 64 k; B: 16 quads x 64 B).
tile::Config tile_config() {
  tile::Config cfg;
  for (int t = 0; t < tile::kTileCount; ++t) cfg.rows[t] = kTileRows, cfg.colsb[t] = tile::kMaxColBytes;
  return cfg;
}

// v = the bytes at p (out-parameter: a by-value 64-byte vector changes the ABI without AVX-512).
template <class V>
inline void load_vec(V& v, const void* p) {
  std::memcpy(&v, p, sizeof v);
}

// acc = fma(a, b, acc) per lane, rounded once at both levels.
inline void fmadd(v16f& acc, const v16f& a, const v16f& b) {
#if defined(__AVX512F__)
  acc = (v16f)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
#else
  for (int l = 0; l < 16; ++l) acc[l] = __builtin_fmaf(a[l], b[l], acc[l]);
#endif
}

// ---- INT4 requantization -----------------------------------------------------------------------
// requantize_int4_unit: one 704-byte unit of an int4_group16 block -> its B tile (16 quads x 64 B
// of int8, byte 4 c + i of row j = column c, k = 4 j + i) and its 16 column scales S, as
// gemm_quant.hpp defines them.
#if defined(__AVX512F__)
// The masked forms (all lanes) of the intrinsics used below: GCC 12 warns (-Wmaybe-uninitialized)
// about the undefined source vector of the unmasked ones.
constexpr __mmask16 kAll = 0xFFFF;
inline __m512i srli32(__m512i v, unsigned s) { return _mm512_maskz_srli_epi32(kAll, v, s); }
inline __m512i slli32(__m512i v, unsigned s) { return _mm512_maskz_slli_epi32(kAll, v, s); }
inline __m512i max_i32(__m512i a, __m512i b) { return _mm512_maskz_max_epi32(kAll, a, b); }
inline __m512 max_f32(__m512 a, __m512 b) { return _mm512_maskz_max_ps(kAll, a, b); }
inline __m512i round_to_i32(__m512 v) { return _mm512_maskz_cvtps_epi32(kAll, v); }  // half to even
inline __m512 to_f32(__m512i v) { return _mm512_maskz_cvtepi32_ps(kAll, v); }
inline __m512 load_f16(const void* p) {
  return _mm512_maskz_cvtph_ps(kAll, _mm256_loadu_si256(static_cast<const __m256i*>(p)));
}
inline __m512i load_u8(const void* p) {
  return _mm512_maskz_cvtepu8_epi32(kAll, _mm_loadu_si128(static_cast<const __m128i*>(p)));
}
inline __m512i each_lane(__m128i v) { return _mm512_maskz_broadcast_i32x4(kAll, v); }

// amax from the codes: max_k |(code - zero / 16) * scale| = |scale| * max(16 cmax - zero, zero -
// 16 cmin) / 16 per group, with cmin, cmax the group's smallest and largest code (exact, the same
// value as the maximum over the dequantized weights). Then per 4 k of every column (one int32 lane
// per column, byte i of each column picked by a byte shuffle): the exact weight fma(code, scale,
// -zero / 16 * scale) (the high nibble is taken in place, 16 code, with scale / 16), times 127 /
// amax, rounded half to even by vcvtps2dq; four such vectors pack (saturation never happens) into
// 64 bytes that one byte shuffle puts in quad order.
inline void requantize_int4_unit(const uint8_t* unit, uint8_t* tile_rows, float* scales) {
  const __m512i low_nibble = _mm512_set1_epi32(0x0F), high_nibble = _mm512_set1_epi32(0xF0);
  const __m512i low_bytes = _mm512_set1_epi8(0x0F);
  const __m512 sixteenth = _mm512_set1_ps(1.0f / kInt4ZeroDen), minus_sixteenth = _mm512_set1_ps(-1.0f / kInt4ZeroDen);
  const __m512 qmax = _mm512_set1_ps(float(kActQMax)), tiny = _mm512_set1_ps(FLT_MIN);
  // After the packs, byte 4 s + e of each 128-bit lane is k s of the lane's column e: transpose.
  const __m512i quad_order =
      each_lane(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  __m512i byte_of[kQuadK];  // byte i of each int32 lane into its low byte, the others zero
  for (int i = 0; i < kQuadK; ++i)
    byte_of[i] =
        each_lane(_mm_setr_epi8(i, -1, -1, -1, 4 + i, -1, -1, -1, 8 + i, -1, -1, -1, 12 + i, -1, -1, -1));

  __m512i v[kInt4CodeVectors];
  for (int i = 0; i < kInt4CodeVectors; ++i) v[i] = _mm512_loadu_si512(unit + i * kQuadBytes);
  __m512 s[kInt4UnitGroups], zs[kInt4UnitGroups];  // scale (/ 16 for the high nibbles), -zero / 16 * scale
  __m512i z[kInt4UnitGroups];                       // zero (sixteenths)
  for (int h = 0; h < kInt4UnitGroups; ++h) {
    s[h] = load_f16(unit + kInt4ScaleOffset + 32 * h);
    z[h] = load_u8(unit + kInt4ZeroOffset + kCols * h);
    zs[h] = _mm512_mul_ps(_mm512_mul_ps(to_f32(z[h]), minus_sixteenth), s[h]);
  }
  __m512 amax = _mm512_setzero_ps();  // 16 amax
  for (int half = 0; half < 2; ++half) {
    const __m512i* w = v + half * kInt4HalfVectors;
    __m512i lo[kInt4HalfVectors];
    for (int j = 0; j < kInt4HalfVectors; ++j) lo[j] = _mm512_and_si512(w[j], low_bytes);
    // byte-wise extremes over the 4 vectors, then over the 4 bytes of each column (into byte 0);
    // a byte's maximum and minimum carry those of its high nibble
    __m512i ext[4] = {_mm512_max_epu8(_mm512_max_epu8(lo[0], lo[1]), _mm512_max_epu8(lo[2], lo[3])),
                      _mm512_min_epu8(_mm512_min_epu8(lo[0], lo[1]), _mm512_min_epu8(lo[2], lo[3])),
                      _mm512_max_epu8(_mm512_max_epu8(w[0], w[1]), _mm512_max_epu8(w[2], w[3])),
                      _mm512_min_epu8(_mm512_min_epu8(w[0], w[1]), _mm512_min_epu8(w[2], w[3]))};
    for (int e = 0; e < 4; ++e)
      for (int shift : {8, 16}) {
        const __m512i moved = srli32(ext[e], shift);
        ext[e] = e % 2 ? _mm512_min_epu8(ext[e], moved) : _mm512_max_epu8(ext[e], moved);
      }
    for (int nib = 0; nib < 2; ++nib) {  // group 2 half (low nibbles), 2 half + 1 (high)
      const int h = 2 * half + nib;
      __m512i cmax = ext[2 * nib], cmin = ext[2 * nib + 1];  // -> 16 * code in each int32
      if (nib == 0) cmax = slli32(cmax, 4), cmin = slli32(cmin, 4);
      cmax = _mm512_and_si512(cmax, high_nibble), cmin = _mm512_and_si512(cmin, high_nibble);
      const __m512i d = max_i32(_mm512_sub_epi32(cmax, z[h]), _mm512_sub_epi32(z[h], cmin));
      amax = max_f32(amax, _mm512_mul_ps(to_f32(d), _mm512_abs_ps(s[h])));
    }
  }
  amax = _mm512_mul_ps(amax, sixteenth);
  const __mmask16 normal = _mm512_cmp_ps_mask(amax, tiny, _CMP_GE_OQ);
  const __m512 inv = _mm512_maskz_div_ps(normal, qmax, amax);
  _mm512_storeu_ps(scales, _mm512_maskz_div_ps(normal, amax, qmax));
  for (int h = 1; h < kInt4UnitGroups; h += 2) s[h] = _mm512_mul_ps(s[h], sixteenth);  // exact
#pragma GCC unroll 8
  for (int vi = 0; vi < kInt4CodeVectors; ++vi) {
    const int half = vi / kInt4HalfVectors, j = vi % kInt4HalfVectors;
    __m512i bytes[kQuadK];
    for (int i = 0; i < kQuadK; ++i) bytes[i] = _mm512_shuffle_epi8(v[vi], byte_of[i]);
    for (int nib = 0; nib < 2; ++nib) {
      const int h = 2 * half + nib;
      __m512i q[kQuadK];  // k 4 j + i of the group, one lane per column
      for (int i = 0; i < kQuadK; ++i) {
        const __m512i code = _mm512_and_si512(bytes[i], nib ? high_nibble : low_nibble);
        const __m512 wf = _mm512_fmadd_ps(to_f32(code), s[h], zs[h]);  // exact
        q[i] = round_to_i32(_mm512_mul_ps(wf, inv));
      }
      const __m512i packed = _mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
      _mm512_storeu_si512(tile_rows + (8 * half + 4 * nib + j) * kQuadBytes, _mm512_shuffle_epi8(packed, quad_order));
    }
  }
}
#else
// Scalar: the exact weights of a column's 64 k, their amax, then round_half_even(Wf * (127 / amax)).
inline void requantize_int4_unit(const uint8_t* unit, uint8_t* tile_rows, float* scales) {
  for (int c = 0; c < kCols; ++c) {
    float wf[kUnitK], amax = 0.0f;
    for (int k = 0; k < kUnitK; ++k) {
      const int h = k / kInt4Group, kk = k % kInt4Group;
      const uint8_t byte = unit[(h / 2 * kInt4HalfVectors + kk / kQuadK) * kQuadBytes + kQuadK * c + kk % kQuadK];
      fp16_t bits;
      std::memcpy(&bits, unit + kInt4ScaleOffset + (h * kCols + c) * 2, sizeof bits);
      const float z = float(unit[kInt4ZeroOffset + h * kCols + c]) * (1.0f / kInt4ZeroDen);
      wf[k] = (float(h % 2 ? byte >> 4 : byte & 0x0F) - z) * fp16_to_float(bits);  // exact
      amax = std::max(amax, std::fabs(wf[k]));
    }
    const bool normal = amax >= FLT_MIN;
    const float inv = normal ? float(kActQMax) / amax : 0.0f;
    scales[c] = normal ? amax / float(kActQMax) : 0.0f;
    for (int k = 0; k < kUnitK; ++k)  // nearbyint: half to even in the default rounding mode
      tile_rows[(k / kQuadK) * kQuadBytes + kQuadK * c + k % kQuadK] =
          static_cast<uint8_t>(static_cast<int8_t>(std::nearbyint(wf[k] * inv)));
  }
}
#endif

// A whole block: unit u into tiles + u * kTileBytes and scales + 16 u. When `next` is not null,
// asks for the next block on the way.
void requantize_int4_block(const uint8_t* block, int units, uint8_t* tiles, float* scales, const uint8_t* next) {
  for (int u = 0; u < units; ++u) {
    if (next) prefetch_bytes(next + int64_t(u) * kInt4UnitBytes, kInt4UnitBytes);
    requantize_int4_unit(block + int64_t(u) * kInt4UnitBytes, tiles + int64_t(u) * kTileBytes, scales + u * kCols);
  }
}

// ---- activation row tiles ----------------------------------------------------------------------

// The A side of one row tile: int8 rows at q + r * ld; scale [units][16] and, for INT8, the
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
    const int64_t kp = layout.k_padded, units = layout.groups;
    copied_from_ = args.row_ids ? 0 : args.m / kTileRows;  // tiles from here on are copies
    const int64_t scale_bytes = sizeof(float) * tiles_ * kTileRows * (units + 1);
    const int64_t copy_bytes = (tiles_ - copied_from_) * kTileRows * kp;
    auto* base = static_cast<uint8_t*>(thread_scratch(ScratchSlot::row_tail, scale_bytes + copy_bytes));
    scale_ = reinterpret_cast<float*>(base);
    offset_ = scale_ + tiles_ * kTileRows * units;
    copies_ = reinterpret_cast<int8_t*>(base + scale_bytes);
    std::memset(base, 0, scale_bytes + copy_bytes);  // rows past m: zero scales and values
    const bool int8 = args.a.format == QuantFormat::int8_channel;
    for (int i = 0; i < args.m; ++i) {
      const QuantRow a = quant_row(args, layout, i);
      float* scale = scale_ + (i / kTileRows) * kTileRows * units + i % kTileRows;
      for (int g = 0; g < units; ++g) scale[g * kTileRows] = a.scale[g];
      if (int8) offset_[i] = int8_row_offset(a.scale, a.sum, layout.groups);
      if (i / kTileRows >= copied_from_) std::memcpy(copies_ + (i - copied_from_ * kTileRows) * kp, a.q, kp);
    }
  }

  int count() const { return tiles_; }

  RowTile operator[](int t) const {
    const int64_t units = layout_.groups;
    const int rows = std::min(kTileRows, args_.m - t * kTileRows);
    const float* scale = scale_ + int64_t(t) * kTileRows * units;
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

// ---- the tile pipeline -------------------------------------------------------------------------

// The three tile stages of unit g, J = g % 4: its A and B tiles (A, B tile J % 2), its product
// (C tile J), the product's store to sums + J * 256 (int32 [16][16]).
template <int J>
inline void load_unit(const RowTile& rt, int g, const uint8_t* b) {
  tile::load<kA0 + J % 2>(rt.q + int64_t(g) * kUnitK, rt.ld);
  tile::load<kB0 + J % 2>(b, kQuadBytes);
}

template <int J, bool Int8>
inline void multiply_unit() {
  constexpr int C = kC0 + J, A = kA0 + J % 2, B = kB0 + J % 2;
  tile::zero<C>();
  if constexpr (Int8)
    tile::dpbsud<C, A, B>();
  else
    tile::dpbssd<C, A, B>();
}

template <int J>
inline void store_unit(int32_t* sums) {
  tile::store<kC0 + J>(sums + J * kTileRows * kCols, kCols * sizeof(int32_t));
}

// acc[r] = fma(sums[r], the row's unit scale (* the unit's column scales S for INT4), acc[r]).
template <bool Int8>
inline void fold_unit(const int32_t* sums, const RowTile& rt, int g, const float* col_scales, v16f (&acc)[kTileRows]) {
  v16f col_scale = {};
  if constexpr (!Int8) load_vec(col_scale, col_scales + g * kCols);
  const float* row_scale = rt.scale + g * kTileRows;
#pragma GCC unroll 16  // constant indices keep acc in registers
  for (int r = 0; r < kTileRows; ++r) {
    v16i sum;
    load_vec(sum, sums + r * kCols);
    const v16f d = __builtin_convertvector(sum, v16f);  // exact: |sum| < 2^24
    v16f m;
    if constexpr (Int8)
      m = v16f{} + row_scale[r];
    else
      m = col_scale * row_scale[r];
    fmadd(acc[r], d, m);
  }
}

// INT4: the requantization of the next block, spread over the steps of the current block's row
// tiles (the vector units requantize while the tile unit multiplies): row tile t, step s does
// unit s of `block` when s % every == phase, so that each unit is done once over `every` row
// tiles. `ahead` (the block after it, or null) is asked for on the way.
struct RequantWork {
  const uint8_t* block = nullptr;  // null: nothing to do
  const uint8_t* ahead = nullptr;
  uint8_t* tiles = nullptr;
  float* scales = nullptr;
  int every = 1, phase = 0;
};

// acc = the fp32 sums of one row tile x one column block over all units, as a software
// pipeline: step s multiplies unit s - 1, stores unit s - 3, loads the tiles of unit s and
// folds unit s - 4, so that no tile instruction waits for the one just before it (a product for
// its loads, a store for its product) and the vector unit folds while the tile unit multiplies.
// b: the block's B tiles, one per unit (kTileBytes apart). When `next` is not null, each unit asks
// for the same unit of the next block (INT8 reads B in place, so the first row tile's loads come
// from memory).
template <bool Int8>
inline void row_tile_block(const RowTile& rt, int units, const uint8_t* b, const float* col_scales,
                           const uint8_t* next, const RequantWork& rq, int32_t* sums, v16f (&acc)[kTileRows]) {
  for (int s0 = 0; s0 < units + 4; s0 += kTileSets) {
    auto step = [&](auto u) {
      constexpr int J = decltype(u)::value;  // s % 4
      const int s = s0 + J;
      if (s >= 1 && s - 1 < units) multiply_unit<(J + 3) % kTileSets, Int8>();
      if (s >= 3 && s - 3 < units) store_unit<(J + 1) % kTileSets>(sums);
      if (s < units) load_unit<J>(rt, s, b + int64_t(s) * kTileBytes);
      if (s >= 4 && s - 4 < units) {
        if (next) prefetch_bytes(next + int64_t(s - 4) * kTileBytes, kTileBytes);
        fold_unit<Int8>(sums + J * kTileRows * kCols, rt, s - 4, col_scales, acc);
      }
      if constexpr (!Int8) {
        if (rq.block && s < units && s % rq.every == rq.phase) {
          if (rq.ahead) prefetch_bytes(rq.ahead + int64_t(s) * kInt4UnitBytes, kInt4UnitBytes);
          requantize_int4_unit(rq.block + int64_t(s) * kInt4UnitBytes, rq.tiles + int64_t(s) * kTileBytes,
                               rq.scales + s * kCols);
        }
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
  const int units = layout.groups;
  const int64_t block_bytes = quant_block_bytes(args.w.format, args.w.k);
  // INT4: two buffers of a block's requantized B tiles [units][1024 B] and column scales S
  // [units][16]: the current block's, and the next one's being written
  const int64_t requant_bytes = int64_t(units) * (kTileBytes + kCols * 4);
  auto* requantized = Int8 ? nullptr : static_cast<uint8_t*>(thread_scratch(ScratchSlot::packed, 2 * requant_bytes));
  auto tiles_of = [&](int i) { return requantized + (i % 2) * requant_bytes; };
  auto scales_of = [&](int i) { return reinterpret_cast<float*>(tiles_of(i) + int64_t(units) * kTileBytes); };
  auto* sums = static_cast<int32_t*>(
      thread_scratch(ScratchSlot::tile_out, kTileSets * kTileRows * kCols * sizeof(int32_t)));
  const RowTiles tiles(args, layout);
  const tile::Scope scope(tile_config());
  const int blocks = (args.n1 - args.n0 + kCols - 1) / kCols;
  const uint8_t* first = args.w.data + (args.n0 / kCols) * block_bytes;
  if (!Int8) requantize_int4_block(first, units, tiles_of(0), scales_of(0), blocks > 1 ? first + block_bytes : nullptr);
  for (int i = 0; i < blocks; ++i) {
    const int n = args.n0 + i * kCols;
    const uint8_t* block = first + i * block_bytes;
    const uint8_t* next = i + 1 < blocks ? block + block_bytes : nullptr;
    RequantWork rq;
    if (!Int8 && next && tiles.count() > 1)
      rq = {next, i + 2 < blocks ? next + block_bytes : nullptr, tiles_of(i + 1), scales_of(i + 1), tiles.count(), 0};
    const uint8_t* b = Int8 ? block + kInt8HeaderBytes : tiles_of(i);
    const float* col_scales = Int8 ? nullptr : scales_of(i);
    v16f col_scale = {};
    if constexpr (Int8) load_vec(col_scale, block);
    const int cols = std::min(kCols, args.n1 - n);
    for (int t = 0; t < tiles.count(); ++t) {
      const RowTile rt = tiles[t];
      v16f acc[kTileRows] = {};
      rq.phase = t;
      row_tile_block<Int8>(rt, units, b, col_scales, Int8 && t == 0 && next ? next + kInt8HeaderBytes : nullptr, rq,
                           sums, acc);
#pragma GCC unroll 16
      for (int r = 0; r < kTileRows; ++r) {
        if (r >= rt.rows) break;
        v16f out = acc[r];
        if constexpr (Int8) out = (out - rt.offset[r]) * col_scale;
        store_columns(args.c + int64_t(t * kTileRows + r) * args.ldc + n, reinterpret_cast<const float*>(&out), cols,
                      args.accumulate);
      }
    }
    if (!Int8 && next && tiles.count() == 1)  // one row tile: nothing to overlap with
      requantize_int4_block(next, units, tiles_of(i + 1), scales_of(i + 1),
                            i + 2 < blocks ? next + block_bytes : nullptr);
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
