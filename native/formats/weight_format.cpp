// What every weight format answers the same way (weight_format.hpp): part types, canonical sizes,
// the kernel families or a clear error.
#include "formats/weight_format.hpp"

#include <stdexcept>
#include <string>

namespace kt_moe {

const char* part_type_name(PartType type) {
  switch (type) {
    case PartType::i8: return "int8";
    case PartType::u8: return "uint8";
    case PartType::i32: return "int32";
    case PartType::f16: return "float16";
    case PartType::bf16: return "bfloat16";
    case PartType::f32: return "float32";
    case PartType::f8_e4m3: return "float8_e4m3fn";
  }
  return "?";
}

int part_type_bytes(PartType type) {
  switch (type) {
    case PartType::i8:
    case PartType::u8:
    case PartType::f8_e4m3: return 1;
    case PartType::f16:
    case PartType::bf16: return 2;
    case PartType::i32:
    case PartType::f32: return 4;
  }
  return 1;
}

int64_t WeightFormat::canonical_bytes(int n, int k) const {
  int64_t bytes = 0;
  for (int i = 0; i < part_count; ++i) bytes += parts[i].rows(n) * parts[i].cols(k) * part_type_bytes(parts[i].type);
  return bytes;
}

std::string WeightFormat::part_list() const {
  std::string s = "[";
  for (int i = 0; i < part_count; ++i) s += (i ? ", " : "") + std::string(parts[i].name);
  return s + "]";
}

const PackedFormat& WeightFormat::packed_kernels() const {
  if (!packed) throw std::invalid_argument(std::string("weight format ") + name + " has no quantized GEMM kernels");
  return *packed;
}

const DequantFormat& WeightFormat::dequant_kernels() const {
  if (!dequant) throw std::invalid_argument(std::string("weight format ") + name + " has no bf16 dequantizer");
  return *dequant;
}

}  // namespace kt_moe
