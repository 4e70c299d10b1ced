// The portable part of the quantized GEMM family (gemm_quant.hpp): the packed weight and activation
// record sizes, the owning QuantWeight and the argument checks every kernel and packer runs.
// Compiled without ISA flags. The packers themselves are the formats' (native/formats/*/pack.cpp).
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

#include "kernels/gemm_quant.hpp"
#include "kernels/quant_checks.hpp"
#include "kernels/quant_layout.hpp"

namespace kt_moe {
namespace {

using namespace quant_layout;

constexpr int kMaxDim = 1 << 30;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace

void quant_fail(const std::string& what) { throw std::invalid_argument("kt-moe quantized GEMM: " + what); }

void quant_check_k(int k) {
  if (k < 1 || k > kMaxDim) quant_fail("k must be in [1, 2^30], got " + std::to_string(k));
}

void quant_check_shape(int n, int k) {
  if (n < 1 || n > kMaxDim) quant_fail("n must be in [1, 2^30], got " + std::to_string(n));
  quant_check_k(k);
}

void quant_check_ld(int64_t ld, int64_t row, const char* name, int n) {
  if (n > 1 && ld < row)
    quant_fail(std::string(name) + ": leading dimension " + std::to_string(ld) + " < row length " +
               std::to_string(row));
}

int64_t quant_weight_bytes(const PackedFormat& format, int n, int k) {
  quant_check_shape(n, k);
  return int64_t(quant_ceil_div(n, kCols)) * format.block_bytes(k);
}

void QuantWeight::Free::operator()(uint8_t* p) const { std::free(p); }

QuantWeight::QuantWeight(const PackedFormat& format, int n, int k)
    : format_(&format), n_(n), k_(k), bytes_(quant_weight_bytes(format, n, k)) {
  data_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, round_up(bytes_, 64))));
  if (!data_) throw std::bad_alloc();
}

QuantWeight QuantWeight::pack(const PackedFormat& format, const MatrixParts& src, int n, int k) {
  QuantWeight w(format, n, k);
  format.pack(src, n, k, w.data_.get());
  return w;
}

QuantActLayout quant_act_layout(int sum_group, int k) {
  quant_check_k(k);
  if (sum_group != 64 && sum_group != 32 && sum_group != 16)
    quant_fail("activation sums per " + std::to_string(sum_group) + " k (64, 32 or 16 are supported)");
  QuantActLayout l;
  l.k = k;
  l.group = kUnitK;
  l.groups = quant_ceil_div(k, l.group);
  l.k_padded = l.groups * l.group;
  l.sum_group = sum_group;
  l.sums = l.k_padded / l.sum_group;
  l.scale_offset = l.k_padded;
  l.sum_offset = l.scale_offset + 4 * int64_t(l.groups);
  l.row_bytes = round_up(l.sum_offset + 4 * int64_t(l.sums), 64);
  return l;
}

void validate_quant_gemm(const QuantGemmArgs& args) {
  const QuantWeightView& w = args.w;
  const QuantActView& a = args.a;
  if (!w.format || !a.format) quant_fail("weight and activations need a format");
  if (w.format != a.format)
    quant_fail(std::string("weight format ") + w.format->name + " but activations quantized for " + a.format->name);
  if (w.k != a.k) quant_fail("weight k = " + std::to_string(w.k) + " but activation k = " + std::to_string(a.k));
  quant_check_shape(w.n, w.k);
  if (args.m < 0) quant_fail("m must not be negative");
  if (args.n0 < 0 || args.n0 > args.n1 || args.n1 > w.n)
    quant_fail("column range [" + std::to_string(args.n0) + ", " + std::to_string(args.n1) + ") is not inside [0, " +
               std::to_string(w.n) + ")");
  if (args.n0 % kCols != 0 || (args.n1 % kCols != 0 && args.n1 != w.n))
    quant_fail("column range [" + std::to_string(args.n0) + ", " + std::to_string(args.n1) +
               ") must start at a multiple of 16 and end at one or at n = " + std::to_string(w.n));
  if (args.m == 0 || args.n0 == args.n1) return;
  if (!w.data || !a.data || !args.c) quant_fail("null pointer");
  const QuantActLayout layout = quant_act_layout(*a.format, a.k);
  if (a.stride < layout.row_bytes || a.stride % 4 != 0 || reinterpret_cast<uintptr_t>(a.data) % 4 != 0)
    quant_fail("activation records need a stride >= " + std::to_string(layout.row_bytes) +
               " bytes, a multiple of 4, and 4-byte aligned data");
  if (args.m > 1 && args.ldc < args.n1)
    quant_fail("ldc = " + std::to_string(args.ldc) + " < n1 = " + std::to_string(args.n1));
  if (args.row_ids == nullptr) {
    if (args.m > a.rows)
      quant_fail("m = " + std::to_string(args.m) + " rows but " + std::to_string(a.rows) + " quantized");
    return;
  }
  for (int i = 0; i < args.m; ++i)
    if (args.row_ids[i] < 0 || args.row_ids[i] >= a.rows)
      quant_fail("row_ids[" + std::to_string(i) + "] = " + std::to_string(args.row_ids[i]) + " is not in [0, " +
                 std::to_string(a.rows) + ")");
}

}  // namespace kt_moe
