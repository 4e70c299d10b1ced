// The int4 groups' bf16 dequantizers (formats int4_group16, int4_kgroup and, with bf16 scales,
// int4_packed; int4_groups.hpp):
//   D[r, c] = bf16((float(code[r, j]) - zero[r, g] * 0.0625f) * scale[r, g]),
//   j = col0 + c the stored column, g = j / group; zero is in sixteenths of a code, and
//   zero * 0.0625f = 8 for every group when the matrix has no zero points (symmetric).
// The fp32 value is exact (code - z is a multiple of 1/16 in [-16, 15], an fp16 scale has 11
// significant bits, a bf16 one 8: at most 20 bits) and is W[r, c] itself; it is rounded once, to
// nearest even. With finite fp16 scales it is 0 or at least 2^-28 in magnitude (never a denormal)
// and below 2^20 (never infinite), so every level rounds it the same way; bf16 scales round with the
// same bit arithmetic at every level (denormals included).
// Compiled four times: portable C++ for the generic level (no ISA flags) and, from this same
// source, AVX2 (+ FMA, F16C), AVX-512 (F/BW/VL/DQ flags) and AVX-512 + AVX512-BF16 (its
// vcvtne2ps2bf16 rounds the tables in one instruction). The AVX-512 sources convert fp16 with
// vcvtph2ps only: kernels/fp16.hpp's scalar fp16_to_float (static: every translation unit its own
// copy) is the generic and the AVX2 one's.
//   AVX2: group by group; a group's table of the 16 values bf16((k - z) s) as two 16-byte pshufb
//     tables (their low and their high bytes, kernels/bf16_avx2.hpp's rounding), then 32 stored
//     columns (16 bytes of codes) per step: the nibbles in column order, two lookups, the bytes
//     interleaved into words; a 16-column step where 16 remain, and the columns of the group before
//     its first and after its last multiple of 16 one by one, as the generic level computes them.
//     Groups of 16: a 32-column step covers two, its halves looking up the tables of one each.
//   AVX-512: a row is cut into segments of at most kSegment stored columns; a segment's group
//     scales s (vcvtph2ps) and zero points z (zero / 16, or 8) are first converted to fp32 arrays,
//     with -z s. Its codes are read in steps of 32 stored columns (16 bytes of codes), each of which
//     spreads its codes over 32 words in column order and looks them up with one permutation in a
//     table of 32 bf16 words: word k = bf16((k - z_a) s_a) and word 16 + k = bf16((k - z_b) s_b) for
//     groups a and b (one FMA k s - z s per half when all the segment's scales are positive, else a
//     subtraction and a product: exact either way, see int4_table). Groups of 16: a step covers two
//     groups, a and b = a + 1, its last 16 words look up the table's second half; groups of G >= 32:
//     a table of groups a, a + 1 serves the 2G / 32 steps of both (those of a + 1 look up its second
//     half), and a step outside such an aligned pair of groups (at the ends of a column range) builds
//     its own table (a = b). The formats' groups (16, 32, 64, 128) are compile-time constants there.
//     A step whose columns reach outside [c0, c1) loads its codes masked (nothing past the stored
//     groups is read) and goes through a small buffer. The table work per step is what groups of 16
//     cost over larger ones (measured, one core, a [1408, 2048] base in 512 KB blocks: groups of 16
//     about 1.2 times the time of groups of 32).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() vectors, which -Wmaybe-uninitialized
// reports (falsely) wherever they are inlined; silenced for the header's own lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include "formats/int4_groups/int4_groups.hpp"
#include "kernels/bf16.hpp"
#include "kernels/dequant_rows.hpp"
#include "kernels/fp16.hpp"
#if defined(__AVX512F__)
#include "kernels/bf16_avx512.hpp"
#elif defined(__AVX2__)
#include <immintrin.h>

#include "kernels/bf16_avx2.hpp"
#endif

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

