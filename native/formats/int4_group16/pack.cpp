// int4_group16's packed layout (layout.hpp): the block size and the packer from the canonical parts.
// Compiled without ISA flags.
#include <cstring>
#include <string>

#include "formats/int4_group16/int4_group16.hpp"
#include "formats/int4_group16/layout.hpp"
#include "kernels/fp16.hpp"
#include "kernels/quant_checks.hpp"

namespace kt_moe {

using namespace int4_group16_layout;

int64_t int4_group16_block_bytes(int k) {
  quant_check_k(k);
  return int64_t(quant_ceil_div(k, kUnitK)) * kUnitBytes;
}

// Every code of the last group of 16 is read (Kp = k rounded up to 16).
void int4_group16_pack(const MatrixParts& src, int n, int k, uint8_t* dst) {
  const int64_t block_bytes = int4_group16_block_bytes(k);
  quant_check_shape(n, k);
  const uint8_t* codes = src.part<uint8_t>(kCodes);
  const fp16_t* scale = src.part<fp16_t>(kScale);
  const uint8_t* zero = src.part<uint8_t>(kZero);
  const int64_t ld_codes = src.ld[kCodes], ld_scale = src.ld[kScale], ld_zero = src.ld[kZero];
  const int groups = quant_ceil_div(k, kGroup), units = quant_ceil_div(k, kUnitK);
  quant_check_ld(ld_codes, int64_t(groups) * kGroup / 2, "codes", n);
  quant_check_ld(ld_scale, groups, "scale", n);
  quant_check_ld(ld_zero, groups, "zero", n);
  if (!codes || !scale || !zero || !dst) quant_fail("null pointer");
  for (int row = 0; row < n; ++row)
    for (int g = 0; g < groups; ++g)
      if ((scale[row * ld_scale + g] & 0x7C00) == 0x7C00)
        quant_fail("scales must be finite, got an fp16 infinity or NaN at [" + std::to_string(row) + ", " +
                   std::to_string(g) + "]");
  for (int b = 0; b < quant_ceil_div(n, kCols); ++b) {
    uint8_t* block = dst + b * block_bytes;
    std::memset(block, 0, block_bytes);  // padding columns and groups: codes, scales and zeros 0
    for (int c = 0; c < kCols && b * kCols + c < n; ++c) {
      const int col = b * kCols + c;
      const uint8_t* row = codes + col * ld_codes;
      for (int u = 0; u < units; ++u) {
        uint8_t* unit = block + int64_t(u) * kUnitBytes;
        for (int half = 0; half < 2; ++half) {  // groups h = 2 half (low nibbles) and 2 half + 1 (high)
          const int g = u * kUnitGroups + 2 * half;
          if (g >= groups) break;
          const uint8_t* low = row + g * kGroup / 2;  // 8 bytes: codes k 2m (low nibble), 2m + 1 (high)
          const uint8_t* high = g + 1 < groups ? low + kGroup / 2 : nullptr;
          for (int m = 0; m < kGroup / 2; ++m) {  // kk = 2m and 2m + 1 of both groups
            const uint8_t lo = low[m], hi = high ? high[m] : 0;
            const uint8_t pair[2] = {uint8_t((lo & 0x0F) | (hi << 4)), uint8_t((lo >> 4) | (hi & 0xF0))};
            for (int p = 0; p < 2; ++p) {
              const int kk = 2 * m + p;
              unit[(half * kHalfVectors + kk / kQuadK) * kQuadBytes + kQuadK * c + kk % kQuadK] = pair[p];
            }
          }
        }
        for (int h = 0; h < kUnitGroups && u * kUnitGroups + h < groups; ++h) {
          const int g = u * kUnitGroups + h;
          std::memcpy(unit + kScaleOffset + (h * kCols + c) * 2, &scale[col * ld_scale + g], 2);
          unit[kZeroOffset + h * kCols + c] = zero[col * ld_zero + g];
        }
      }
    }
  }
}

}  // namespace kt_moe
