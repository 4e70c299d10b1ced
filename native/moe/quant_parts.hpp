// The canonical parts of one quantized weight matrix W [N, K] (kt_moe.quant's formats, whole and
// C-contiguous) as the loaders hand them to the engines:
//   int8_channel   values int8 q [N, K], scale fp32 [N], zero null
//   int4 groups    values uint8 codes [N, Kp / 2] (two per byte, low nibble = even k), scale_fp16
//                  fp16 [N, Kp / G], zero uint8 [N, Kp / G] in sixteenths of a code or null
//                  (symmetric groups, zero point 8): W[n, k] = (code - zero / 16) * scale;
//                  Kp = K rounded up to a multiple of the group size G
#pragma once

#include <cstdint>

#include "kernels/fp16.hpp"

namespace kt_moe {

struct QuantParts {
  const void* values = nullptr;
  const float* scale = nullptr;         // int8_channel
  const fp16_t* scale_fp16 = nullptr;   // int4 groups
  const uint8_t* zero = nullptr;        // int4 groups with zero points
};

}  // namespace kt_moe