constexpr float kSymmetricZero = 8.0f;  // the zero point of int4 groups stored without one
constexpr float kZeroUnit = 0.0625f;    // a stored zero point counts sixteenths of a code

// The scalar pieces of the generic row, which the AVX2 one also runs at the ends of its runs.
inline float group_zero(const uint8_t* zero, int g) { return zero ? float(zero[g]) * kZeroUnit : kSymmetricZero; }
// D of stored column j in a group of scale s and zero point z.
inline bf16_t int4_value(const uint8_t* codes, int j, float s, float z) {
  const int code = (j & 1) ? codes[j >> 1] >> 4 : codes[j >> 1] & 0xF;
  return float_to_bf16((float(code) - z) * s);
}

#if defined(__AVX512F__)

constexpr int kInt4Step = 32;   // stored columns per vector step (groups are 16 or multiples of it)
constexpr int kSegment = 4096;  // stored columns per segment of a row (GroupParams: 4096 / 16 groups)

// Bytes ahead of the current one whose cache lines a step asks for: the stored rows follow each
// other in memory, and one row at a time is too short a stream for the hardware prefetcher to
// keep enough misses in flight (measured: 6.5 GB/s without, on one core).
constexpr int kPrefetchBytes = 4096;

// The groups of one segment in fp32: scale s, zero point z (in codes) and offset -z s of group
// ga + i at [i]. A segment's steps touch at most kSegment / 16 groups.
struct GroupParams {
  alignas(64) float scale[kSegment / 16];
  alignas(64) float zero[kSegment / 16];
  alignas(64) float offset[kSegment / 16];
};

// Groups [ga, gb) of a row into p; those from gl on (past the stored groups) get scale 0, zero 0.
// Returns whether every stored one, [ga, gl), has a finite scale > 0 (see int4_table). Scales are
// fp16 or, with Bf16Scale, bf16 (both exact in fp32).
template <bool Bf16Scale>
bool load_group_params(const uint16_t* scale, const uint8_t* zero, int ga, int gl, int gb, GroupParams& p) {
  __mmask16 positive = 0xFFFF;
  for (int i = 0; ga + i < gb; i += 16) {
    const int n = std::min(std::max(gl - ga - i, 0), 16);
    const __mmask16 m = __mmask16((1u << n) - 1u);
    const __m256i bits = _mm256_maskz_loadu_epi16(m, scale + ga + i);
    const __m512 s = Bf16Scale ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16))
                               : _mm512_cvtph_ps(bits);
    const __mmask16 finite_positive = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_GT_OQ) &
                                      _mm512_cmp_ps_mask(s, _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
    positive &= finite_positive | __mmask16(~m);
    __m512 z = _mm512_set1_ps(kSymmetricZero);
    if (zero) {
      const __m512 sixteenths = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, zero + ga + i)));
      z = _mm512_mul_ps(sixteenths, _mm512_set1_ps(kZeroUnit));  // exact
    }
    _mm512_store_ps(p.scale + i, s);
    _mm512_store_ps(p.zero + i, z);
    _mm512_store_ps(p.offset + i, _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), s));  // exact
  }
  return positive == 0xFFFF;
}

