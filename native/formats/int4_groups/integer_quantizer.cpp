// The INT4 group quantizer (int4_groups.hpp, kt_moe/quant/int4_groups.py), compiled for generic
// (plain C++), avx2 and avx512, all with -ffp-contract=off: the steps are the fp32 operations the module
// docstring lists, in its order, each rounded once, and a group's sums run over its G values in k
// order, so every level and the torch twin give the same bytes. kLanes groups are quantized side by
// side (arrays [G][kLanes], loops over the lanes that the compiler turns into vector instructions);
// the avx2 and avx512 builds also read bf16 rows into them with an 8 x 8 transpose in intrinsics (the
// same floats).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <type_traits>

#include "formats/int4_groups/int4_groups.hpp"
#include "kernels/bf16.hpp"
#include "kernels/fp16.hpp"
#include "kernels/level_namespace.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

constexpr int kLanes = 32;  // groups side by side: several vectors per step hide the sums' latency
constexpr int kMaxGroup = 128;
constexpr float kCodeMax = 15.0f;
constexpr float kSymmetricZero = 8.0f;
constexpr float kZeroSteps = 16.0f;
constexpr float kZeroMax = 255.0f / 16.0f;
constexpr float kFp16Max = 65504.0f;
constexpr double kClipRatios[] = {1.0, 0.92, 0.84};  // divided by 15 in double, then rounded to fp32
constexpr int kFitRounds = 2;

using Lanes = float[kLanes];

