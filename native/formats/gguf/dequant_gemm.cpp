// The many-rows products (DequantGemmFn, kernels/dequant_bf16.hpp) of Q8_0, Q4_K, Q5_K and Q6_K
// (the types of Q4_K_M and Q5_K_M files, with llama.cpp's Q8_0 fallback for down rows that are not
// whole super-blocks), at the AVX-512 levels: the prefill, straight from the blocks as the file stores
// them (the other types, and slices that start inside a block, dequantize row blocks to bf16). The
// activations are quantized to int8 as in the few-rows products (dequant_dot.cpp) and laid out with
// 16 rows across a vector's lanes (lane_activations.hpp), so that one weight row's 4 codes,
// broadcast, multiply 16 rows' activations in one vpdpbusd and the weights need no repacking:
//   Q4_K  codes 0..15 (Q5_K: 0..31; nibbles split into a row buffer) broadcast as the unsigned operand; per
//         sub-block of 32 the int32 sums times d sc, minus dmin m times the rows' sums of q; times
//         the rows' da per 256 columns;
//   Q6_K  codes u = 0..63 (a row buffer) the same way; per sub-block of 16, (sums - 32 times the
//         rows' sums of q) times d sc; times da;
//   Q8_0  codes + 128 (a row buffer) broadcast as the unsigned operand, the sums started at -128
//         times the rows' sums of q per block; times d da per block.
// Tiles of 4 weight rows x 32 or 48 activation rows keep their sums in registers over all of K.
#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>

#include "formats/gguf/gguf_decode.hpp"
#include "formats/gguf/lane_activations.hpp"
#include "kernels/micro_tile.hpp"
#include "kernels/vnni_ops.hpp"
#endif

#include "formats/gguf/gguf_blocks.hpp"
#include "kernels/dequant_bf16.hpp"
#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {

#if defined(__AVX512F__)

