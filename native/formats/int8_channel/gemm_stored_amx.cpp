// int8_channel's many-rows product straight from its stored rows on AMX-INT8 tiles (a DequantGemmFn,
// kernels/dequant_bf16.hpp: what the SFT engine's forward multiplies an AMXINT8_SFT base with,
// moe/base_products.cpp), compiled for levels amx and amx_emulated like gemm_amx.cpp:
//   C[i, n - n0] = scale[n] * sum_k a[i, k] q[n, k]     i < m, n0 <= n < n1
// with no dequantized bf16 block in between: the weight rows are read once, as int8, into the tiles.
//
// The bf16 activations are split exactly into three int8 pieces per row (activation_pieces.hpp):
// each row's three int32 sums over K are exact, combined exactly and rounded once to fp32,
//   C[i, n] = float(65536 H + 256 M + L) * scale[n] * 2^-s_i       (2^-s_i an exact factor)
// So C is the dequantized weight's product up to that rounding and the scale product's (and the
// pieces' rounding of activations below 2^-14 of their row's largest, to 2^-22 of it), with no
// bf16 rounding and no fp32 summation order, and amx and amx_emulated give the same bits. A
// non-finite activation, or more than kMaxTokens rows, is not taken (returns false, nothing
// written: the caller's dequantized bf16 GEMM propagates an Inf or NaN).
//
// Tiles: the weight's 16-row groups are the "A" tiles (16 rows x 64 k, read in place with the row
// stride ld_values; the partial last group and the partial last 64 k from zero-padded copies); the
// pieces, packed once per call, the "B" tiles (16 k quads x 16 tokens, ScratchSlot::packed). Per
// (row group, 16 tokens): the three sums H, M, L stay in tiles 0..2 over all of K; the A tile
// alternates between 3 and 7, the B tiles are 4..6. Each unit asks for its rows' line
// kPrefetchUnits units on (into the next row group at the end of one).
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

constexpr int kRows = tile::kMaxRows;       // 16 weight rows per "A" tile, 16 tokens per "B" tile
constexpr int kUnitK = tile::kMaxColBytes;  // 64 k per tile
constexpr int kTileBytes = kRows * kUnitK;  // 1 KB
using namespace int8_pieces;
constexpr int kPrefetchUnits = 4;
enum : int { kH = 0, kM = 1, kL = 2, kA0 = 3, kB = 4, kA1 = 7 };

// The largest exponent field of the bf16 row[0, K) (0xFF: it holds an Inf or NaN).
int row_field(const bf16_t* row, int K) {
#if defined(__AVX512BW__)
  __m512i largest = _mm512_setzero_si512();
  for (int k = 0; k < K; k += 32) {
    const __mmask32 mask = K - k >= 32 ? ~__mmask32(0) : (__mmask32(1) << (K - k)) - 1;
    const __m512i v = _mm512_maskz_loadu_epi16(mask, row + k);
    largest = _mm512_max_epu16(largest, _mm512_and_si512(v, _mm512_set1_epi16(0x7FFF)));
  }
  const __m512i lo = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(largest));
  const __m512i hi = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(largest, 1));
  return int(_mm512_reduce_max_epu32(_mm512_max_epu32(lo, hi)) >> 7);
#else
  int field = 0;
  for (int k = 0; k < K; ++k) field = std::max(field, (row[k] >> 7) & 0xFF);
  return field;
#endif
}