// Round half to even for |v| < 2^22 (the codes: larger values are clamped to 0 or 15 either way).
inline float round_even(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

// round_even(v) clamped to [0, 15]. Written as the compare-selects that vmaxps / vminps are (the
// std::max / std::min forms compile to compares and blends); the same values, since round_even
// never returns NaN or -0 (v + kMagic is +0 at worst).
inline float clamp_code(float v) {
  const float r = round_even(v);
  const float low = r > 0.0f ? r : 0.0f;
  return low < kCodeMax ? low : kCodeMax;
}

inline uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

inline float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// The float16 nearest to v (0 <= v <= 65504; ties to even), as an fp32 value: float_to_fp16 then
// fp16_to_float without branches, so that the compiler can run it on vectors of lanes. Below 2^-14
// a half is a multiple of 2^-24, which adding and removing 0.75 (whose ulp is 2^-24) rounds to.
inline float nearest_half(float v) {
  const uint32_t b = bits_of(v);
  const float normal = float_of((b + 0xfffu + ((b >> 13) & 1u)) & 0xffffe000u);
  const float subnormal = (v + 0.75f) - 0.75f;
  return b < 0x38800000u ? subnormal : normal;
}

// One chunk of kLanes groups: x [G][kLanes] in, the chosen codes [G][kLanes] (0..15), scale bits
// and zero (sixteenths) out.
struct Chunk {
  int G;
  bool zero_point;
  float x[kMaxGroup][kLanes];
  float c[kMaxGroup][kLanes];
  float best_codes[kMaxGroup][kLanes];
  uint8_t code_bytes[kMaxGroup][kLanes];  // the chosen codes
  fp16_t scale[kLanes];
  uint8_t zero[kLanes];

  // c = clamp(round(x / divisor + zero), 0, 15) for the chunk; sum = the sum over the group of
  // f(i, lane, code), in k order (from +0: a sum's only possible change is the sign of a zero sum,
  // which no comparison or later step can tell).
  template <class F>
  void codes(const Lanes& divisor, const Lanes& zero, Lanes& sum, F f) {
    for (int j = 0; j < kLanes; ++j) sum[j] = 0.0f;
    for (int i = 0; i < G; ++i)
      for (int j = 0; j < kLanes; ++j) {
        const float code = clamp_code(x[i][j] / divisor[j] + zero[j]);
        c[i][j] = code;
        sum[j] = sum[j] + f(i, j, code);
      }
  }

  // One least-squares round: the codes of (scale, zero), then the scale and zero point fitting x.
  void fit(const Lanes& mean_x, Lanes& scale, Lanes& zero) {
    Lanes mean_c, var = {}, cov = {};
    codes(scale, zero, mean_c, [](int, int, float code) { return code; });
    for (int j = 0; j < kLanes; ++j) mean_c[j] = zero_point ? mean_c[j] / float(G) : kSymmetricZero;
    for (int i = 0; i < G; ++i)
      for (int j = 0; j < kLanes; ++j) {
        const float d = c[i][j] - mean_c[j];
        var[j] = var[j] + d * d;
        cov[j] = cov[j] + d * x[i][j];
      }
    for (int j = 0; j < kLanes; ++j) {  // both sides of each choice computed: no branches, vectors
      const float fitted = cov[j] / var[j];
      const bool ok = (var[j] > 0.0f) & (fitted > 0.0f);
      scale[j] = ok ? fitted : scale[j];
      const float centred = mean_c[j] - mean_x[j] / scale[j];
      if (zero_point) zero[j] = std::min(std::max(ok ? centred : zero[j], 0.0f), kZeroMax);
    }
  }

  void quantize() {
    Lanes lo, hi, span, mean_x = {}, best_error, best_scale = {}, best_zero = {};
    bool live[kLanes];
    for (int j = 0; j < kLanes; ++j) lo[j] = hi[j] = x[0][j];
    for (int i = 1; i < G; ++i)
      for (int j = 0; j < kLanes; ++j) lo[j] = std::min(lo[j], x[i][j]), hi[j] = std::max(hi[j], x[i][j]);
    for (int j = 0; j < kLanes; ++j) {
      if (zero_point) {
        lo[j] = std::min(lo[j], 0.0f), hi[j] = std::max(hi[j], 0.0f);
        span[j] = hi[j] - lo[j];
      } else {
        span[j] = 2.0f * std::max(-lo[j], hi[j]);
      }
      live[j] = span[j] > 0.0f;
      if (!live[j]) span[j] = 1.0f;
      best_error[j] = __builtin_inff();
    }
    if (zero_point) {
      for (int i = 0; i < G; ++i)
        for (int j = 0; j < kLanes; ++j) mean_x[j] = mean_x[j] + x[i][j];
      for (int j = 0; j < kLanes; ++j) mean_x[j] = mean_x[j] / float(G);
    }
    for (double ratio : kClipRatios) {
      const float step = float(ratio / double(kCodeMax));
      Lanes scale, zero, s, z, divisor, error;
      for (int j = 0; j < kLanes; ++j) {
        scale[j] = span[j] * step;
        zero[j] = zero_point ? 7.5f - (hi[j] + lo[j]) / (2.0f * scale[j]) : kSymmetricZero;
      }
      for (int round = 0; round < kFitRounds; ++round) fit(mean_x, scale, zero);
      float widest = 0.0f;
      for (int j = 0; j < kLanes; ++j) widest = std::max(widest, scale[j]);
      if (widest > kFp16Max)
        throw std::invalid_argument("w has a group of weights too wide for a float16 scale (values beyond about "
                                    "5e+05); the INT4 schemes store float16 scales");
      for (int j = 0; j < kLanes; ++j) {
        s[j] = nearest_half(scale[j]);
        z[j] = zero_point ? round_even(zero[j] * kZeroSteps) / kZeroSteps : kSymmetricZero;
        divisor[j] = s[j] > 0.0f ? s[j] : 1.0f;
      }
      codes(divisor, z, error, [&](int i, int j, float code) {
        const float e = (code - z[j]) * s[j] - x[i][j];
        return e * e;
      });
      int32_t better[kLanes];
      for (int j = 0; j < kLanes; ++j) {
        better[j] = error[j] < best_error[j];
        best_error[j] = better[j] ? error[j] : best_error[j];
        best_scale[j] = better[j] ? s[j] : best_scale[j];
        best_zero[j] = better[j] ? z[j] : best_zero[j];
      }
      for (int i = 0; i < G; ++i)
        for (int j = 0; j < kLanes; ++j) best_codes[i][j] = better[j] ? c[i][j] : best_codes[i][j];
    }
    int32_t keep[kLanes];
    for (int j = 0; j < kLanes; ++j) {
      keep[j] = live[j] && best_scale[j] != 0.0f;
      scale[j] = keep[j] ? float_to_fp16(best_scale[j]) : 0;
      zero[j] = keep[j] && zero_point ? uint8_t(best_zero[j] * kZeroSteps) : 0;
    }
    for (int i = 0; i < G; ++i)
      for (int j = 0; j < kLanes; ++j) code_bytes[i][j] = keep[j] ? uint8_t(int32_t(best_codes[i][j])) : 0;
  }
};

inline float to_fp32(float v, std::integral_constant<int, Int4QuantizeArgs::kFloat32>) { return v; }
inline float to_fp32(uint16_t v, std::integral_constant<int, Int4QuantizeArgs::kBfloat16>) { return bf16_to_float(v); }
inline float to_fp32(uint16_t v, std::integral_constant<int, Int4QuantizeArgs::kFloat16>) { return fp16_to_float(v); }

// Group `group` of row `r` into lane j of the chunk: fp32, zero past K; false when a value is NaN or
// infinite. T: the element type of input dtype D.
template <int D, class T>
bool load_group(const Int4QuantizeArgs& a, const T* w, int64_t r, int group, Chunk& chunk, int j) {
  const T* row = w + r * a.ldw;
  const int k0 = group * a.group;
  bool finite = true;
  for (int i = 0; i < a.group; ++i) {
    const float v = k0 + i < a.k ? to_fp32(row[k0 + i], std::integral_constant<int, D>{}) : 0.0f;
    finite &= v - v == 0.0f;
    chunk.x[i][j] = v;
  }
  return finite;
}

void store_group(const Int4QuantizeArgs& a, int64_t r, int group, const Chunk& chunk, int j) {
  uint8_t* codes = a.codes + r * a.ldc + group * a.group / 2;
  for (int i = 0; i < a.group; i += 2)
    codes[i / 2] = uint8_t(chunk.code_bytes[i][j] | (chunk.code_bytes[i + 1][j] << 4));
  a.scale[r * a.lds + group] = chunk.scale[j];
  if (a.zero_point) a.zero[r * a.ldz + group] = chunk.zero[j];
}

#if defined(__AVX2__)
// Rows i of r[] become columns: r[i] lane j <- r[j] lane i (an 8 x 8 block of floats).
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
  }
  for (int k = 0; k < 8; k += 4) {
    u[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
    u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);
    u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
    u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
    r[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
  }
}

