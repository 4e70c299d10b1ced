// int8_channel's product with the weight transposed, straight from its stored rows on AMX-INT8
// tiles (a DequantGemmNnFn, kernels/dequant_bf16.hpp: what the SFT engine's backward multiplies an
// AMXINT8_SFT base with, moe/base_products.cpp), compiled for levels amx and amx_emulated:
//   C[i, j - j0] (+)= sum_r a[i, r] scale[r] q[r, j]     i < m, j0 <= j < j1, r < rows
// with no dequantized bf16 block in between: the int8 rows are repacked into tiles, half the bytes
// of a bf16 block and no conversion.
//
// The gradients times the row scales, g[i, r] = a[i, r] * scale[r] (fp32), are split exactly into
// three int8 pieces per row (activation_pieces.hpp), packed once per call as the "A" tiles (16
// tokens x 64 r). The weight goes by blocks of rows (about kBlockBytes), each repacked into "B"
// tiles (16 r quads x 16 columns, ScratchSlot::packed). Per 16 columns and 16 tokens, the three
// pieces' int32 sums run over the block in tiles 0..2 and wait between blocks in
// ScratchSlot::accumulators, exact over all rows; the last block combines them exactly and rounds
// once: C[i, j] = fma(float(65536 H + 256 M + L), 2^-s_i, C[i, j] or 0). So C is the product with
// the dequantized weight up to that rounding, the one of g and the pieces' (within 2^-22 of the
// row's largest |g|), with no bf16 rounding of g (the dequantized path rounds it) and no fp32
// summation order; amx and amx_emulated give the same bits. A non-finite g, or more than
// kMaxTokens rows, is not taken (returns false, nothing written: the caller's dequantized bf16 GEMM
// propagates an Inf or NaN).
// Tiles: sums 0..2, the pieces' A tiles 3..5, B tiles 6 and 7 in turn. The repacking reads four
// rows at a time and asks for the rows kPrefetchRows on (a stream per row is too short for the
// hardware prefetcher): with 8 or 16 the DeepSeek-V2-Lite AMXINT8_SFT backward (q = 128, 2 threads)
// took 52-58 ms against 59-61 ms with no software prefetch, and asking instead for the next block's
// lines while a block's tiles are multiplied took 62-65 ms (256 KB or 512 KB blocks alike; scratch
// measurements, interleaved builds).
#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512BW__)
#include <immintrin.h>
#endif

#include "formats/int8_channel/activation_pieces.hpp"
#include "formats/int8_channel/int8_channel.hpp"
#include "kernels/amx/tile.hpp"
#include "kernels/bf16.hpp"
#include "kernels/scratch.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

using namespace int8_pieces;

constexpr int kRows = tile::kMaxRows;        // 16 tokens per "A" tile, 16 r quads per "B" tile
constexpr int kChunk = tile::kMaxColBytes;   // 64 r per tile
constexpr int kCols = tile::kMaxColBytes / 4;  // 16 columns per "B" tile
constexpr int kTileBytes = kRows * kChunk;   // 1 KB
constexpr int64_t kBlockBytes = int64_t(512) << 10;
constexpr int kPrefetchRows = 16;
enum : int { kH = 0, kM = 1, kL = 2, kA = 3, kB0 = 6, kB1 = 7 };

// g[0, rows) = a_row * scale (fp32); returns the largest exponent field of g (0xFF: an Inf or NaN).
int scaled_row(const bf16_t* a_row, const float* scale, int rows, float* g) {
#if defined(__AVX512BW__)
  __m512i largest = _mm512_setzero_si512();
  for (int r = 0; r < rows; r += 16) {
    const __mmask16 mask = rows - r >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (rows - r)) - 1);
    const __m512i bits = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, a_row + r)), 16);
    const __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_maskz_loadu_ps(mask, scale + r));
    _mm512_mask_storeu_ps(g + r, mask, v);
    largest = _mm512_max_epu32(largest, _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF)));
  }
  return int(_mm512_reduce_max_epu32(largest) >> 23);
#else
  int field = 0;
  for (int r = 0; r < rows; ++r) {
    g[r] = bf16_to_float(a_row[r]) * scale[r];
    field = std::max(field, exponent_field(g[r]));
  }
  return field;
#endif
}

// The pieces of g = a * scale ([m, rows]) into `packed`, [token block][chunk][piece] "A" tiles: byte
// i * 64 + c of a tile is the piece of X[16 tb + i, 64 chunk + c] (zero past m and rows);
// factor[i] = 2^-s_i. False when g holds an Inf or NaN (packed and factor then undefined).
bool split_gradients(int m, int rows, const bf16_t* a, int64_t lda, const float* scale, int chunks, int8_t* packed,
                     float* factor, float* g) {
  const int blocks = (m + kRows - 1) / kRows;
  std::memset(packed, 0, size_t(blocks) * chunks * kPieces * kTileBytes);
  for (int i = 0; i < m; ++i) {
    const int field = scaled_row(a + i * lda, scale, rows, g);
    if (field == 0xFF) return false;
    const RowScaling scaling = row_scaling(field);
    factor[i] = scaling.down;
    int8_t* row = packed + size_t(i / kRows) * chunks * kPieces * kTileBytes + (i % kRows) * kChunk;
#if defined(__AVX512BW__)
    for (int r = 0; r < rows; r += 16) {  // inside one chunk
      const __mmask16 mask = rows - r >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (rows - r)) - 1);
      const Pieces16 p = split16(_mm512_maskz_loadu_ps(mask, g + r), scaling);
      int8_t* at = row + size_t(r / kChunk) * kPieces * kTileBytes + r % kChunk;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(at + kH * kTileBytes), p.h);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(at + kM * kTileBytes), p.m);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(at + kL * kTileBytes), p.l);
    }
