// The portable part of the quantized GEMM family (gemm_quant.hpp): format names, the packed
// weight and activation record layouts, packing the canonical formats, the owning QuantWeight and
// the argument checks every kernel runs. Compiled without ISA flags.
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "kernels/gemm_quant.hpp"
#include "kernels/quant_layout.hpp"

namespace kt_moe {
namespace {

using namespace quant_layout;

constexpr int kMaxDim = 1 << 30;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int ceil_div(int x, int y) { return (x + y - 1) / y; }

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("kt-moe quantized GEMM: " + what); }

void check_k(int k) {
  if (k < 1 || k > kMaxDim) fail("k must be in [1, 2^30], got " + std::to_string(k));
}

void check_shape(int n, int k) {
  if (n < 1 || n > kMaxDim) fail("n must be in [1, 2^30], got " + std::to_string(n));
  check_k(k);
}

void check_ld(int64_t ld, int64_t row, const char* name, int n) {
  if (n > 1 && ld < row) fail(std::string(name) + ": leading dimension " + std::to_string(ld) + " < row length " +
                              std::to_string(row));
}

}  // namespace

const char* quant_format_name(QuantFormat format) {
  return format == QuantFormat::int8_channel ? "int8_channel" : "int4_group16";
}

QuantFormat parse_quant_format(const char* name) {
  const std::string s = name ? name : "";
  if (s == "int8_channel") return QuantFormat::int8_channel;
  if (s == "int4_group16") return QuantFormat::int4_group16;
  fail("unknown format '" + s + "' (expected 'int8_channel' or 'int4_group16')");
}

int64_t quant_block_bytes(QuantFormat format, int k) {
  check_k(k);
  const int64_t units = ceil_div(k, kUnitK);
  if (format == QuantFormat::int8_channel) return kInt8HeaderBytes + units * kInt8UnitBytes;
  return units * kInt4UnitBytes;
}

int64_t quant_weight_bytes(QuantFormat format, int n, int k) {
  check_shape(n, k);
  return int64_t(ceil_div(n, kCols)) * quant_block_bytes(format, k);
}

void pack_int8_channel(const int8_t* q, int64_t ld_q, const float* scale, int n, int k, uint8_t* dst) {
  const int64_t block_bytes = quant_block_bytes(QuantFormat::int8_channel, k);
  check_shape(n, k);
  check_ld(ld_q, k, "q", n);
  if (!q || !scale || !dst) fail("null pointer");
  const int kp = ceil_div(k, kUnitK) * kUnitK;
  for (int b = 0; b < ceil_div(n, kCols); ++b) {
    uint8_t* block = dst + b * block_bytes;
    float scales[kCols];
    for (int c = 0; c < kCols; ++c) {
      const int col = b * kCols + c;
      scales[c] = col < n ? scale[col] : 0.0f;
      uint8_t* quads = block + kInt8HeaderBytes + kQuadK * c;  // byte 4 c + i of every quad
      for (int kk = 0; kk < kp; ++kk) {
        const int v = col < n && kk < k ? q[col * ld_q + kk] : 0;
        quads[(kk / kQuadK) * kQuadBytes + kk % kQuadK] = static_cast<uint8_t>(v + kInt8Zero);
      }
    }
    std::memcpy(block, scales, sizeof scales);
  }
}

void pack_int4_group16(const uint8_t* codes, int64_t ld_codes, const fp16_t* scale, int64_t ld_scale,
                       const uint8_t* zero, int64_t ld_zero, int n, int k, uint8_t* dst) {
  const int64_t block_bytes = quant_block_bytes(QuantFormat::int4_group16, k);
  check_shape(n, k);
  const int groups = ceil_div(k, kInt4Group), units = ceil_div(k, kUnitK);
  check_ld(ld_codes, int64_t(groups) * kInt4Group / 2, "codes", n);
  check_ld(ld_scale, groups, "scale", n);
  check_ld(ld_zero, groups, "zero", n);
  if (!codes || !scale || !zero || !dst) fail("null pointer");
  for (int row = 0; row < n; ++row)
    for (int g = 0; g < groups; ++g)
      if ((scale[row * ld_scale + g] & 0x7C00) == 0x7C00)
        fail("scales must be finite, got an fp16 infinity or NaN at [" + std::to_string(row) + ", " +
             std::to_string(g) + "]");
  for (int b = 0; b < ceil_div(n, kCols); ++b) {
    uint8_t* block = dst + b * block_bytes;
    std::memset(block, 0, block_bytes);  // padding columns and groups: codes, scales and zeros 0
    for (int c = 0; c < kCols && b * kCols + c < n; ++c) {
      const int col = b * kCols + c;
      const uint8_t* row = codes + col * ld_codes;
      for (int u = 0; u < units; ++u) {
        uint8_t* unit = block + int64_t(u) * kInt4UnitBytes;
        for (int h = 0; h < kInt4UnitGroups && u * kInt4UnitGroups + h < groups; ++h) {
          const int g = u * kInt4UnitGroups + h;
          // group h: low nibbles (h even) or high nibbles (h odd) of vectors 4 (h / 2) + j
          for (int kk = 0; kk < kInt4Group; ++kk) {
            const int kg = g * kInt4Group + kk;
            const uint8_t code = kg % 2 ? row[kg / 2] >> 4 : row[kg / 2] & 0x0F;
            uint8_t& byte = unit[(h / 2 * kInt4HalfVectors + kk / kQuadK) * kQuadBytes + kQuadK * c + kk % kQuadK];
            byte |= static_cast<uint8_t>(code << (h % 2 * 4));
          }
          std::memcpy(unit + kInt4ScaleOffset + (h * kCols + c) * 2, &scale[col * ld_scale + g], 2);
          unit[kInt4ZeroOffset + h * kCols + c] = zero[col * ld_zero + g];
        }
      }
    }
  }
}