// The lookup table of groups a (words 0..15) and b (words 16..31), indices into p: word k =
// bf16((k - z) s), k < 16. The value is exact in fp32 (dequant_bf16.hpp), and so is every step
// towards it: k - z and its product by s (not Fused), or z s and the FMA k s - z s (Fused: one
// operation fewer on the ports the steps saturate). Both give the same number, and the same zero
// when s > 0 (+0, the sign of (k - z) s with k = z); with s <= 0 the signs of zeros differ, so
// Fused is for segments whose scales are all positive, and finite: with s = Inf, k s - z s is
// Inf - Inf = NaN where (k - z) s is +-Inf.
// With Bf16Scale the products may be fp32 denormals (a bf16 scale can be tiny), which the AVX512-BF16
// conversion would flush to zero: such tables round with kernels/bf16_avx512.hpp at every level.
template <bool Fused, bool Bf16Scale>
inline __m512i int4_table(const GroupParams& p, int a, int b) {
  const __m512 codes = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  __m512 lo, hi;
  if (Fused) {
    lo = _mm512_fmadd_ps(codes, _mm512_set1_ps(p.scale[a]), _mm512_set1_ps(p.offset[a]));
    hi = _mm512_fmadd_ps(codes, _mm512_set1_ps(p.scale[b]), _mm512_set1_ps(p.offset[b]));
  } else {
    lo = _mm512_mul_ps(_mm512_sub_ps(codes, _mm512_set1_ps(p.zero[a])), _mm512_set1_ps(p.scale[a]));
    hi = _mm512_mul_ps(_mm512_sub_ps(codes, _mm512_set1_ps(p.zero[b])), _mm512_set1_ps(p.scale[b]));
  }
#if defined(__AVX512BF16__)
  if constexpr (!Bf16Scale) return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // round to nearest even
#endif
  return float_to_bf16(lo, hi);
}

// Which half of the table a step's columns look up: all the first, all the second, or the first
// for its first 16 columns and the second for its last 16 (groups of 16).
enum class Half { first, second, split };

// 32 stored columns (their 16 bytes of codes) -> out[32] through a table. The codes become 32 words
// in column order: lane i = byte i | byte i << 12, masked to 0x000F000F, holds the even column's
// code in its low word, the odd one's in its high word; + 16 selects the table's second half.
template <Half H>
inline void int4_step(__m128i codes, __m512i table, bf16_t* out) {
  const __m512i bytes = _mm512_cvtepu8_epi32(codes);
  __m512i index = _mm512_ternarylogic_epi32(bytes, _mm512_slli_epi32(bytes, 12), _mm512_set1_epi32(0x000F000F),
                                            0xA8);  // (a | b) & c
  if (H == Half::second) index = _mm512_or_si512(index, _mm512_set1_epi16(16));
  if (H == Half::split)
    index = _mm512_or_si512(index, _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(16), 1));
  _mm512_storeu_si512(out, _mm512_permutexvar_epi16(index, table));
}

template <Half H>
inline void int4_step(const uint8_t* codes, __m512i table, bf16_t* out) {
  _mm_prefetch(reinterpret_cast<const char*>(codes) + kPrefetchBytes, _MM_HINT_T0);
  int4_step<H>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)), table, out);
}

