// The canonical parts of one quantized weight matrix W [N, K] (kt_moe.quant's formats, whole and
// C-contiguous) as the loaders hand them to the engines:
//   int8_channel   values int8 q [N, K], scale fp32 [N], zero null
//   int4 groups    values uint8 codes [N, Kp / 2] (two per byte, low nibble = even k), scale fp32
//                  [N, Kp / G], zero uint8 [N, Kp / G] or null (symmetric groups, zero point 8);
//                  Kp = K rounded up to a multiple of the group size G
#pragma once

#include <cstdint>

namespace kt_moe {

struct QuantParts {
  const void* values = nullptr;
  const float* scale = nullptr;
  const uint8_t* zero = nullptr;
};

}  // namespace kt_moe
