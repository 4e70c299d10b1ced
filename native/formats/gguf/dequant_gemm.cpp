// The many-rows products (DequantGemmFn, kernels/dequant_bf16.hpp) of Q8_0, Q4_K, Q5_K and Q6_K
// (the types of Q4_K_M and Q5_K_M files, with llama.cpp's Q8_0 fallback for down rows that are not
// whole super-blocks), at avx2 and the AVX-512 levels: the prefill, straight from the blocks as the
// file stores them (the other types, and slices that start inside a block, dequantize row blocks to
// bf16). The activations are quantized to int8 as in the few-rows products (dequant_dot.cpp) and
// laid out with 16 rows across a vector's lanes (lane_activations.hpp; at avx2 a ymm holds 8 of
// them), so that one weight row's 4 codes, broadcast, multiply the rows' activations in one vpdpbusd
// and the weights need no repacking:
//   Q4_K  codes 0..15 (Q5_K: 0..31; nibbles split into a row buffer) broadcast as the unsigned operand; per
//         sub-block of 32 the int32 sums times d sc, minus dmin m times the rows' sums of q; times
//         the rows' da per 256 columns;
//   Q6_K  codes u = 0..63 (a row buffer) the same way; per sub-block of 16, (sums - 32 times the
//         rows' sums of q) times d sc; times da;
//   Q8_0  codes + 128 (a row buffer) broadcast as the unsigned operand, the sums started at -128
//         times the rows' sums of q per block; times d da per block.
// At avx2 (no vpdpbusd) the K-quants' byte products are vpmaddubsw and vpmaddwd by ones (their codes
// are small enough for exact int16 pair sums), Q8_0's the even / odd split by vpmaddwd (vector_ops.hpp:
// its codes + 128 are not). One template over the level's vectors: the same integer sums at every
// level. Tiles of weight rows x activation rows keep their sums in registers over all of K.
#include <algorithm>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>

#include "formats/gguf/gguf_decode.hpp"
#include "formats/gguf/lane_activations.hpp"
#include "formats/gguf/vector_ops.hpp"
#include "kernels/micro_tile.hpp"
#endif

#include "formats/gguf/gguf_blocks.hpp"
#include "kernels/dequant_bf16.hpp"
#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

#if defined(__AVX2__)

namespace {

// Tile sizes (weight rows x vectors of Vec::kLanes activation rows). AVX-512, measured on Zen 4
// (DeepSeek-V2-Lite, q = 512, 2 threads): the K-quant tiles keep sums, sub-block partials and
// results (3 J V registers), 4 x 2 beat 3 x 3 (about 7%) and 2 x 4; Q8_0's keep sums and results
// only, and 4 x 3 beats 4 x 2 (about 5%: DeepSeek-V2-Lite's 48 tokens per expert are one tile of
// groups, not two). avx2 has 16 registers: 2 x 2 for both (the K-quants' 12 accumulators, Q8_0's 8
// and the split activations).
#if defined(__AVX512F__)
constexpr int kKQuantTileRows = 4, kKQuantTileVectors = 2;
constexpr int kQ8_0TileRows = 4, kQ8_0TileVectors = 3;
#else
constexpr int kKQuantTileRows = 2, kKQuantTileVectors = 2;
constexpr int kQ8_0TileRows = 2, kQ8_0TileVectors = 2;
#endif

// c[(i0 + r) * ldc] = v[r] for the activation rows i0 + r < m.
inline void store_lanes(Vec::F v, int i0, int m, float* c, int64_t ldc) {
  alignas(64) float lanes[Vec::kLanes];
  Vec::store_f(lanes, v);
  for (int r = 0; r < Vec::kLanes && i0 + r < m; ++r) c[(i0 + r) * ldc] = lanes[r];
}

// How a K-quant row's super-block of 256 weights enters the tiles: its codes as unsigned bytes and,
// per sub-block s of kSub weights, w = scale[s] q - offset[s] (q the code).
template <bool HighBit>
struct K45Rows {  // Q4_K (codes 0..15) and Q5_K (0..31): w = d sc q - dmin m
  static constexpr int kSub = 32, kBytes = HighBit ? gguf_blocks::Q5_K::Bytes : gguf_blocks::Q4_K::Bytes;
  static void decode(const uint8_t* block, uint8_t* codes, float* scale, float* offset) {
    const float d = gguf_decode::half_at(block), dmin = gguf_decode::half_at(block + 2);
    uint64_t scales, mins;
    gguf_decode::k_scales_mins(block + 4, scales, mins);
    for (int s = 0; s < 8; ++s) {
      scale[s] = d * float(scales >> (8 * s) & 0xFF);
      offset[s] = dmin * float(mins >> (8 * s) & 0xFF);
    }
    for (int p = 0; p < 4; ++p) {  // sub-blocks 2p and 2p + 1
      __m256i pair[2];
      gguf_decode::k45_codes<HighBit>(block, p, pair);
      _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 64 * p), pair[0]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 64 * p + 32), pair[1]);
    }
  }
};