// The pieces of a [m, K] (row stride lda) into `packed`, [token block][unit][piece] "B" tiles: dword
// r * 16 + c of a tile holds piece p of X[16 tb + c, 64 u + 4 r .. + 3] (zero past m and K);
// factor[i] = 2^-s_i. False when a holds an Inf or NaN (packed and factor then undefined).
bool split_activations(int m, int K, const bf16_t* a, int64_t lda, int units, uint32_t* packed, float* factor) {
  constexpr int kTileWords = kTileBytes / 4;
  const int blocks = (m + kRows - 1) / kRows;
  std::memset(packed, 0, size_t(blocks) * units * kPieces * kTileBytes);
  for (int i = 0; i < m; ++i) {
    const bf16_t* row = a + i * lda;
    const int field = row_field(row, K);
    if (field == 0xFF) return false;
    const RowScaling scaling = row_scaling(field);
    factor[i] = scaling.down;
    uint32_t* block = packed + size_t(i / kRows) * units * kPieces * kTileWords + i % kRows;
#if defined(__AVX512BW__)
    for (int k0 = 0; k0 < K; k0 += 16) {  // 4 quads, inside one unit
      const __mmask16 mask = K - k0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k0)) - 1);
      const __m512i bits = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, row + k0));
      const Pieces16 p = split16(_mm512_castsi512_ps(_mm512_slli_epi32(bits, 16)), scaling);
      uint32_t* word = block + size_t(k0 / kUnitK) * kPieces * kTileWords + ((k0 % kUnitK) / 4) * kRows;
      alignas(16) uint32_t quads[kPieces][4];
      _mm_store_si128(reinterpret_cast<__m128i*>(quads[kH]), p.h);
      _mm_store_si128(reinterpret_cast<__m128i*>(quads[kM]), p.m);
      _mm_store_si128(reinterpret_cast<__m128i*>(quads[kL]), p.l);
      for (int piece = 0; piece < kPieces; ++piece)
        for (int d = 0; d < 4; ++d) word[piece * kTileWords + d * kRows] = quads[piece][d];
    }
#else
    for (int k0 = 0; k0 < K; k0 += 4) {
      uint32_t h4 = 0, m4 = 0, l4 = 0;
      for (int t = 0; t < 4 && k0 + t < K; ++t) {
        const Pieces p = split(bf16_to_float(row[k0 + t]), scaling);
        h4 |= uint32_t(p.h & 0xFF) << (8 * t);
        m4 |= uint32_t(p.m & 0xFF) << (8 * t);
        l4 |= uint32_t(p.l & 0xFF) << (8 * t);
      }
      uint32_t* word = block + size_t(k0 / kUnitK) * kPieces * kTileWords + ((k0 % kUnitK) / 4) * kRows;
      word[kH * kTileWords] = h4;
      word[kM * kTileWords] = m4;
      word[kL * kTileWords] = l4;
    }
#endif
  }
  return true;
}

// Where the "A" tiles of one 16-row group come from: unit u at base + 64 u (row stride ld), except
// unit `tail_unit`, read from the zero-padded 16 x 64 copy `tail` (no partial unit: tail null).
struct WeightGroup {
  const int8_t* base;
  int64_t ld;
  const int8_t* tail;
  int tail_unit;

  const int8_t* unit(int u, int64_t& stride) const {
    if (tail != nullptr && u == tail_unit) {
      stride = kUnitK;
      return tail;
    }
    stride = ld;
    return base + int64_t(u) * kUnitK;
  }
};

template <int A>
inline void unit_products(const WeightGroup& g, int u, const int8_t* pieces) {
  int64_t stride = 0;
  const int8_t* w = g.unit(u, stride);
  tile::load<A>(w, stride);
  tile::load<kB + 0>(pieces + kH * kTileBytes, kUnitK);
  tile::load<kB + 1>(pieces + kM * kTileBytes, kUnitK);
  tile::load<kB + 2>(pieces + kL * kTileBytes, kUnitK);
  tile::dpbssd<kH, A, kB + 0>();
  tile::dpbssd<kM, A, kB + 1>();
  tile::dpbssd<kL, A, kB + 2>();
}

// Asks for line u of each of the 16 rows from `base` (row stride ld).
inline void prefetch_unit(const int8_t* base, int64_t ld, int u) {
  for (int r = 0; r < kRows; ++r) __builtin_prefetch(base + r * ld + int64_t(u) * kUnitK);
}

}  // namespace

