// int8_channel's packed layout (layout.hpp): the block size and the packer from the canonical parts.
// Compiled without ISA flags.
#include <cstring>
#include <string>

#include "formats/int8_channel/int8_channel.hpp"
#include "formats/int8_channel/layout.hpp"
#include "kernels/quant_checks.hpp"

namespace kt_moe {

using namespace int8_channel_layout;

int64_t int8_channel_block_bytes(int k) {
  quant_check_k(k);
  return kHeaderBytes + int64_t(quant_ceil_div(k, kUnitK)) * kUnitBytes;
}

void int8_channel_pack(const MatrixParts& src, int n, int k, uint8_t* dst) {
  const int64_t block_bytes = int8_channel_block_bytes(k);
  quant_check_shape(n, k);
  const int8_t* q = src.part<int8_t>(kQ);
  const float* scale = src.part<float>(kScale);
  const int64_t ld_q = src.ld[kQ];
  quant_check_ld(ld_q, k, "q", n);
  if (!q || !scale || !dst) quant_fail("null pointer");
  const int kp = quant_ceil_div(k, kUnitK) * kUnitK;
  for (int b = 0; b < quant_ceil_div(n, kCols); ++b) {
    uint8_t* block = dst + b * block_bytes;
    float scales[kCols];
    for (int c = 0; c < kCols; ++c) {
      const int col = b * kCols + c;
      scales[c] = col < n ? scale[col] : 0.0f;
      uint8_t* quads = block + kHeaderBytes + kQuadK * c;  // byte 4 c + i of every quad
      for (int kk = 0; kk < kp; ++kk) {
        const int v = col < n && kk < k ? q[col * ld_q + kk] : 0;
        quads[(kk / kQuadK) * kQuadBytes + kk % kQuadK] = static_cast<uint8_t>(v + kZero);
      }
    }
    std::memcpy(block, scales, sizeof scales);
  }
}

}  // namespace kt_moe