struct Q6KRows {  // w = d sc (u - 32), codes u = 0..63
  static constexpr int kSub = 16, kBytes = gguf_blocks::Q6_K::Bytes;
  static void decode(const uint8_t* block, uint8_t* codes, float* scale, float* offset) {
    const float d = gguf_decode::half_at(block + 208);
    for (int s = 0; s < 16; ++s) {
      scale[s] = d * float(static_cast<int8_t>(block[192 + s]));
      offset[s] = 32.0f * scale[s];
    }
    for (int chunk = 0; chunk < 8; ++chunk)
      _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 32 * chunk), gguf_decode::q6_k_unsigned_codes(block, chunk));
  }
};

// Weight rows [n, n + J) times the activation rows of vectors [v0, v0 + V) (rows Vec::kLanes v0
// on): c[i * ldc + j] for row n + j. Per sub-block the int32 sums times scale, minus offset times
// the rows' sums of q; per super-block times the rows' da.
template <class Rows, int J, int V>
void k_quant_tile(const QuantMatrixView& w, int n, const LaneActivations& x, int v0, int m, float* c, int64_t ldc) {
  constexpr int kSubs = 256 / Rows::kSub, kQuads = Rows::kSub / 4;
  const uint8_t* quads[V];
  const float *d[V], *row_sums[V];
  for (int v = 0; v < V; ++v) {
    const int i = Vec::kLanes * (v0 + v);
    quads[v] = x.quads_of(i), d[v] = x.d_of(i), row_sums[v] = x.sums_of(i);
  }
  alignas(64) uint8_t codes[J][256];
  Vec::F acc[J][V];
  for (int j = 0; j < J; ++j)
    for (int v = 0; v < V; ++v) acc[j][v] = Vec::zero_f();
  for (int kb = 0; kb * 256 < w.cols; ++kb) {  // super-block kb, columns [256 kb, 256 kb + 256)
    float scale[J][kSubs], offset[J][kSubs];
    for (int j = 0; j < J; ++j)
      Rows::decode(w.values + (n + j) * w.ld_values + kb * Rows::kBytes, codes[j], scale[j], offset[j]);
    Vec::F chunk[J][V];
    for (int j = 0; j < J; ++j)
      for (int v = 0; v < V; ++v) chunk[j][v] = Vec::zero_f();
    for (int s = 0; s < kSubs; ++s) {
      Vec::I sums[J][V];
      for (int j = 0; j < J; ++j)
        for (int v = 0; v < V; ++v) sums[j][v] = Vec::zero();
      for (int t = 0; t < kQuads; ++t) {
        Vec::I a[V];
        for (int v = 0; v < V; ++v) a[v] = Vec::load(quads[v] + 64 * (64 * kb + kQuads * s + t));
        for (int j = 0; j < J; ++j) {
          const Vec::I q = Vec::broadcast_quad(codes[j] + Rows::kSub * s + 4 * t);
          for (int v = 0; v < V; ++v) sums[j][v] = Vec::dpbusd_small(sums[j][v], q, a[v]);
        }
      }
      for (int v = 0; v < V; ++v) {  // the rows' sums of q over the sub-block (sums per 16 columns)
        const float* halves = row_sums[v] + kGroupRows * (16 * kb + (Rows::kSub / 16) * s);
        Vec::F sums_of_q = Vec::load_f(halves);
        if (Rows::kSub == 32) sums_of_q = Vec::add_f(sums_of_q, Vec::load_f(halves + kGroupRows));
        for (int j = 0; j < J; ++j) {
          chunk[j][v] = Vec::fmadd(Vec::to_float(sums[j][v]), Vec::set1(scale[j][s]), chunk[j][v]);
          chunk[j][v] = Vec::fnmadd(Vec::set1(offset[j][s]), sums_of_q, chunk[j][v]);
        }
      }
    }
    for (int v = 0; v < V; ++v) {
      const Vec::F da = Vec::load_f(d[v] + kGroupRows * kb);
      for (int j = 0; j < J; ++j) acc[j][v] = Vec::fmadd(chunk[j][v], da, acc[j][v]);
    }
  }
  for (int j = 0; j < J; ++j)
    for (int v = 0; v < V; ++v) store_lanes(acc[j][v], Vec::kLanes * (v0 + v), m, c + j, ldc);
}

