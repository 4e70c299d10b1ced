// The integer products of formats int8_rows and int4_rows (int_rows.hpp, which gives the fp32 order
// every level follows), compiled for generic (plain C++) and avx2 (AVX2 + F16C), both with
// -ffp-contract=off. The per-lane steps, the tails (a last partial 64-k group of int8_rows, the
// groups past the last whole 128 k of int4_rows) and the final reduction are the plain C++ below
// at both levels; avx2 runs the whole groups with vectors whose lanes are the lanes of the order:
//   int8_rows  per 64 k: |q| (vpabsb) times qa with q's sign (vpsignb) by vpmaddubsw (pair sums
//              <= 2 * 128 * 127, no saturation), vpmaddwd with ones: int32 lane j = k 4j .. 4j + 3
//              of each 32-byte half, both halves added;
//   int4_rows  per 128 k (8 groups): the codes' low and high nibbles against the activations
//              rearranged once per call into [even k | odd k] per 64 k, vpmaddubsw, vpmaddwd with
//              ones, vphaddd and a lane permutation: int32 lane j = group j.
// Rows are taken kRowTile at a time against each column, so that a column's weights are read
// (and, for int4_rows, unpacked) once per tile of rows.
#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "formats/int_rows/int_rows.hpp"
#include "kernels/fp16.hpp"
#include "kernels/gemm_quant.hpp"
#include "kernels/gemm_quant_levels.hpp"
#include "kernels/level_namespace.hpp"
#include "kernels/micro_tile.hpp"
#include "kernels/quant_kernel_common.hpp"
#include "kernels/quant_layout.hpp"
#include "kernels/scratch.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

constexpr int kLanes = 8;
constexpr int kRowTile = 4;          // activation rows per pass over a column
constexpr int kColumnBlock = 16;     // columns whose weights stay in cache across the row tiles
constexpr int kInt4Group = 16;       // k per int4_rows group
constexpr int kInt4Block = 128;      // k per vector step of int4_rows: 8 groups
constexpr int kUnitK = quant_layout::kUnitK;  // k per activation scale

inline float reduce(const float p[kLanes]) { return ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7])); }

// The call's m rows quantized (quantize_activations' records, sums per 16 k) in thread scratch.
struct Records {
  QuantActLayout layout;
  const uint8_t* data;
  const int8_t* q(int i) const { return reinterpret_cast<const int8_t*>(data + i * layout.row_bytes); }
  const float* scale(int i) const { return reinterpret_cast<const float*>(data + i * layout.row_bytes + layout.scale_offset); }
  const float* sum(int i) const { return reinterpret_cast<const float*>(data + i * layout.row_bytes + layout.sum_offset); }
};

Records quantize_rows(const bf16_t* a, int64_t lda, int m, int k) {
  const QuantActLayout layout = quant_act_layout(kInt4Group, k);
  auto* data = static_cast<uint8_t*>(thread_scratch(ScratchSlot::packed, size_t(m) * size_t(layout.row_bytes)));
  quantize_activations({kInt4Group, m, k, a, lda, data, layout.row_bytes});
  return {layout, data};
}

// ---- int8_rows ---------------------------------------------------------------------------------

// Groups [g0, g1) of one row against one weight row w [k], into the lanes p.
void int8_lanes(const int8_t* qa, const float* sa, const int8_t* w, int k, int g0, int g1, float p[kLanes]) {
  for (int g = g0; g < g1; ++g) {
    int32_t lane[kLanes] = {};
    for (int j = g * kUnitK; j < std::min(k, (g + 1) * kUnitK); ++j) lane[(j % 32) / 4] += int32_t(qa[j]) * w[j];
    for (int l = 0; l < kLanes; ++l) p[l] = p[l] + float(lane[l]) * sa[g];
  }
}