void QuantWeight::Free::operator()(uint8_t* p) const { std::free(p); }

QuantWeight::QuantWeight(QuantFormat format, int n, int k)
    : format_(format), n_(n), k_(k), bytes_(quant_weight_bytes(format, n, k)) {
  data_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, round_up(bytes_, 64))));
  if (!data_) throw std::bad_alloc();
}

QuantWeight QuantWeight::int8_channel(const int8_t* q, int64_t ld_q, const float* scale, int n, int k) {
  QuantWeight w(QuantFormat::int8_channel, n, k);
  pack_int8_channel(q, ld_q, scale, n, k, w.data_.get());
  return w;
}

QuantWeight QuantWeight::int4_group16(const uint8_t* codes, int64_t ld_codes, const fp16_t* scale, int64_t ld_scale,
                                      const uint8_t* zero, int64_t ld_zero, int n, int k) {
  QuantWeight w(QuantFormat::int4_group16, n, k);
  pack_int4_group16(codes, ld_codes, scale, ld_scale, zero, ld_zero, n, k, w.data_.get());
  return w;
}

QuantActLayout quant_act_layout(QuantFormat format, int k) {
  check_k(k);
  QuantActLayout l;
  l.k = k;
  l.group = kUnitK;
  l.groups = ceil_div(k, l.group);
  l.k_padded = l.groups * l.group;
  l.sum_group = format == QuantFormat::int8_channel ? kUnitK : kInt4Group;
  l.sums = l.k_padded / l.sum_group;
  l.scale_offset = l.k_padded;
  l.sum_offset = l.scale_offset + 4 * int64_t(l.groups);
  l.row_bytes = round_up(l.sum_offset + 4 * int64_t(l.sums), 64);
  return l;
}

void validate_quant_gemm(const QuantGemmArgs& args) {
  const QuantWeightView& w = args.w;
  const QuantActView& a = args.a;
  if (w.format != a.format)
    fail(std::string("weight format ") + quant_format_name(w.format) + " but activations quantized for " +
         quant_format_name(a.format));
  if (w.k != a.k) fail("weight k = " + std::to_string(w.k) + " but activation k = " + std::to_string(a.k));
  check_shape(w.n, w.k);
  if (args.m < 0) fail("m must not be negative");
  if (args.n0 < 0 || args.n0 > args.n1 || args.n1 > w.n)
    fail("column range [" + std::to_string(args.n0) + ", " + std::to_string(args.n1) + ") is not inside [0, " +
         std::to_string(w.n) + ")");
  if (args.n0 % kCols != 0 || (args.n1 % kCols != 0 && args.n1 != w.n))
    fail("column range [" + std::to_string(args.n0) + ", " + std::to_string(args.n1) +
         ") must start at a multiple of 16 and end at one or at n = " + std::to_string(w.n));
  if (args.m == 0 || args.n0 == args.n1) return;
  if (!w.data || !a.data || !args.c) fail("null pointer");
  const QuantActLayout layout = quant_act_layout(a.format, a.k);
  if (a.stride < layout.row_bytes || a.stride % 4 != 0 || reinterpret_cast<uintptr_t>(a.data) % 4 != 0)
    fail("activation records need a stride >= " + std::to_string(layout.row_bytes) +
         " bytes, a multiple of 4, and 4-byte aligned data");
  if (args.m > 1 && args.ldc < args.n1)
    fail("ldc = " + std::to_string(args.ldc) + " < n1 = " + std::to_string(args.n1));
  if (args.row_ids == nullptr) {
    if (args.m > a.rows) fail("m = " + std::to_string(args.m) + " rows but " + std::to_string(a.rows) + " quantized");
    return;
  }
  for (int i = 0; i < args.m; ++i)
    if (args.row_ids[i] < 0 || args.row_ids[i] >= a.rows)
      fail("row_ids[" + std::to_string(i) + "] = " + std::to_string(args.row_ids[i]) + " is not in [0, " +
           std::to_string(a.rows) + ")");
}

}  // namespace kt_moe