namespace {

// Tile sizes (weight rows x groups of 16 activation rows), measured on Zen 4 (DeepSeek-V2-Lite,
// q = 512, 2 threads): the K-quant tiles keep sums, sub-block partials and results (3 J V
// registers), 4 x 2 beat 3 x 3 (about 7%) and 2 x 4; Q8_0's keep sums and results only, and 4 x 3
// beats 4 x 2 (about 5%: DeepSeek-V2-Lite's 48 tokens per expert are one tile of groups, not two).
constexpr int kKQuantTileRows = 4, kKQuantTileGroups = 2;
constexpr int kQ8_0TileRows = 4, kQ8_0TileGroups = 3;

// c[(16 g + r) * ldc] = v[r] for the activation rows 16 g + r < m.
inline void store_lanes(__m512 v, int g, int m, float* c, int64_t ldc) {
  alignas(64) float lanes[kLanes];
  _mm512_store_ps(lanes, v);
  for (int r = 0; r < kLanes && kLanes * g + r < m; ++r) c[(kLanes * g + r) * ldc] = lanes[r];
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

// Weight rows [n, n + J) times activation groups [g0, g0 + V): c[i * ldc + j] for row n + j. Per
// sub-block the int32 sums times scale, minus offset times the rows' sums of q; per super-block
// times the rows' da.
template <class Rows, int J, int V>
void k_quant_tile(const QuantMatrixView& w, int n, const LaneActivations& x, int g0, int m, float* c, int64_t ldc) {
  constexpr int kSubs = 256 / Rows::kSub, kQuads = Rows::kSub / 4;
  const uint8_t* quads[V];
  const float *d[V], *row_sums[V];
  for (int v = 0; v < V; ++v) quads[v] = x.quads_of(g0 + v), d[v] = x.d_of(g0 + v), row_sums[v] = x.sums_of(g0 + v);
  alignas(64) uint8_t codes[J][256];
  __m512 acc[J][V];
  for (int j = 0; j < J; ++j)
    for (int v = 0; v < V; ++v) acc[j][v] = _mm512_setzero_ps();
  for (int kb = 0; kb * 256 < w.cols; ++kb) {  // super-block kb, columns [256 kb, 256 kb + 256)
    float scale[J][kSubs], offset[J][kSubs];
    for (int j = 0; j < J; ++j)
      Rows::decode(w.values + (n + j) * w.ld_values + kb * Rows::kBytes, codes[j], scale[j], offset[j]);
    __m512 chunk[J][V];
    for (int j = 0; j < J; ++j)
      for (int v = 0; v < V; ++v) chunk[j][v] = _mm512_setzero_ps();
    for (int s = 0; s < kSubs; ++s) {
      __m512i sums[J][V];
      for (int j = 0; j < J; ++j)
        for (int v = 0; v < V; ++v) sums[j][v] = _mm512_setzero_si512();
      for (int t = 0; t < kQuads; ++t) {
        __m512i a[V];
        for (int v = 0; v < V; ++v) a[v] = _mm512_loadu_si512(quads[v] + 64 * (64 * kb + kQuads * s + t));
        for (int j = 0; j < J; ++j) {
          const __m512i q = broadcast_quad(codes[j] + Rows::kSub * s + 4 * t);
          for (int v = 0; v < V; ++v) sums[j][v] = dpbusd(sums[j][v], q, a[v]);
        }
      }
      for (int v = 0; v < V; ++v) {  // the rows' sums of q over the sub-block (sums per 16 columns)
        const float* halves = row_sums[v] + kLanes * (16 * kb + (Rows::kSub / 16) * s);
        __m512 sums_of_q = _mm512_loadu_ps(halves);
        if (Rows::kSub == 32) sums_of_q = _mm512_add_ps(sums_of_q, _mm512_loadu_ps(halves + kLanes));
        for (int j = 0; j < J; ++j) {
          chunk[j][v] = _mm512_fmadd_ps(to_float(sums[j][v]), _mm512_set1_ps(scale[j][s]), chunk[j][v]);
          chunk[j][v] = _mm512_fnmadd_ps(_mm512_set1_ps(offset[j][s]), sums_of_q, chunk[j][v]);
        }
      }
    }
    for (int v = 0; v < V; ++v) {
      const __m512 da = _mm512_loadu_ps(d[v] + kLanes * kb);
      for (int j = 0; j < J; ++j) acc[j][v] = _mm512_fmadd_ps(chunk[j][v], da, acc[j][v]);
    }
  }
  for (int j = 0; j < J; ++j)
    for (int v = 0; v < V; ++v) store_lanes(acc[j][v], g0 + v, m, c + j, ldc);
}

template <int J, int V>
void q8_0_tile(const QuantMatrixView& w, int n, const LaneActivations& x, int g0, int m, float* c, int64_t ldc) {
  const __m256i offset = _mm256_set1_epi8(static_cast<char>(0x80));
  const uint8_t* quads[V];
  const float* d[V];
  const int32_t* bias[V];
  for (int v = 0; v < V; ++v) quads[v] = x.quads_of(g0 + v), d[v] = x.d_of(g0 + v), bias[v] = x.bias_of(g0 + v);
  alignas(64) uint8_t codes[J][32];
  __m512 acc[J][V];
  for (int j = 0; j < J; ++j)
    for (int v = 0; v < V; ++v) acc[j][v] = _mm512_setzero_ps();
  for (int b = 0; b * 32 < w.cols; ++b) {  // block b, columns [32 b, 32 b + 32)
    float dw[J];
    for (int j = 0; j < J; ++j) {
      const uint8_t* block = w.values + (n + j) * w.ld_values + b * gguf_blocks::Q8_0::Bytes;
      dw[j] = gguf_decode::half_at(block);
      _mm256_store_si256(reinterpret_cast<__m256i*>(codes[j]),
                         _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 2)), offset));
    }
    __m512i sums[J][V];
    for (int v = 0; v < V; ++v) {
      const __m512i start = _mm512_loadu_si512(bias[v] + kLanes * b);
      for (int j = 0; j < J; ++j) sums[j][v] = start;
    }
    for (int t = 0; t < 8; ++t) {
      __m512i a[V];
      for (int v = 0; v < V; ++v) a[v] = _mm512_loadu_si512(quads[v] + 64 * (8 * b + t));
      for (int j = 0; j < J; ++j) {
        const __m512i q = broadcast_quad(codes[j] + 4 * t);
        for (int v = 0; v < V; ++v) sums[j][v] = dpbusd(sums[j][v], q, a[v]);
      }
    }
    for (int v = 0; v < V; ++v) {
      const __m512 da = _mm512_loadu_ps(d[v] + kLanes * b);
      for (int j = 0; j < J; ++j)
        acc[j][v] = _mm512_fmadd_ps(to_float(sums[j][v]), _mm512_mul_ps(_mm512_set1_ps(dw[j]), da), acc[j][v]);
    }
  }
  for (int j = 0; j < J; ++j)
    for (int v = 0; v < V; ++v) store_lanes(acc[j][v], g0 + v, m, c + j, ldc);
}

