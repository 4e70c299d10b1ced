// int4_kgroup's packed layout (layout.hpp): the block size and the packers from the canonical
// parts. Compiled without ISA flags.
#include <cstring>
#include <string>

#include "formats/int4_groups/int4_groups.hpp"
#include "formats/int4_kgroup/int4_kgroup.hpp"
#include "formats/int4_kgroup/layout.hpp"
#include "kernels/fp16.hpp"
#include "kernels/quant_checks.hpp"

namespace kt_moe {

using namespace int4_kgroup_layout;
using int4_groups_layout::kCodes;
using int4_groups_layout::kScale;
using int4_groups_layout::kZero;

int64_t int4_kgroup_block_bytes(int k) {
  quant_check_k(k);
  return int64_t(quant_ceil_div(k, kUnitK)) * kUnitBytes;
}

// Units whose k start at or past K stay zero; the codes of k >= K inside the last unit are packed
// (they meet zero activations).
template <int G, bool ZeroPoint>
void int4_kgroup_pack(const MatrixParts& src, int n, int k, uint8_t* dst) {
  static_assert(G % kUnitK == 0, "a group covers whole units");
  const int64_t block_bytes = int4_kgroup_block_bytes(k);
  quant_check_shape(n, k);
  const uint8_t* codes = src.part<uint8_t>(kCodes);
  const fp16_t* scale = src.part<fp16_t>(kScale);
  const uint8_t* zero = ZeroPoint ? src.part<uint8_t>(kZero) : nullptr;
  const int groups = quant_ceil_div(k, G), units = quant_ceil_div(k, kUnitK);
  const int64_t ld_codes = src.ld[kCodes], ld_scale = src.ld[kScale], ld_zero = ZeroPoint ? src.ld[kZero] : 0;
  quant_check_ld(ld_codes, int64_t(groups) * G / 2, "codes", n);
  quant_check_ld(ld_scale, groups, "scale", n);
  if (ZeroPoint) quant_check_ld(ld_zero, groups, "zero", n);
  if (!codes || !scale || (ZeroPoint && !zero) || !dst) quant_fail("null pointer");
  for (int row = 0; row < n; ++row)
    for (int g = 0; g < groups; ++g)
      if ((scale[row * ld_scale + g] & 0x7C00) == 0x7C00)
        quant_fail("scales must be finite, got an fp16 infinity or NaN at [" + std::to_string(row) + ", " +
                   std::to_string(g) + "]");
  for (int b = 0; b < quant_ceil_div(n, kCols); ++b) {
    uint8_t* block = dst + b * block_bytes;
    std::memset(block, 0, block_bytes);  // padding columns: codes, scales and zeros 0
    for (int c = 0; c < kCols && b * kCols + c < n; ++c) {
      const int col = b * kCols + c;
      const uint8_t* row = codes + col * ld_codes;
      for (int u = 0; u < units; ++u) {
        uint8_t* unit = block + int64_t(u) * kUnitBytes;
        const uint8_t* x = row + u * kUnitK / 2;  // 32 bytes: k 2m (low nibble) and 2m + 1 (high)
        for (int kk = 0; kk < kUnitK / 2; ++kk) {  // kk and 32 + kk share a byte
          const int lo = (x[kk / 2] >> (4 * (kk % 2))) & 0x0F;
          const int hi = (x[(32 + kk) / 2] >> (4 * (kk % 2))) & 0x0F;
          unit[(kk / kQuadK) * kQuadBytes + kQuadK * c + kk % kQuadK] = uint8_t(lo | (hi << 4));
        }
        const int g = u * kUnitK / G;
        std::memcpy(unit + kScaleOffset + c * 2, &scale[col * ld_scale + g], 2);
        unit[kZeroOffset + c] = ZeroPoint ? zero[col * ld_zero + g] : uint8_t(kSymmetricZero);
      }
    }
  }
}

template void int4_kgroup_pack<64, false>(const MatrixParts&, int, int, uint8_t*);
template void int4_kgroup_pack<64, true>(const MatrixParts&, int, int, uint8_t*);
template void int4_kgroup_pack<128, false>(const MatrixParts&, int, int, uint8_t*);
template void int4_kgroup_pack<128, true>(const MatrixParts&, int, int, uint8_t*);

}  // namespace kt_moe
