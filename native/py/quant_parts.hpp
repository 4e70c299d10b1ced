// The canonical parts of one quantized matrix W [n, k] as Python hands them to an engine: a list of
// tensors in the order of the weight format's part list (formats/weight_format.hpp; kt_moe.quant
// writes them), each checked for its dtype and its shape from the format's part geometry, whole and
// C-contiguous; and back: the parts an engine keeps for one expert (stored_parts, a test hook).
// Shared by the inference and the SFT bindings. Included by the binding headers only.
#pragma once

#include <string>
#include <vector>

#include "formats/part_slices.hpp"
#include "formats/weight_format.hpp"
#include "moe/canonical_experts.hpp"
#include "py/arrays.hpp"

namespace kt_moe::py {

// Whether `a` holds elements of a part of `type` (float8 as DLPack's float8_e4m3fn or as raw bytes).
inline bool has_part_type(const Array& a, PartType type) {
  namespace dl = nanobind::dlpack;
  const dl::dtype t = a.dtype();
  if (t.lanes != 1) return false;
  switch (type) {
    case PartType::i8: return has_dtype(a, DType::i8);
    case PartType::u8: return has_dtype(a, DType::u8);
    case PartType::i32: return t.code == uint8_t(dl::dtype_code::Int) && t.bits == 32;
    case PartType::f16: return has_dtype(a, DType::f16);
    case PartType::bf16: return has_dtype(a, DType::bf16);
    case PartType::f32: return has_dtype(a, DType::f32);
    case PartType::f8_e4m3: return t.bits == 8 && t.code == uint8_t(dl::dtype_code::Float8_E4M3FN);
  }
  return false;
}

inline MatrixParts checked_parts(const WeightFormat& f, const std::vector<Array>& parts, const char* name, int64_t n,
                                 int64_t k) {
  const std::string base(name);
  if (int(parts.size()) != f.part_count)
    throw std::invalid_argument(base + " must be given as " + f.part_list() + " (" + f.name + "), got " +
                                std::to_string(parts.size()) + " tensors");
  const void* data[kMaxMatrixParts] = {};
  for (int i = 0; i < f.part_count; ++i) {
    const PartSpec& p = f.parts[i];
    const Array& a = parts[i];
    const std::string part = base + " " + p.name;
    if (!has_part_type(a, p.type)) throw std::invalid_argument(part + " must be " + part_type_name(p.type));
    const int64_t rows = p.rows(int(n)), cols = p.cols(int(k));
    const bool same = p.one_d() ? a.ndim() == 1 && int64_t(a.shape(0)) == rows
                                : a.ndim() == 2 && int64_t(a.shape(0)) == rows && int64_t(a.shape(1)) == cols;
    if (!same)
      throw std::invalid_argument(part + " shape mismatch: expected " +
                                  (p.one_d() ? shape_text({rows}) : shape_text({rows, cols})) + ", got " +
                                  shape_text(a));
    data[i] = a.data();
  }
  return contiguous_parts(f, data, int(k));
}

// The parts `experts` keeps of expert `slot`'s matrix ("gate", "up" or "down") in slice s, as bytes
// objects in part order; std::invalid_argument for a bad name, slot or slice, or without experts
// kept in canonical parts (null: `method` keeps them otherwise).
inline nanobind::list stored_parts(const CanonicalExperts* experts, const std::string& method, int slot,
                                   const std::string& matrix, int s) {
  if (!experts) throw std::invalid_argument("method " + method + " does not keep its experts in canonical parts");
  const char* names[] = {"gate", "up", "down"};
  int which = -1;
  for (int m = 0; m < 3; ++m)
    if (matrix == names[m]) which = m;
  if (which < 0) throw std::invalid_argument("matrix must be 'gate', 'up' or 'down', got '" + matrix + "'");
  if (s < 0 || s >= experts->slice_count())
    throw std::invalid_argument("slice " + std::to_string(s) + " out of range [0, " +
                                std::to_string(experts->slice_count()) + ")");
  nanobind::list out;
  for (const std::vector<uint8_t>& part : experts->stored_parts(s, slot, BaseMatrix(which)))
    out.append(nanobind::bytes(reinterpret_cast<const char*>(part.data()), part.size()));
  return out;
}

}  // namespace kt_moe::py