// C = A W^T through tile(rows, groups, x, n, g, c_n) for every tile of weight rows [n, n + rows) and
// activation groups [g, g + groups) (rows <= Rows, groups <= Groups), c_n = c + (n - n0), with the
// activations quantized as `blocks`.
template <int Rows, int Groups, class Tile>
bool lane_gemm(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c, Q8Blocks blocks,
               Tile tile) {
  if (w.col0 != 0) return false;
  const LaneActivations x = lane_activations(a, lda, m, w.cols, blocks);
  for (int n = n0; n < n1; n += Rows)
    for (int g = 0; g < x.groups; g += Groups)
      with_static_count<Rows>(std::min(Rows, n1 - n), [&](auto rows) {
        with_static_count<Groups>(std::min(Groups, x.groups - g),
                                       [&](auto groups) { tile(rows, groups, x, n, g, c + (n - n0)); });
      });
  return true;
}

}  // namespace

bool gemm_gguf_q4_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                    int64_t ldc) {
  return lane_gemm<kKQuantTileRows, kKQuantTileGroups>(w, m, n0, n1, a, lda, c, Q8Blocks::k_quant, [&](auto rows, auto groups, auto& x, int n, int g, float* cn) {
    k_quant_tile<K45Rows<false>, rows(), groups()>(w, n, x, g, m, cn, ldc);
  });
}

bool gemm_gguf_q5_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                    int64_t ldc) {
  return lane_gemm<kKQuantTileRows, kKQuantTileGroups>(w, m, n0, n1, a, lda, c, Q8Blocks::k_quant, [&](auto rows, auto groups, auto& x, int n, int g, float* cn) {
    k_quant_tile<K45Rows<true>, rows(), groups()>(w, n, x, g, m, cn, ldc);
  });
}

bool gemm_gguf_q6_k(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                    int64_t ldc) {
  return lane_gemm<kKQuantTileRows, kKQuantTileGroups>(w, m, n0, n1, a, lda, c, Q8Blocks::k_quant, [&](auto rows, auto groups, auto& x, int n, int g, float* cn) {
    k_quant_tile<Q6KRows, rows(), groups()>(w, n, x, g, m, cn, ldc);
  });
}

bool gemm_gguf_q8_0(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                    int64_t ldc) {
  return lane_gemm<kQ8_0TileRows, kQ8_0TileGroups>(w, m, n0, n1, a, lda, c, Q8Blocks::q8_0, [&](auto rows, auto groups, auto& x, int n, int g, float* cn) {
    q8_0_tile<rows(), groups()>(w, n, x, g, m, cn, ldc);
  });
}

#endif

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