template <int J, int V>
void q8_0_tile(const QuantMatrixView& w, int n, const LaneActivations& x, int v0, int m, float* c, int64_t ldc) {
  const __m256i offset = _mm256_set1_epi8(static_cast<char>(0x80));
  const uint8_t* quads[V];
  const float* d[V];
  const int32_t* bias[V];
  for (int v = 0; v < V; ++v) {
    const int i = Vec::kLanes * (v0 + v);
    quads[v] = x.quads_of(i), d[v] = x.d_of(i), bias[v] = x.bias_of(i);
  }
  alignas(64) uint8_t codes[J][32];
  Vec::F acc[J][V];
  for (int j = 0; j < J; ++j)
    for (int v = 0; v < V; ++v) acc[j][v] = Vec::zero_f();
  for (int b = 0; b * 32 < w.cols; ++b) {  // block b, columns [32 b, 32 b + 32)
    float dw[J];
    for (int j = 0; j < J; ++j) {
      const uint8_t* block = w.values + (n + j) * w.ld_values + b * gguf_blocks::Q8_0::Bytes;
      dw[j] = gguf_decode::half_at(block);
      _mm256_store_si256(reinterpret_cast<__m256i*>(codes[j]),
                         _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 2)), offset));
    }
    Vec::I sums[J][V];
    for (int v = 0; v < V; ++v) {
      const Vec::I start = Vec::load(bias[v] + kGroupRows * b);
      for (int j = 0; j < J; ++j) sums[j][v] = start;
    }
    for (int t = 0; t < 8; ++t) {
      Vec::I a[V];
      for (int v = 0; v < V; ++v) a[v] = Vec::load(quads[v] + 64 * (8 * b + t));
      for (int j = 0; j < J; ++j) {
        const Vec::I q = Vec::broadcast_quad(codes[j] + 4 * t);
        for (int v = 0; v < V; ++v) sums[j][v] = Vec::dpbusd(sums[j][v], q, a[v]);
      }
    }
    for (int v = 0; v < V; ++v) {
      const Vec::F da = Vec::load_f(d[v] + kGroupRows * b);
      for (int j = 0; j < J; ++j)
        acc[j][v] = Vec::fmadd(Vec::to_float(sums[j][v]), Vec::mul(Vec::set1(dw[j]), da), acc[j][v]);
    }
  }
  for (int j = 0; j < J; ++j)
    for (int v = 0; v < V; ++v) store_lanes(acc[j][v], Vec::kLanes * (v0 + v), m, c + j, ldc);
}

// C = A W^T through tile(rows, vectors, x, n, v, c_n) for every tile of weight rows [n, n + rows) and
// the activation rows of vectors [v, v + vectors) (rows <= Rows, vectors <= Vectors), c_n = c + (n -
// n0), with the activations quantized as `blocks`.
template <int Rows, int Vectors, class Tile>
bool lane_gemm(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c, Q8Blocks blocks,
               Tile tile) {
  if (w.col0 != 0) return false;
  const LaneActivations x = lane_activations(a, lda, m, w.cols, blocks);
  const int count = (m + Vec::kLanes - 1) / Vec::kLanes;  // vectors holding rows < m
  for (int n = n0; n < n1; n += Rows)
    for (int v = 0; v < count; v += Vectors)
      with_static_count<Rows>(std::min(Rows, n1 - n), [&](auto rows) {
        with_static_count<Vectors>(std::min(Vectors, count - v),
                                   [&](auto vectors) { tile(rows, vectors, x, n, v, c + (n - n0)); });
      });
  return true;
}

}  // namespace

bool gemm_gguf_q4_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                    int64_t ldc) {
  return lane_gemm<kKQuantTileRows, kKQuantTileVectors>(w, m, n0, n1, a, lda, c, Q8Blocks::k_quant, [&](auto rows, auto vectors, auto& x, int n, int v, float* cn) {
    k_quant_tile<K45Rows<false>, rows(), vectors()>(w, n, x, v, m, cn, ldc);
  });
}

bool gemm_gguf_q5_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                    int64_t ldc) {
  return lane_gemm<kKQuantTileRows, kKQuantTileVectors>(w, m, n0, n1, a, lda, c, Q8Blocks::k_quant, [&](auto rows, auto vectors, auto& x, int n, int v, float* cn) {
    k_quant_tile<K45Rows<true>, rows(), vectors()>(w, n, x, v, m, cn, ldc);
  });
}

bool gemm_gguf_q6_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                    int64_t ldc) {
  return lane_gemm<kKQuantTileRows, kKQuantTileVectors>(w, m, n0, n1, a, lda, c, Q8Blocks::k_quant, [&](auto rows, auto vectors, auto& x, int n, int v, float* cn) {
    k_quant_tile<Q6KRows, rows(), vectors()>(w, n, x, v, m, cn, ldc);
  });
}

bool gemm_gguf_q8_0(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                    int64_t ldc) {
  return lane_gemm<kQ8_0TileRows, kQ8_0TileVectors>(w, m, n0, n1, a, lda, c, Q8Blocks::q8_0, [&](auto rows, auto vectors, auto& x, int n, int v, float* cn) {
    q8_0_tile<rows(), vectors()>(w, n, x, v, m, cn, ldc);
  });
}

#endif

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