#else
    for (int r = 0; r < rows; ++r) {
      const Pieces p = split(g[r], scaling);
      int8_t* at = row + size_t(r / kChunk) * kPieces * kTileBytes + r % kChunk;
      at[kH * kTileBytes] = static_cast<int8_t>(p.h);
      at[kM * kTileBytes] = static_cast<int8_t>(p.m);
      at[kL * kTileBytes] = static_cast<int8_t>(p.l);
    }
#endif
  }
  return true;
}

// W rows [k0, k1) x columns [j0, j1) (q row stride ld) as "B" tiles: tile (column block cb, chunk
// c) at dst + (cb * chunks + c) * 1 KB, byte kq * 64 + col * 4 + t = q[k0 + 64 c + 4 kq + t][j0 +
// 16 cb + col], zero past k1 and j1. k0 is a multiple of 4.
void pack_block(const int8_t* q, int64_t ld, int k0, int k1, int j0, int j1, int chunks, int8_t* dst,
                [[maybe_unused]] int prefetch_end) {
  const int width = j1 - j0, col_blocks = (width + kCols - 1) / kCols;
  for (int r0 = k0; r0 < k0 + chunks * kChunk; r0 += 4) {
    const int c = (r0 - k0) / kChunk, kq = ((r0 - k0) % kChunk) / 4;
    int8_t* quad_row = dst + size_t(c) * kTileBytes + kq * kChunk;  // + cb * chunks * 1 KB
#if defined(__AVX512BW__)
    for (int x = 0; x < width; x += 64) {
      const int n = std::min(64, width - x);
      const __mmask64 mask = n == 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1;
      for (int t = kPrefetchRows; t < kPrefetchRows + 4; ++t)
        if (r0 + t < prefetch_end) __builtin_prefetch(q + int64_t(r0 + t) * ld + j0 + x);
      __m512i v[4];
      for (int t = 0; t < 4; ++t)
        v[t] = r0 + t < k1 ? _mm512_maskz_loadu_epi8(mask, q + int64_t(r0 + t) * ld + j0 + x) : _mm512_setzero_si512();
      const __m512i lo01 = _mm512_unpacklo_epi8(v[0], v[1]), hi01 = _mm512_unpackhi_epi8(v[0], v[1]);
      const __m512i lo23 = _mm512_unpacklo_epi8(v[2], v[3]), hi23 = _mm512_unpackhi_epi8(v[2], v[3]);
      // per 128-bit lane L (columns x + 16 L ..): the quads of its columns 0-3, 4-7, 8-11, 12-15
      const __m512i q0 = _mm512_unpacklo_epi16(lo01, lo23), q1 = _mm512_unpackhi_epi16(lo01, lo23);
      const __m512i q2 = _mm512_unpacklo_epi16(hi01, hi23), q3 = _mm512_unpackhi_epi16(hi01, hi23);
      const __m512i t0 = _mm512_shuffle_i32x4(q0, q1, 0x44), t1 = _mm512_shuffle_i32x4(q2, q3, 0x44);
      const __m512i t2 = _mm512_shuffle_i32x4(q0, q1, 0xEE), t3 = _mm512_shuffle_i32x4(q2, q3, 0xEE);
      const __m512i lanes[4] = {_mm512_shuffle_i32x4(t0, t1, 0x88), _mm512_shuffle_i32x4(t0, t1, 0xDD),
                                _mm512_shuffle_i32x4(t2, t3, 0x88), _mm512_shuffle_i32x4(t2, t3, 0xDD)};
      for (int l = 0; l < 4 && x / kCols + l < col_blocks; ++l)
        _mm512_storeu_si512(quad_row + size_t(x / kCols + l) * chunks * kTileBytes, lanes[l]);
    }
#else
    for (int cb = 0; cb < col_blocks; ++cb) {
      int8_t* out = quad_row + size_t(cb) * chunks * kTileBytes;
      for (int col = 0; col < kCols; ++col)
        for (int t = 0; t < 4; ++t) {
          const int j = j0 + cb * kCols + col;
          out[col * 4 + t] = r0 + t < k1 && j < j1 ? q[int64_t(r0 + t) * ld + j] : int8_t(0);
        }
    }
#endif
  }
}

}  // namespace

