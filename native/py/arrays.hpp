// Typed access to the ndarrays (torch tensors via DLPack) that cross into the engines: dtype,
// shape and contiguity are checked at the boundary and a mismatch is a std::invalid_argument
// (Python ValueError) naming the argument. Included by the binding headers only.
#pragma once

#include <nanobind/ndarray.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace kt_moe::py {

// Any dtype, CPU, C-contiguous; bound with .noconvert() so that the engine sees the caller's memory.
using Array = nanobind::ndarray<nanobind::device::cpu, nanobind::c_contig>;

enum class DType { bf16, f16, f32, i64, i8, u8 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    case DType::f32: return "float32";
    case DType::i64: return "int64";
    case DType::i8: return "int8";
    case DType::u8: return "uint8";
  }
  return "?";
}

inline bool has_dtype(const Array& a, DType d) {
  const nanobind::dlpack::dtype t = a.dtype();
  if (t.lanes != 1) return false;
  switch (d) {
    case DType::bf16: return t.code == uint8_t(nanobind::dlpack::dtype_code::Bfloat) && t.bits == 16;
    case DType::f16: return t.code == uint8_t(nanobind::dlpack::dtype_code::Float) && t.bits == 16;
    case DType::f32: return t.code == uint8_t(nanobind::dlpack::dtype_code::Float) && t.bits == 32;
    case DType::i64: return t.code == uint8_t(nanobind::dlpack::dtype_code::Int) && t.bits == 64;
    case DType::i8: return t.code == uint8_t(nanobind::dlpack::dtype_code::Int) && t.bits == 8;
    case DType::u8: return t.code == uint8_t(nanobind::dlpack::dtype_code::UInt) && t.bits == 8;
  }
  return false;
}

inline std::string shape_text(const Array& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

inline std::string shape_text(std::initializer_list<int64_t> shape) {
  std::string s = "(";
  size_t i = 0;
  for (int64_t d : shape) s += (i++ ? ", " : "") + std::to_string(d);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// The data pointer of `a` after checking its dtype and shape.
template <class T>
T* checked(const Array& a, const char* name, DType dtype, std::initializer_list<int64_t> shape) {
  if (!has_dtype(a, dtype)) throw std::invalid_argument(std::string(name) + " must be " + dtype_name(dtype));
  bool same = a.ndim() == shape.size();
  size_t i = 0;
  for (int64_t d : shape) same = same && int64_t(a.shape(i++)) == d;
  if (!same)
    throw std::invalid_argument(std::string(name) + " shape mismatch: expected " + shape_text(shape) + ", got " +
                                shape_text(a));
  return static_cast<T*>(a.data());
}

// The (qlen, k) of a batch an engine is handed: qlen >= 1 and k equal to the config's experts_per_token.
inline void check_batch(int qlen, int k, int experts_per_token) {
  if (qlen < 1) throw std::invalid_argument("qlen must be positive, got " + std::to_string(qlen));
  if (k != experts_per_token)
    throw std::invalid_argument("k (" + std::to_string(k) + ") must equal experts_per_token (" +
                                std::to_string(experts_per_token) + ")");
}

}  // namespace kt_moe::py