// Stored columns [j0, j1) of one row, inside one aligned segment of kSegment, to dst[0, j1 - j0),
// the group parameters loaded (p, from group ga on). G = Group, or w.group when Group is 0.
template <int Group, bool Fused, bool Bf16Scale>
void int4_steps(const QuantMatrixView& w, const uint8_t* codes, const GroupParams& p, int ga, int j0, int j1,
                bf16_t* dst) {
  const int G = Group ? Group : w.group;
  const int shift = __builtin_ctz(unsigned(G));  // groups are powers of two (16, 32, 64, 128)
  // A step's own table: the group of its first 16 columns and that of its last 16.
  auto table = [&](int j) { return int4_table<Fused, Bf16Scale>(p, (j >> shift) - ga, ((j + kInt4Step / 2) >> shift) - ga); };
  // A step that covers only part of [j0, j1): the first and the last one.
  auto partial = [&](int j) {
    const int lo = std::max(j, j0), hi = std::min(j + kInt4Step, j1);
    const __mmask16 bytes = __mmask16((1u << ((hi - j + 1) / 2)) - 1u);
    alignas(64) bf16_t part[kInt4Step];
    int4_step<Half::split>(_mm_maskz_loadu_epi8(bytes, codes + j / 2), table(j), part);
    std::memcpy(dst + (lo - j0), part + (lo - j), sizeof(bf16_t) * (hi - lo));
  };
  int j = j0 / kInt4Step * kInt4Step;
  if (j < j0) {
    partial(j);
    j += kInt4Step;
  }
  const int body_end = j1 / kInt4Step * kInt4Step;
  if (G == kInt4Step / 2) {  // a table per step, of the step's two groups
    const uint8_t* c = codes + j / 2;
    bf16_t* out = dst + (j - j0);
    for (int a = (j >> shift) - ga; j < body_end; j += kInt4Step, c += kInt4Step / 2, out += kInt4Step, a += 2)
      int4_step<Half::split>(c, int4_table<Fused, Bf16Scale>(p, a, a + 1), out);
  } else {
    // Whole steps up to a pair of groups, then pair by pair: one table serves 2G / 32 steps.
    for (; j < body_end && (j & (2 * G - 1)) != 0; j += kInt4Step)
      int4_step<Half::split>(codes + j / 2, table(j), dst + (j - j0));
    for (; j + 2 * G <= body_end; j += 2 * G) {
      const int a = (j >> shift) - ga;
      const __m512i t = int4_table<Fused, Bf16Scale>(p, a, a + 1);
      const uint8_t* c = codes + j / 2;
      bf16_t* out = dst + (j - j0);
      for (int k = 0; k < G; k += kInt4Step, c += kInt4Step / 2, out += kInt4Step) int4_step<Half::first>(c, t, out);
      for (int k = 0; k < G; k += kInt4Step, c += kInt4Step / 2, out += kInt4Step) int4_step<Half::second>(c, t, out);
    }
    for (; j < body_end; j += kInt4Step)  // the steps after the last pair
      int4_step<Half::split>(codes + j / 2, table(j), dst + (j - j0));
  }
  if (j < j1) partial(j);
}

// Stored columns [j0, j1) of one row, inside one aligned segment of kSegment, to dst[0, j1 - j0).
template <int Group, bool Bf16Scale>
void int4_segment(const QuantMatrixView& w, const uint8_t* codes, const uint16_t* scale, const uint8_t* zero, int j0,
                  int j1, bf16_t* dst) {
  const int G = Group ? Group : w.group;
  const int shift = __builtin_ctz(unsigned(G));
  const int first = j0 / kInt4Step * kInt4Step, last = (j1 + kInt4Step - 1) / kInt4Step * kInt4Step;
  const int ga = first >> shift;
  GroupParams p;
  if (load_group_params<Bf16Scale>(scale, zero, ga, (j1 + G - 1) >> shift, ((last - 1) >> shift) + 1, p))
    int4_steps<Group, true, Bf16Scale>(w, codes, p, ga, j0, j1, dst);
  else
    int4_steps<Group, false, Bf16Scale>(w, codes, p, ga, j0, j1, dst);
}

// Asks for the cache lines of bytes [begin, end).
inline void prefetch_range(const void* begin, const void* end) {
  for (uintptr_t line = reinterpret_cast<uintptr_t>(begin) & ~uintptr_t(63); line < reinterpret_cast<uintptr_t>(end);
       line += 64)
    _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
}

// Rows ahead whose scales and zero points a row asks for: the segments read them before their
// codes, in short streams (groups of 16: 1/4 and 1/8 of the codes' bytes) that the hardware
// prefetcher does not keep ahead of (measured: without, groups of 16 with zero points took 1.25
// times as long when the output goes to memory).
constexpr int kParamRowsAhead = 4;

