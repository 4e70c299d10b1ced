// fp8's few-rows products (DequantDotFn, kernels/dequant_bf16.hpp): the decode's C = A W^T straight
// from the FP8 bytes, fp32 sums. Per output row, per run of columns sharing a scale: the sum of
// a[i, k] * value(w[n, k]) over the run, then acc += that * scale; with a scale per row (channel)
// one run covers the row. Compiled for generic, avx2, avx512 and avx512_bf16.
//   AVX2: 16 columns per step (16 bytes decoded to fp32 exactly, decode.hpp; one FMA per 8 columns
//   and activation row), lane-wise partial sums per run (the run's last step reads zero-padded
//   bytes and masked activations), one horizontal sum per output row and activation row at the end.
//   AVX-512: 32 columns per step (32 bytes decoded to fp32 exactly, decode.hpp; one FMA per 16
//   columns and activation row), lane-wise partial sums per run, one horizontal sum per output row
//   and activation row at the end.
//   AVX512-BF16: 64 columns per step with vdpbf16ps (two products per lane and instruction) on
//   weights turned into bf16 by bit moves alone: an e4m3 byte's sign to bit 15 and its other 7 bits
//   to bits 4..10 is the bf16 of its value times 2^-120, exactly, for every normal code (exponent
//   fields 1..15 of bf16); the subnormal codes become bf16 denormals, which vdpbf16ps reads as zero:
//   weights below 2^-6 times their scale (under 1/28672 of the largest value of their block) count
//   as zero in this product. The even bytes of a 64-byte step are one vector of 32 such words, the
//   odd bytes another; the activations are laid out to match once per call (per 64 columns, the 32
//   even then the 32 odd ones) and scaled by 2^64 (exact below 2^64 in magnitude), so that every
//   product of a normal weight and an activation above 2^-64 stays a normal fp32; the row's sum is
//   scaled back by 2^56 at the end. Runs must start at multiples of 64 columns (scale blocks of a
//   multiple of 64, a slice starting at a block boundary); other matrices take the fp32 path.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "formats/fp8/decode.hpp"
#include "formats/fp8/fp8.hpp"
#include "kernels/dequant_dot_rows.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

#if defined(__AVX512F__)

constexpr int kStep = 32;
constexpr int kPrefetchBytes = 4096;  // rows follow each other: ask for the stream this far ahead

// part[i] += sum of x[i, c + j] * value(v[c + j]) / 256 over the 32 columns of `mask` (lo: 16 lanes
// of the first 16 columns, hi: of the next 16).
template <int R>
inline void step_sum(const uint8_t* v, const DotActivations& x, int c, __mmask32 mask, __m512 (&lo)[R],
                     __m512 (&hi)[R]) {
  __m512 w_lo, w_hi;
  fp8_over_256(v + c, mask, w_lo, w_hi);
  for (int i = 0; i < R; ++i) {
    const float* xi = x.x + i * x.ld + c;  // zero past cols: the padding of dot_activations
    lo[i] = _mm512_fmadd_ps(w_lo, _mm512_loadu_ps(xi), lo[i]);
    hi[i] = _mm512_fmadd_ps(w_hi, _mm512_loadu_ps(xi + 16), hi[i]);
  }
}

// acc[i] += scale * sum_{c in [c0, c1)} x[i, c] value(v[c]), for R activation rows.
template <int R>
inline void run_sum(const uint8_t* v, const DotActivations& x, int c0, int c1, float scale, __m512 (&acc)[R]) {
  __m512 lo[R], hi[R];
  for (int i = 0; i < R; ++i) lo[i] = hi[i] = _mm512_setzero_ps();
  int c = c0;
  for (; c + kStep <= c1; c += kStep) {
    if ((c - c0) % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(v + c) + kPrefetchBytes, _MM_HINT_T0);
    step_sum<R>(v, x, c, __mmask32(0xFFFFFFFFu), lo, hi);
  }
  if (c < c1) step_sum<R>(v, x, c, __mmask32((uint64_t(1) << (c1 - c)) - 1), lo, hi);
  const __m512 s = _mm512_set1_ps(scale * kFp8HalfUnit);
  for (int i = 0; i < R; ++i) acc[i] = _mm512_fmadd_ps(_mm512_add_ps(lo[i], hi[i]), s, acc[i]);
}

