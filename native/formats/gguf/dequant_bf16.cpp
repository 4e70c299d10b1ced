// The GGUF block types' bf16 dequantizers (gguf_blocks.hpp): each covered block decoded to fp32 as
// its layout defines, the requested columns rounded once to bf16. Compiled for the generic, avx2,
// avx512 and avx512_bf16 levels alike: the decoders (gguf_decode.hpp) are portable C++ that the
// compiler vectorizes, Q4_K, Q5_K and Q6_K's written in the level's vectors at avx2 and above; the
// rounding of whole spans is vectorized at avx2 (16 columns, kernels/bf16_avx2.hpp) and the AVX-512
// levels (32, kernels/bf16_avx512.hpp), the same rounding as the scalar one (to nearest even, NaN
// kept NaN), so every level writes the same bits.
#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() vectors, which -Wmaybe-uninitialized
// reports (falsely) wherever they are inlined; silenced for the header's own lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include "formats/gguf/gguf_decode.hpp"
#include "kernels/bf16.hpp"
#include "kernels/dequant_rows.hpp"
#if defined(__AVX512F__)
#include "kernels/bf16_avx512.hpp"
#elif defined(__AVX2__)
#include "kernels/bf16_avx2.hpp"
#endif

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

// Row r, columns [c0, c1) (stored columns col0 + c): whole blocks decoded, the covered part copied.
// count values of `values` as bf16 into out.
inline void round_to_bf16(const float* values, int count, bf16_t* out) {
  int i = 0;
#if defined(__AVX512F__)
  for (; i + 32 <= count; i += 32)
    _mm512_storeu_si512(out + i, float_to_bf16(_mm512_loadu_ps(values + i), _mm512_loadu_ps(values + i + 16)));
#elif defined(__AVX2__)
  for (; i + 16 <= count; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), float_to_bf16(_mm256_loadu_ps(values + i), _mm256_loadu_ps(values + i + 8)));
#endif
  for (; i < count; ++i) out[i] = float_to_bf16(values[i]);
}

template <class Block>
void gguf_row(const QuantMatrixView& w, int r, int c0, int c1, bf16_t* dst) {
  const uint8_t* row = w.values + r * w.ld_values;
  // whole blocks of one-weight types (F32, F16, BF16) 64 at a time
  constexpr int kSpan = Block::QK == 1 ? 64 : Block::QK;
  float block[kSpan];
  for (int j = w.col0 + c0, end = w.col0 + c1; j < end;) {
    const int b = j / Block::QK, first = j - b * Block::QK;
    const int count = std::min(kSpan - first, end - j), blocks = (first + count + Block::QK - 1) / Block::QK;
    for (int k = 0; k < blocks; ++k) gguf_decode::decode(Block{}, row + size_t(b + k) * Block::Bytes, block + k * Block::QK);
    round_to_bf16(block + first, count, dst + (j - w.col0 - c0));
    j += count;
  }
}

}  // namespace

#define KT_GGUF_DEQUANT(T, t)                                                                              \
  void dequant_gguf_##t(const QuantMatrixView& w, int r0, int r1, int c0, int c1, bf16_t* dst, int64_t ld) { \
    dequant_rows<gguf_row<gguf_blocks::T>>(w, r0, r1, c0, c1, dst, ld);                                    \
  }
KT_GGUF_TYPES(KT_GGUF_DEQUANT)
#undef KT_GGUF_DEQUANT

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