// Rows [i0, i0 + R) against column n: out[i] before the row scale. The weight rows follow each
// other up to `end`; the stream is prefetched ahead of the row being read.
template <int R>
void int8_column(const Records& x, int i0, const int8_t* w, int k, const uint8_t* end, float out[R]) {
  const int groups = (k + kUnitK - 1) / kUnitK;
  float p[R][kLanes] = {};
  int g = 0;
#if defined(__AVX2__)
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (; g < k / kUnitK; ++g) {
    prefetch_ahead(reinterpret_cast<const uint8_t*>(w + g * kUnitK), end, kUnitK);
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * kUnitK));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * kUnitK + 32));
    const __m256i u0 = _mm256_abs_epi8(w0), u1 = _mm256_abs_epi8(w1);
    for (int r = 0; r < R; ++r) {
      const int8_t* qa = x.q(i0 + r) + g * kUnitK;
      const __m256i a0 = _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qa)), w0);
      const __m256i a1 = _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qa + 32)), w1);
      const __m256i lanes = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(u0, a0), ones),
                                             _mm256_madd_epi16(_mm256_maddubs_epi16(u1, a1), ones));
      acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(x.scale(i0 + r)[g])));
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(p[r], acc[r]);
#endif
  for (int r = 0; r < R; ++r) {
    int8_lanes(x.q(i0 + r), x.scale(i0 + r), w, k, g, groups, p[r]);
    out[r] = reduce(p[r]);
  }
}

// ---- int4_rows ---------------------------------------------------------------------------------

// What int4_rows reads of each activation row besides its record: per group, the sum of qa as an
// int32 and sa[g / 4] / 16; at avx2 also qa rearranged per 64 k into [even k | odd k].
struct Int4Inputs {
  int groups;
  int64_t ld;  // elements per row of sums and factors, bytes per row of the rearranged codes
  int32_t* sums;
  float* factors;
  int8_t* split;  // avx2 only
  const int32_t* sum(int i) const { return sums + i * ld; }
  const float* factor(int i) const { return factors + i * ld; }
  const int8_t* even_odd(int i) const { return split + i * ld; }
};

Int4Inputs int4_inputs(const Records& x, int m, int kp) {
  Int4Inputs in;
  in.groups = kp / kInt4Group;
  in.ld = (int64_t(in.groups) + kInt4Block / kInt4Group - 1) / (kInt4Block / kInt4Group) * kInt4Block;
  const size_t row = size_t(in.ld) * (sizeof(int32_t) + sizeof(float) + 1);
  auto* base = static_cast<uint8_t*>(thread_scratch(ScratchSlot::row_tail, size_t(m) * row));
  in.sums = reinterpret_cast<int32_t*>(base);
  in.factors = reinterpret_cast<float*>(base + size_t(m) * size_t(in.ld) * sizeof(int32_t));
  in.split = reinterpret_cast<int8_t*>(base + size_t(m) * size_t(in.ld) * (sizeof(int32_t) + sizeof(float)));
  for (int i = 0; i < m; ++i) {
    for (int g = 0; g < in.groups; ++g) {
      in.sums[i * in.ld + g] = int32_t(x.sum(i)[g]);
      in.factors[i * in.ld + g] = x.scale(i)[g * kInt4Group / kUnitK] * 0.0625f;
    }
#if defined(__AVX2__)
    const int8_t* q = x.q(i);
    int8_t* split = in.split + i * in.ld;
    for (int j = 0; j < in.groups / (kInt4Block / kInt4Group) * kInt4Block; j += kUnitK)
      for (int t = 0; t < kUnitK / 2; ++t) {
        split[j + t] = q[j + 2 * t];
        split[j + kUnitK / 2 + t] = q[j + 2 * t + 1];
      }
#endif
  }
  return in;
}

// The row's stored parts: codes [Kp / 2], scale fp16 [Kp / 16], zero [Kp / 16].
struct Int4Row {
  const uint8_t* codes;
  const fp16_t* scale;
  const uint8_t* zero;
};

// Groups [g0, g1) of one activation row against one weight row, into the lanes p.
void int4_lanes(const int8_t* qa, const int32_t* sums, const float* factors, const Int4Row& w, int g0, int g1,
                float p[kLanes]) {
  for (int g = g0; g < g1; ++g) {
    int32_t dot = 0;
    for (int j = g * kInt4Group; j < (g + 1) * kInt4Group; ++j) dot += int32_t(qa[j]) * ((w.codes[j / 2] >> (4 * (j & 1))) & 15);
    const int32_t exact = 16 * dot - int32_t(w.zero[g]) * sums[g];
    p[g % kLanes] = p[g % kLanes] + (float(exact) * fp16_to_float(w.scale[g])) * factors[g];
  }
}