// load_group for 8 lanes j0..j0+7 holding 8 consecutive whole groups of one bf16 row, starting at
// src (G a multiple of 8): the same floats, transposed 8 x 8 at a time instead of one by one.
inline bool load_8_bf16_groups(const bf16_t* src, int G, Chunk& chunk, int j0) {
  __m256 finite = _mm256_setzero_ps();  // v - v: 0 for finite values, NaN otherwise
  for (int i0 = 0; i0 < G; i0 += 8) {
    __m256 r[8];
    for (int j = 0; j < 8; ++j) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j * G + i0));
      r[j] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      finite = _mm256_add_ps(finite, _mm256_sub_ps(r[j], r[j]));
    }
    transpose8(r);
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(&chunk.x[i0 + i][j0], r[i]);
  }
  return _mm256_movemask_ps(_mm256_cmp_ps(finite, finite, _CMP_UNORD_Q)) == 0;
}
#endif

// The (row, group) of each lane of a chunk: groups are taken row by row, kLanes at a time.
struct LanePositions {
  int64_t row[kLanes];
  int group[kLanes];

  // The `lanes` groups from (r, group) on, in rows of g groups; advances (r, group) past them.
  void fill(int64_t& r, int& group, int g, int lanes) {
    for (int j = 0; j < lanes; ++j) {
      row[j] = r, this->group[j] = group;
      if (++group == g) group = 0, ++r;
    }
  }
};

template <int D, class T>
void quantize_rows(const Int4QuantizeArgs& a, int r0, int r1) {
  const int g = (a.k + a.group - 1) / a.group;
  const T* w = static_cast<const T*>(a.w) + int64_t(r0) * a.ldw;
  Int4QuantizeArgs at = a;  // outputs from row r0
  at.codes += int64_t(r0) * a.ldc, at.scale += int64_t(r0) * a.lds;
  if (a.zero_point) at.zero += int64_t(r0) * a.ldz;
  auto chunk = std::make_unique<Chunk>();
  chunk->G = a.group, chunk->zero_point = a.zero_point;
  const int64_t total = int64_t(r1 - r0) * g;
  LanePositions at_lane;
  int64_t r = 0;
  int group = 0;
  for (int64_t q0 = 0; q0 < total; q0 += kLanes) {
    const int lanes = int(std::min<int64_t>(kLanes, total - q0));
    at_lane.fill(r, group, g, lanes);
    bool finite = true;
    for (int j = 0; j < kLanes; ++j) {
#if defined(__AVX2__)
      if constexpr (D == Int4QuantizeArgs::kBfloat16) {
        if (j % 8 == 0 && j + 8 <= lanes && a.group % 8 == 0 && at_lane.row[j + 7] == at_lane.row[j] &&
            (at_lane.group[j + 7] + 1) * a.group <= a.k) {
          finite &= load_8_bf16_groups(w + at_lane.row[j] * a.ldw + at_lane.group[j] * a.group, a.group, *chunk, j);
          j += 7;
          continue;
        }
      }
#endif
      if (j < lanes) {
        finite &= load_group<D>(at, w, at_lane.row[j], at_lane.group[j], *chunk, j);
      } else {
        for (int i = 0; i < a.group; ++i) chunk->x[i][j] = 0.0f;
      }
    }
    if (!finite)
      throw std::invalid_argument("w contains NaN or infinite values; only finite values can be loaded or quantized");
    chunk->quantize();
    for (int j = 0; j < lanes; ++j) store_group(at, at_lane.row[j], at_lane.group[j], *chunk, j);
  }
}

}  // namespace

void quantize_int4_rows(const Int4QuantizeArgs& a, int r0, int r1) {
  if (a.group < 2 || a.group > kMaxGroup || a.group % 2)
    throw std::invalid_argument("quantize_int4_rows: group size must be even and in [2, 128]");
  switch (a.dtype) {
    case Int4QuantizeArgs::kFloat32: return quantize_rows<Int4QuantizeArgs::kFloat32, float>(a, r0, r1);
    case Int4QuantizeArgs::kBfloat16: return quantize_rows<Int4QuantizeArgs::kBfloat16, bf16_t>(a, r0, r1);
    case Int4QuantizeArgs::kFloat16: return quantize_rows<Int4QuantizeArgs::kFloat16, fp16_t>(a, r0, r1);
  }
  throw std::invalid_argument("quantize_int4_rows: unknown dtype");
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