template <bool Bf16Scale>
void int4_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const uint8_t* codes = w.values + r * w.ld_values;
  const uint16_t* scale = static_cast<const uint16_t*>(w.scale) + r * w.ld_scale;
  const uint8_t* zero = w.zero ? w.zero + r * w.ld_zero : nullptr;
  if (r + kParamRowsAhead < w.rows) {
    const int64_t g0 = (w.col0 + c0) / w.group, g1 = (w.col0 + c1 - 1) / w.group + 1;
    const uint16_t* s = scale + kParamRowsAhead * w.ld_scale;
    prefetch_range(s + g0, s + g1);
    if (zero) prefetch_range(zero + kParamRowsAhead * w.ld_zero + g0, zero + kParamRowsAhead * w.ld_zero + g1);
  }
  for (int j = w.col0 + c0, j1 = w.col0 + c1; j < j1;) {
    const int end = std::min(j1, (j / kSegment + 1) * kSegment);
    switch (w.group) {  // the formats' groups with the group a constant (the loops over a pair unrolled)
      case 16: int4_segment<16, Bf16Scale>(w, codes, scale, zero, j, end, dst); break;
      case 32: int4_segment<32, Bf16Scale>(w, codes, scale, zero, j, end, dst); break;
      case 64: int4_segment<64, Bf16Scale>(w, codes, scale, zero, j, end, dst); break;
      case 128: int4_segment<128, Bf16Scale>(w, codes, scale, zero, j, end, dst); break;
      default: int4_segment<0, Bf16Scale>(w, codes, scale, zero, j, end, dst);
    }
    dst += end - j;
    j = end;
  }
}

#elif defined(__AVX2__)

constexpr int kPrefetchBytes = 4096;  // rows follow each other: ask for the stream this far ahead

// The lookup tables of one group: bytes k (k < 16) of lo and hi (the same in both 128-bit halves)
// are the low and the high byte of bf16((k - z) s), each value the product of two operations as in
// int4_value (the same bits; no value is a NaN when s is finite, and the rounding then skips them).
struct Int4Table {
  __m256i lo, hi;
};

// The bytes of one group's table: [its 16 low bytes | its 16 high bytes].
inline __m256i int4_table_bytes(float s, float z) {
  const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
  const __m256 k0 = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), k1 = _mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15);
  const __m256 v0 = _mm256_mul_ps(_mm256_sub_ps(k0, vz), vs), v1 = _mm256_mul_ps(_mm256_sub_ps(k1, vz), vs);
  const __m256i words = std::isfinite(s) ? non_nan_float_to_bf16(v0, v1) : float_to_bf16(v0, v1);
  // per half: its 8 low bytes then its 8 high bytes; then the quarters to [low 0..15 | high 0..15]
  const __m256i split = _mm256_shuffle_epi8(words, _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                                                    0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
  return _mm256_permute4x64_epi64(split, 0xD8);
}

inline Int4Table int4_table(float s, float z) {
  const __m256i bytes = int4_table_bytes(s, z);
  return {_mm256_permute2x128_si256(bytes, bytes, 0x00), _mm256_permute2x128_si256(bytes, bytes, 0x11)};
}

// The tables of two groups of 16, a in the lower halves (a 32-column step's first 16 columns), b in
// the upper ones.
inline Int4Table int4_table_pair(float sa, float za, float sb, float zb) {
  const __m256i a = int4_table_bytes(sa, za), b = int4_table_bytes(sb, zb);
  return {_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31)};
}

// The codes of 8 bytes (16 columns) as 16 byte indices in column order: low nibble first.
inline __m128i int4_indices(__m128i bytes) {
  const __m128i nibble = _mm_set1_epi8(0x0F);
  return _mm_unpacklo_epi8(_mm_and_si128(bytes, nibble), _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble));
}

// 32 stored columns (16 bytes of codes) of one group -> out[32].
inline void int4_step32(const uint8_t* codes, const Int4Table& t, bf16_t* out) {
  _mm_prefetch(reinterpret_cast<const char*>(codes) + kPrefetchBytes, _MM_HINT_T0);
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
  const __m256i idx = _mm256_setr_m128i(int4_indices(b), int4_indices(_mm_srli_si128(b, 8)));  // columns 0..15 | 16..31
  const __m256i lo = _mm256_shuffle_epi8(t.lo, idx), hi = _mm256_shuffle_epi8(t.hi, idx);
  const __m256i w0 = _mm256_unpacklo_epi8(lo, hi), w1 = _mm256_unpackhi_epi8(lo, hi);  // [0..7 | 16..23], [8..15 | 24..31]
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(w0, w1, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), _mm256_permute2x128_si256(w0, w1, 0x31));
}