template <int R>
void int4_column(const Records& x, const Int4Inputs& in, int i0, const Int4Row& w, const uint8_t* end, float out[R]) {
  float p[R][kLanes] = {};
  int g = 0;
#if defined(__AVX2__)
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i nibble = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);  // vphaddd's lanes back to groups 0..7
  constexpr int kGroupsPerBlock = kInt4Block / kInt4Group;
  for (; g + kGroupsPerBlock <= in.groups; g += kGroupsPerBlock) {
    const uint8_t* codes = w.codes + g * kInt4Group / 2;
    prefetch_ahead(codes, end, 2 * 32);
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 32));
    const __m256i lo0 = _mm256_and_si256(v0, nibble), hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), nibble);
    const __m256i lo1 = _mm256_and_si256(v1, nibble), hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), nibble);
    const __m256i zero = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.zero + g)));
    const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scale + g)));
    for (int r = 0; r < R; ++r) {
      const int8_t* a = in.even_odd(i0 + r) + g * kInt4Group;
      auto half = [&](__m256i lo, __m256i hi, const int8_t* a64) {  // 4 groups: int32 lanes 2t, 2t + 1 = group t
        const __m256i even = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a64));
        const __m256i odd = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a64 + 32));
        return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, even), _mm256_maddubs_epi16(hi, odd)), ones);
      };
      const __m256i dots =
          _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(half(lo0, hi0, a), half(lo1, hi1, a + kUnitK)), order);
      const __m256i sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in.sum(i0 + r) + g));
      const __m256i exact = _mm256_sub_epi32(_mm256_slli_epi32(dots, 4), _mm256_mullo_epi32(zero, sums));
      const __m256 factors = _mm256_loadu_ps(in.factor(i0 + r) + g);
      acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(exact), scale), factors));
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(p[r], acc[r]);
#endif
  for (int r = 0; r < R; ++r) {
    int4_lanes(x.q(i0 + r), in.sum(i0 + r), in.factor(i0 + r), w, g, in.groups, p[r]);
    out[r] = reduce(p[r]);
  }
}

// Every column of [n0, n1) against every row, kRowTile rows at a time per block of columns.
template <class Column>
void each_output(int m, int n0, int n1, float* c, int64_t ldc, Column column) {
  for (int b0 = n0; b0 < n1; b0 += kColumnBlock) {
    const int b1 = std::min(b0 + kColumnBlock, n1);
    for (int i0 = 0; i0 < m; i0 += kRowTile)
      with_static_count<kRowTile>(m - i0, [&](auto rows) {
        constexpr int R = decltype(rows)::value;
        float out[R];
        for (int n = b0; n < b1; ++n) {
          column(rows, i0, n, out);
          for (int r = 0; r < R; ++r) c[(i0 + r) * ldc + (n - n0)] = out[r];
        }
      });
  }
}

}  // namespace

bool product_int8_rows(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                       int64_t ldc) {
  if (m <= 0 || n0 >= n1) return true;
  const Records x = quantize_rows(a, lda, m, w.cols);
  const auto* scale = static_cast<const float*>(w.scale);
  each_output(m, n0, n1, c, ldc, [&](auto rows, int i0, int n, float* out) {
    int8_column<decltype(rows)::value>(x, i0, reinterpret_cast<const int8_t*>(w.values + n * w.ld_values), w.cols,
                                       w.values + w.rows * w.ld_values, out);
    for (int r = 0; r < rows(); ++r) out[r] = out[r] * scale[n];
  });
  return true;
}

bool product_int4_rows(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                       int64_t ldc) {
  if (w.col0 != 0 || w.group != kInt4Group) return false;
  if (m <= 0 || n0 >= n1) return true;
  const Records x = quantize_rows(a, lda, m, w.cols);
  const int kp = (w.cols + kInt4Group - 1) / kInt4Group * kInt4Group;
  const Int4Inputs in = int4_inputs(x, m, kp);
  const auto* scale = static_cast<const fp16_t*>(w.scale);
  each_output(m, n0, n1, c, ldc, [&](auto rows, int i0, int n, float* out) {
    const Int4Row row{w.values + n * w.ld_values, scale + n * w.ld_scale, w.zero + n * w.ld_zero};
    int4_column<decltype(rows)::value>(x, in, i0, row, w.values + w.rows * w.ld_values, out);
  });
  return true;
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