template <int R>
void block_row(const QuantMatrixView& w, int n, const DotActivations& x, float* out) {
  const uint8_t* v = row_values(w, n);
  const float* scales = block_scales(w, n);
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int c = 0; c < w.cols;) {
    const int block = (w.col0 + c) / w.group, end = std::min(w.cols, (block + 1) * w.group - w.col0);
    run_sum<R>(v, x, c, end, scales[block], acc);
    c = end;
  }
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

template <int R>
void channel_row(const QuantMatrixView& w, int n, const DotActivations& x, float* out) {
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  run_sum<R>(row_values(w, n), x, 0, w.cols, static_cast<const float*>(w.scale)[n], acc);
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

#if defined(__AVX512BF16__)

constexpr int kChunk = 64;
constexpr float kActivationScale = 18446744073709551616.0f;  // 2^64
constexpr float kRowScaleBack = 72057594037927936.0f;        // 2^56 = 2^120 / 2^64

// The activations of the bf16 path: per 64-column chunk the 32 even then the 32 odd columns, bf16 of
// x * 2^64, zero past cols; rows ld apart (a multiple of 64), in the thread's ScratchSlot::packed.
struct PairActivations {
  const bf16_t* x;
  int64_t ld;
};

inline __m512i scaled_bf16(__m512i words) {  // 32 bf16 * 2^64, exact (no denormal after scaling)
  const __m512 s = _mm512_set1_ps(kActivationScale);
  const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(words)), 16));
  const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(words, 1)), 16));
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, s), _mm512_mul_ps(lo, s));
}

PairActivations pair_activations(const bf16_t* a, int64_t lda, int m, int cols) {
  const int64_t ld = (int64_t(cols) + kChunk - 1) / kChunk * kChunk;
  auto* x = static_cast<bf16_t*>(thread_scratch(ScratchSlot::packed, sizeof(bf16_t) * size_t(m) * size_t(ld)));
  alignas(64) static constexpr uint16_t kEven[32] = {0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
                                                     32, 34, 36, 38, 40, 42, 44, 46, 48, 50, 52, 54, 56, 58, 60, 62};
  const __m512i even = _mm512_load_si512(kEven), odd = _mm512_add_epi16(even, _mm512_set1_epi16(1));
  for (int i = 0; i < m; ++i)
    for (int c = 0; c < ld; c += kChunk) {
      const int n = std::max(0, std::min(kChunk, cols - c));
      const __mmask64 mask = n == kChunk ? ~__mmask64(0) : (__mmask64(1) << n) - 1;
      const __m512i w0 = _mm512_maskz_loadu_epi16(__mmask32(mask), a + i * lda + c);
      const __m512i w1 = _mm512_maskz_loadu_epi16(__mmask32(mask >> 32), a + i * lda + c + 32);
      _mm512_storeu_si512(x + i * ld + c, scaled_bf16(_mm512_permutex2var_epi16(w0, even, w1)));
      _mm512_storeu_si512(x + i * ld + c + 32, scaled_bf16(_mm512_permutex2var_epi16(w0, odd, w1)));
    }
  return {x, ld};
}

