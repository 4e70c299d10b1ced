// The canonical parts of one quantized matrix as Python hands them to an engine (a list of tensors
// in kt_moe.quant's part order), checked against the format and the matrix shape W [n, k]:
//   int8_channel   [q int8 [n, k], scale fp32 [n]]
//   int4 groups    [codes uint8 [n, kp / 2], scale fp16 [n, kp / G], zero uint8 [n, kp / G]], the zero
//                  (in sixteenths of a code) only with zero points; kp = k rounded up to a multiple
//                  of the group size G
// Shared by the inference and the SFT bindings. Included by the binding headers only.
#pragma once

#include <string>
#include <vector>

#include "moe/quant_parts.hpp"
#include "py/arrays.hpp"

namespace kt_moe::py {

struct PartsFormat {
  const char* name;  // the scheme's name, for messages
  bool int8;         // int8_channel; otherwise int4 groups
  int group = 0;     // int4: inputs per scale
  bool zero_point = false;
};

inline QuantParts checked_parts(const PartsFormat& f, const std::vector<Array>& parts, const char* name, int64_t n,
                                int64_t k) {
  const std::string base(name);
  const size_t count = f.int8 ? 2 : f.zero_point ? 3 : 2;
  if (parts.size() != count)
    throw std::invalid_argument(base + " must be given as " +
                                (f.int8 ? "[q, scale]" : f.zero_point ? "[codes, scale, zero]" : "[codes, scale]") +
                                " (" + f.name + "), got " + std::to_string(parts.size()) + " tensors");
  QuantParts m;
  if (f.int8) {
    m.values = checked<const int8_t>(parts[0], (base + " q").c_str(), DType::i8, {n, k});
    m.scale = checked<const float>(parts[1], (base + " scale").c_str(), DType::f32, {n});
    return m;
  }
  const int64_t groups = (k + f.group - 1) / f.group;
  m.values = checked<const uint8_t>(parts[0], (base + " codes").c_str(), DType::u8, {n, groups * f.group / 2});
  m.scale_fp16 = checked<const fp16_t>(parts[1], (base + " scale").c_str(), DType::f16, {n, groups});
  if (f.zero_point) m.zero = checked<const uint8_t>(parts[2], (base + " zero").c_str(), DType::u8, {n, groups});
  return m;
}

}  // namespace kt_moe::py