bool gemm_stored_int8_channel(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda,
                              float* c, int64_t ldc) {
  const int K = w.cols;
  if (K >= kMaxDepth || m > kMaxTokens || w.col0 != 0) return false;
  if (m <= 0 || n0 >= n1) return true;
  const int units = (K + kUnitK - 1) / kUnitK, blocks = (m + kRows - 1) / kRows;
  const size_t packed_bytes = size_t(blocks) * units * kPieces * kTileBytes;
  auto* packed = static_cast<int8_t*>(thread_scratch(ScratchSlot::packed, packed_bytes + sizeof(float) * m));
  auto* factor = reinterpret_cast<float*>(packed + packed_bytes);
  if (!split_activations(m, K, a, lda, units, reinterpret_cast<uint32_t*>(packed), factor)) return false;

  const float* scale = static_cast<const float*>(w.scale);
  const int8_t* values = reinterpret_cast<const int8_t*>(w.values);
  const int64_t ld = w.ld_values;
  const int rows = n1 - n0, groups = (rows + kRows - 1) / kRows, full_groups = rows / kRows;
  const bool k_tail = K % kUnitK != 0;
  // zero-padded copies: the partial last unit of each full group, then the partial last group whole
  const int64_t padded_ld = int64_t(units) * kUnitK;
  auto* copies = static_cast<int8_t*>(thread_scratch(
      ScratchSlot::row_tail, size_t(k_tail ? full_groups : 0) * kTileBytes + size_t(kRows) * padded_ld));
  int8_t* last_group = copies + size_t(k_tail ? full_groups : 0) * kTileBytes;
  auto* sums = static_cast<int32_t*>(thread_scratch(ScratchSlot::tile_out, sizeof(int32_t) * kPieces * kRows * kRows));

  auto group = [&](int g) -> WeightGroup {
    if (g == full_groups) return {last_group, padded_ld, nullptr, -1};
    const int8_t* base = values + int64_t(n0 + g * kRows) * ld;
    if (!k_tail) return {base, ld, nullptr, -1};
    int8_t* tail = copies + size_t(g) * kTileBytes;
    std::memset(tail, 0, kTileBytes);
    for (int r = 0; r < kRows; ++r) std::memcpy(tail + r * kUnitK, base + r * ld + (units - 1) * kUnitK, K % kUnitK);
    return {base, ld, tail, units - 1};
  };
  if (groups > full_groups) {
    std::memset(last_group, 0, size_t(kRows) * padded_ld);
    for (int r = 0; r < rows - full_groups * kRows; ++r)
      std::memcpy(last_group + r * padded_ld, values + int64_t(n0 + full_groups * kRows + r) * ld, K);
  }

  const tile::Scope scope(tile::full_config());
  for (int g = 0; g < groups; ++g) {
    const WeightGroup wg = group(g);
    const int n_first = n0 + g * kRows, n_count = std::min(kRows, n1 - n_first);
    // the lines kPrefetchUnits units on: this group's, then the next full group's first ones
    const int8_t* next_base = g + 1 < full_groups ? values + int64_t(n_first + kRows) * ld : nullptr;
    for (int b = 0; b < blocks; ++b) {
      const int8_t* pieces = packed + size_t(b) * units * kPieces * kTileBytes;
      tile::zero<kH>();
      tile::zero<kM>();
      tile::zero<kL>();
      for (int u = 0; u < units; u += 2) {
        if (b == 0 && g < full_groups) {
          for (int v = u + kPrefetchUnits; v < u + kPrefetchUnits + 2; ++v) {
            if (v < units) prefetch_unit(wg.base, ld, v);
            else if (next_base != nullptr && v - units < units) prefetch_unit(next_base, ld, v - units);
          }
        }
        unit_products<kA0>(wg, u, pieces + size_t(u) * kPieces * kTileBytes);
        if (u + 1 < units) unit_products<kA1>(wg, u + 1, pieces + size_t(u + 1) * kPieces * kTileBytes);
      }
      tile::store<kH>(sums, kRows * sizeof(int32_t));
      tile::store<kM>(sums + kRows * kRows, kRows * sizeof(int32_t));
      tile::store<kL>(sums + 2 * kRows * kRows, kRows * sizeof(int32_t));
      const int tokens = std::min(kRows, m - b * kRows);
      for (int t = 0; t < tokens; ++t) {
        const int i = b * kRows + t;
        float* out = c + i * ldc + (n_first - n0);
        for (int r = 0; r < n_count; ++r) {
          const int at = r * kRows + t;
          const int64_t x = combine(sums[at], sums[kRows * kRows + at], sums[2 * kRows * kRows + at]);
          out[r] = static_cast<float>(x) * scale[n_first + r] * factor[i];
        }
      }
    }
  }
  return true;
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