// acc[i] += scale * sum over [c0, c1) (c0 a multiple of 64) of x[i, c] * value(v[c]) * 2^-56.
template <int R>
inline void pair_run_sum(const uint8_t* v, const PairActivations& x, int c0, int c1, float scale, __m512 (&acc)[R]) {
  const __m512i sign = _mm512_set1_epi16(int16_t(0x8000)), mag = _mm512_set1_epi16(0x07F0);
  __m512 even[R], odd[R];
  for (int i = 0; i < R; ++i) even[i] = odd[i] = _mm512_setzero_ps();
  auto step = [&](int c, __m512i b) {
    const __m512i we =
        _mm512_ternarylogic_epi32(sign, _mm512_slli_epi16(b, 8), _mm512_and_si512(_mm512_slli_epi16(b, 4), mag), 0xCA);
    const __m512i wo = _mm512_ternarylogic_epi32(sign, b, _mm512_and_si512(_mm512_srli_epi16(b, 4), mag), 0xCA);
    for (int i = 0; i < R; ++i) {
      const bf16_t* xi = x.x + i * x.ld + c;
      even[i] = _mm512_dpbf16_ps(even[i], (__m512bh)we, (__m512bh)_mm512_loadu_si512(xi));
      odd[i] = _mm512_dpbf16_ps(odd[i], (__m512bh)wo, (__m512bh)_mm512_loadu_si512(xi + 32));
    }
  };
  int c = c0;
  for (; c + kChunk <= c1; c += kChunk) {
    _mm_prefetch(reinterpret_cast<const char*>(v + c) + kPrefetchBytes, _MM_HINT_T0);
    step(c, _mm512_loadu_si512(v + c));
  }
  if (c < c1) step(c, _mm512_maskz_loadu_epi8((__mmask64(1) << (c1 - c)) - 1, v + c));
  const __m512 s = _mm512_set1_ps(scale);
  for (int i = 0; i < R; ++i) acc[i] = _mm512_fmadd_ps(_mm512_add_ps(even[i], odd[i]), s, acc[i]);
}

template <int R>
void pair_block_row(const QuantMatrixView& w, int n, const PairActivations& x, float* out) {
  const uint8_t* v = row_values(w, n);
  const float* scales = block_scales(w, n);
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  for (int c = 0, block = 0; c < w.cols; c += w.group, ++block)
    pair_run_sum<R>(v, x, c, std::min(w.cols, c + w.group), scales[block], acc);
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]) * kRowScaleBack;
}

template <int R>
void pair_channel_row(const QuantMatrixView& w, int n, const PairActivations& x, float* out) {
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  pair_run_sum<R>(row_values(w, n), x, 0, w.cols, static_cast<const float*>(w.scale)[n], acc);
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]) * kRowScaleBack;
}

// Whether the bf16 path takes w: its runs start at multiples of 64 columns.
inline bool pair_path(const QuantMatrixView& w, bool channel) {
  return channel || (w.col0 == 0 && w.group % kChunk == 0);
}

#endif

#elif defined(__AVX2__)

constexpr int kStep = 16;
constexpr int kPrefetchBytes = 4096;  // rows follow each other: ask for the stream this far ahead

// acc[i] += scale * sum_{c in [c0, c1)} x[i, c] value(v[c]), for R activation rows.
template <int R>
inline void run_sum(const uint8_t* v, const DotActivations& x, int c0, int c1, float scale, __m256 (&acc)[R]) {
  __m256 lo[R], hi[R];
  for (int i = 0; i < R; ++i) lo[i] = hi[i] = _mm256_setzero_ps();
  auto step = [&](int c, __m128i bytes, auto load) {
    __m256 w_lo, w_hi;
    fp8_over_256(bytes, w_lo, w_hi);
    for (int i = 0; i < R; ++i) {
      const float* xi = x.x + i * x.ld + c;
      lo[i] = _mm256_fmadd_ps(w_lo, load(xi, 0), lo[i]);
      hi[i] = _mm256_fmadd_ps(w_hi, load(xi, 8), hi[i]);
    }
  };
  int c = c0;
  for (; c + kStep <= c1; c += kStep) {
    if ((c - c0) % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(v + c) + kPrefetchBytes, _MM_HINT_T0);
    step(c, _mm_loadu_si128(reinterpret_cast<const __m128i*>(v + c)), [](const float* p, int o) { return _mm256_loadu_ps(p + o); });
  }
  if (c < c1) {  // activations of lanes < c1 - c only (those past the run may be another's, or past the row)
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int n = c1 - c;
    step(c, fp8_bytes(v + c, n), [&](const float* p, int o) {
      return _mm256_maskload_ps(p + o, _mm256_cmpgt_epi32(_mm256_set1_epi32(n - o), lane));
    });
  }
  const __m256 s = _mm256_set1_ps(scale * kFp8HalfUnit);
  for (int i = 0; i < R; ++i) acc[i] = _mm256_fmadd_ps(_mm256_add_ps(lo[i], hi[i]), s, acc[i]);
}