bool gemm_stored_nn_int8_channel(const QuantMatrixView& w, int m, int j0, int j1, const bf16_t* a, int64_t lda,
                                 float* c, int64_t ldc, bool accumulate) {
  const int rows = w.rows, width = j1 - j0;
  if (rows >= kMaxDepth || m > kMaxTokens || w.col0 != 0) return false;
  if (m <= 0 || width <= 0) return true;
  const int chunks = (rows + kChunk - 1) / kChunk, token_blocks = (m + kRows - 1) / kRows;
  const int col_blocks = (width + kCols - 1) / kCols;
  const float* scale = static_cast<const float*>(w.scale);
  // scratch: the pieces, then factor [m], then g's row [rows]
  const size_t piece_bytes = size_t(token_blocks) * chunks * kPieces * kTileBytes;
  auto* pieces = static_cast<int8_t*>(thread_scratch(ScratchSlot::row_tail, piece_bytes + sizeof(float) * (m + rows)));
  auto* factor = reinterpret_cast<float*>(pieces + piece_bytes);
  if (!split_gradients(m, rows, a, lda, scale, chunks, pieces, factor, factor + m)) return false;

  // rows per block: a multiple of 64, about kBlockBytes of tiles
  const int64_t tile_row_bytes = int64_t(col_blocks) * kCols;
  const int block_chunks = static_cast<int>(std::clamp<int64_t>(kBlockBytes / (tile_row_bytes * kChunk), 1, chunks));
  auto* packed = static_cast<int8_t*>(
      thread_scratch(ScratchSlot::packed, size_t(col_blocks) * block_chunks * kTileBytes));
  const bool one_block = block_chunks == chunks;
  auto* acc = one_block ? nullptr
                        : static_cast<int32_t*>(thread_scratch(
                              ScratchSlot::accumulators,
                              sizeof(int32_t) * size_t(col_blocks) * token_blocks * kPieces * kRows * kCols));
  auto* sums = static_cast<int32_t*>(thread_scratch(ScratchSlot::tile_out, sizeof(int32_t) * kPieces * kRows * kCols));
  constexpr int64_t kSumStride = kCols * sizeof(int32_t);
  const int8_t* values = reinterpret_cast<const int8_t*>(w.values);
  const int64_t ld = w.ld_values;

  const tile::Scope scope(tile::full_config());
  for (int c0 = 0; c0 < chunks; c0 += block_chunks) {
    const int cn = std::min(block_chunks, chunks - c0), k0 = c0 * kChunk, k1 = std::min(rows, k0 + cn * kChunk);
    const bool first = c0 == 0, last = c0 + cn == chunks;
    pack_block(values, ld, k0, k1, j0, j1, cn, packed, rows);
    for (int cb = 0; cb < col_blocks; ++cb) {
      for (int tb = 0; tb < token_blocks; ++tb) {
        int32_t* held = acc != nullptr ? acc + (size_t(cb) * token_blocks + tb) * kPieces * kRows * kCols : nullptr;
        if (first) {
          tile::zero<kH>();
          tile::zero<kM>();
          tile::zero<kL>();
        } else {
          tile::load<kH>(held, kSumStride);
          tile::load<kM>(held + kRows * kCols, kSumStride);
          tile::load<kL>(held + 2 * kRows * kCols, kSumStride);
        }
        const int8_t* a_tiles = pieces + (size_t(tb) * chunks + c0) * kPieces * kTileBytes;
        const int8_t* b_tiles = packed + size_t(cb) * cn * kTileBytes;
        for (int ch = 0; ch < cn; ++ch) {
          const int8_t* at = a_tiles + size_t(ch) * kPieces * kTileBytes;
          tile::load<kA + 0>(at, kChunk);
          tile::load<kA + 1>(at + kTileBytes, kChunk);
          tile::load<kA + 2>(at + 2 * kTileBytes, kChunk);
          if (ch % 2 == 0) {
            tile::load<kB0>(b_tiles + size_t(ch) * kTileBytes, kChunk);
            tile::dpbssd<kH, kA + 0, kB0>();
            tile::dpbssd<kM, kA + 1, kB0>();
            tile::dpbssd<kL, kA + 2, kB0>();
          } else {
            tile::load<kB1>(b_tiles + size_t(ch) * kTileBytes, kChunk);
            tile::dpbssd<kH, kA + 0, kB1>();
            tile::dpbssd<kM, kA + 1, kB1>();
            tile::dpbssd<kL, kA + 2, kB1>();
          }
        }
        int32_t* out = last ? sums : held;
        tile::store<kH>(out, kSumStride);
        tile::store<kM>(out + kRows * kCols, kSumStride);
        tile::store<kL>(out + 2 * kRows * kCols, kSumStride);
        if (!last) continue;
        const int tokens = std::min(kRows, m - tb * kRows), cols = std::min(kCols, width - cb * kCols);
        for (int t = 0; t < tokens; ++t) {
          const int i = tb * kRows + t;
          float* ci = c + i * ldc + cb * kCols;
          for (int col = 0; col < cols; ++col) {
            const int at = t * kCols + col;
            const int64_t exact = combine(sums[at], sums[kRows * kCols + at], sums[2 * kRows * kCols + at]);
            const float x = static_cast<float>(exact);
            ci[col] = __builtin_fmaf(x, factor[i], accumulate ? ci[col] : 0.0f);
          }
        }
      }
    }
  }
  return true;
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