// 16 stored columns (8 bytes of codes) of one group -> out[16].
inline void int4_step16(const uint8_t* codes, const Int4Table& t, bf16_t* out) {
  const __m128i idx = int4_indices(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes)));
  const __m128i lo = _mm_shuffle_epi8(_mm256_castsi256_si128(t.lo), idx);
  const __m128i hi = _mm_shuffle_epi8(_mm256_castsi256_si128(t.hi), idx);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_setr_m128i(_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)));
}

// Stored columns [j, end) of one group (scale s, zero point z) to out[0, end - j): the columns before
// the first multiple of 16 and after the last one one by one, the others through the group's table.
inline void int4_group_run(const uint8_t* codes, int j, int end, float s, float z, bf16_t* out) {
  const int body = std::min(end, (j + 15) / 16 * 16), body_end = std::max(body, end / 16 * 16);
  for (; j < body; ++j) *out++ = int4_value(codes, j, s, z);
  if (j < body_end) {
    const Int4Table t = int4_table(s, z);
    for (; j + 32 <= body_end; j += 32, out += 32) int4_step32(codes + j / 2, t, out);
    if (j < body_end) {
      int4_step16(codes + j / 2, t, out);
      j += 16;
      out += 16;
    }
  }
  for (; j < end; ++j) *out++ = int4_value(codes, j, s, z);
}

template <bool Bf16Scale>
void int4_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const uint8_t* codes = w.values + r * w.ld_values;
  const uint16_t* scale = static_cast<const uint16_t*>(w.scale) + r * w.ld_scale;
  const uint8_t* zero = w.zero ? w.zero + r * w.ld_zero : nullptr;
  auto s = [&](int g) { return Bf16Scale ? bf16_to_float(scale[g]) : _cvtsh_ss(scale[g]); };  // F16C: the same bits
  for (int j = w.col0 + c0, j1 = w.col0 + c1; j < j1;) {  // group by group
    const int g = j / w.group, end = std::min(j1, (g + 1) * w.group);
    bf16_t* out = dst + (j - w.col0 - c0);
    if (w.group == 16 && j % 32 == 0 && j + 32 <= j1) {  // two whole groups of 16: one step, one pair of tables
      int4_step32(codes + j / 2, int4_table_pair(s(g), group_zero(zero, g), s(g + 1), group_zero(zero, g + 1)), out);
      j += 32;
      continue;
    }
    int4_group_run(codes, j, end, s(g), group_zero(zero, g), out);
    j = end;
  }
}

#else

template <bool Bf16Scale>
void int4_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const uint8_t* codes = w.values + r * w.ld_values;
  const uint16_t* scale = static_cast<const uint16_t*>(w.scale) + r * w.ld_scale;
  const uint8_t* zero = w.zero ? w.zero + r * w.ld_zero : nullptr;
  int group = -1;
  float s = 0.0f, z = 0.0f;
  for (int c = c0; c < c1; ++c) {
    const int j = w.col0 + c, g = j / w.group;
    if (g != group) {
      group = g;
      s = Bf16Scale ? bf16_to_float(scale[g]) : fp16_to_float(scale[g]);
      z = group_zero(zero, g);
    }
    dst[c - c0] = int4_value(codes, j, s, z);
  }
}

#endif

}  // namespace

void dequant_int4_groups(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld) {
  dequant_rows<int4_row<false>>(w, r0, r1, c0, c1, dst, ld);
}

void dequant_int4_groups_bf16(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld) {
  dequant_rows<int4_row<true>>(w, r0, r1, c0, c1, dst, ld);
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