template <int R>
void block_row(const QuantMatrixView& w, int n, const DotActivations& x, float* out) {
  const uint8_t* v = row_values(w, n);
  const float* scales = block_scales(w, n);
  __m256 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_ps();
  for (int c = 0; c < w.cols;) {
    const int block = (w.col0 + c) / w.group, end = std::min(w.cols, (block + 1) * w.group - w.col0);
    run_sum<R>(v, x, c, end, scales[block], acc);
    c = end;
  }
  for (int i = 0; i < R; ++i) out[i] = sum_lanes(acc[i]);
}

template <int R>
void channel_row(const QuantMatrixView& w, int n, const DotActivations& x, float* out) {
  __m256 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_ps();
  run_sum<R>(row_values(w, n), x, 0, w.cols, static_cast<const float*>(w.scale)[n], acc);
  for (int i = 0; i < R; ++i) out[i] = sum_lanes(acc[i]);
}

#else

constexpr int kStep = 1;

// acc[i] += scale * sum_{c in [c0, c1)} x[i, c] value(v[c]), for R activation rows.
template <int R>
inline void run_sum(const uint8_t* v, const DotActivations& x, int c0, int c1, float scale, float (&acc)[R]) {
  const Fp8Table& table = fp8_table();
  for (int i = 0; i < R; ++i) {
    float part = 0.0f;
    for (int c = c0; c < c1; ++c) part += x.x[i * x.ld + c] * table.value[v[c]];
    acc[i] += part * scale;
  }
}

template <int R>
void block_row(const QuantMatrixView& w, int n, const DotActivations& x, float* out) {
  const uint8_t* v = row_values(w, n);
  const float* scales = block_scales(w, n);
  float acc[R] = {};
  for (int c = 0; c < w.cols;) {
    const int block = (w.col0 + c) / w.group, end = std::min(w.cols, (block + 1) * w.group - w.col0);
    run_sum<R>(v, x, c, end, scales[block], acc);
    c = end;
  }
  std::copy(acc, acc + R, out);
}

template <int R>
void channel_row(const QuantMatrixView& w, int n, const DotActivations& x, float* out) {
  float acc[R] = {};
  run_sum<R>(row_values(w, n), x, 0, w.cols, static_cast<const float*>(w.scale)[n], acc);
  std::copy(acc, acc + R, out);
}

#endif

}  // namespace

bool dot_fp8_block(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                   int64_t ldc) {
#if defined(__AVX512BF16__)
  if (pair_path(w, false)) {
    const PairActivations x = pair_activations(a, lda, m, w.cols);
    dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { pair_block_row<r()>(w, n, x, out); });
    return true;
  }
#endif
  const DotActivations x = dot_activations(a, lda, m, w.cols, kStep);
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { block_row<r()>(w, n, x, out); });
  return true;
}

bool dot_fp8_channel(const QuantMatrixView& w, int m, int n0, int n1, const bf16_t* a, int64_t lda, float* c,
                     int64_t ldc) {
#if defined(__AVX512BF16__)
  if (pair_path(w, true)) {
    const PairActivations x = pair_activations(a, lda, m, w.cols);
    dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { pair_channel_row<r()>(w, n, x, out); });
    return true;
  }
#endif
  const DotActivations x = dot_activations(a, lda, m, w.cols, kStep);
  dot_rows(m, n0, n1, c, ldc, [&](auto r, int n, float* out) { channel_row<r()>(w, n, x, out); });
  return true;
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
