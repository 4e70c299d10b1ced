// The quantized GEMM family of the inference engine: INT8 (per output channel) and INT4 (K groups
// of 16, fp16 scales, fractional zero points) weights times int8-quantized activations, fp32 out,
// behind one entry per ISA level. Weights are packed once at load into one layout that every level
// reads (switching the ISA level never repacks); activations are quantized once per call site
// (quantize_activations) and may then be read by any number of products, gathered by row index.
//
// Canonical weight formats (W [N, K], N output channels, K inputs, as Hugging Face stores it;
// kt_moe.quant writes them, moe/quant_parts.hpp hands them over):
//   int8_channel  q int8 [N, K], scale fp32 [N]:                   W[n, k] ~= q[n, k] * scale[n]
//   int4_group16  Kp = K rounded up to a multiple of 16, g = Kp / 16 groups per row:
//                 codes uint8 [N, Kp / 2] (low nibble = even k, high nibble = odd k),
//                 scale fp16 [N, g], zero uint8 [N, g] in sixteenths of a code (z = zero / 16):
//                 W[n, k] ~= (code[n, k] - zero[n, k / 16] / 16) * scale[n, k / 16].
//                 The dequantized value is exact in fp32 (code - z is a multiple of 1/16 in
//                 [-16, 15], times an fp16 scale: at most 20 significant bits). Codes of k >= K in
//                 the last group are whatever the quantizer gave the zero padding: they meet
//                 zero activations.
// Why groups of 16 with fitted fractional zero points: the relative L2 error of a DeepSeek-V2-Lite
// expert MLP against fp32 is ~0.10 (0.125 worst single token), where the former groups of 32 with
// integer zero points and fp32 scales gave 0.136 (up to 0.17 on single tokens) against a 0.15 bar;
// it costs 0.6875 bytes per weight (was 0.656).
//
// Activation quantization (one semantics at every level): row m of a bf16 [M, K] is cut into
// groups of 64 consecutive k (both formats), the last group padded with zeros. Per group: amax =
// max |a|; if amax < FLT_MIN (zeros or only denormals) scale = 0 and q = 0; if the group holds an
// Inf or a NaN, scale = NaN and q = 0 (the row's products are NaN, as the unquantized ones would
// be non-finite); else scale = amax / 127
// and q[k] = round_half_even(a[k] * (127 / amax)) (in [-127, 127], fp32 arithmetic). Sums of q
// (exact integers, kept as fp32): per group of 64 for int8_channel, per 16 k (4 per group, one per
// weight group) for int4_group16, whose zero-point term needs them.
// Why groups of 64: relative L2 error of a DeepSeek-V2-Lite expert MLP against fp32 is 0.020 for
// INT8 with G = 64 and 0.018 with G = 32 (per token: 0.029), both well inside the 3e-2 bar; the
// INT4 error is the weights'. G = 64 halves the per-group fp32 work, which is what bounds the AMX
// prefill (one 64-byte tile row per group) and the scale traffic of the decode.
//
// The product, per output (m, n), with a_q, a_s, a_sum the quantized row and D, P exact int32 dot
// products (identical at every level; only the fp32 rounding order below may differ):
//   int8_channel  D'_g = sum_{k in g} a_q[k] * (q[n, k] + 128)
//                 C = (sum_g a_s[g] * D'_g  -  128 * sum_g a_s[g] * a_sum[g]) * scale[n]
//   int4_group16  P_h = sum_{k in h} a_q[k] * code[n, k] over the 16-k group h,
//                 C = sum_{g64} a_s[g] * sum_{h in g} (P_h - z[n, h] * a_sum[h]) * scale[n, h]
// which is dequant(a) . dequant(W)^T with dequant(a)[k] = a_q[k] * a_s[k / 64]. The generic and
// the VNNI levels (avx512, avx512_bf16) compute int4_group16 exactly so, in the same fp32 order
// (bit-identical results).
//
// The AMX level's int4_group16 product is an approximation of that: tdpbssd multiplies int8 by
// int8 at K = 64, so each 64-k unit of a 16-column block is requantized to int8 first, per column
// c: Wf = the exact fp32 dequantized weights of the unit, amax = max_k |Wf[c, k]|; if amax <
// FLT_MIN then S[c] = 0 and w8 = 0, else S[c] = amax / 127 and w8[c, k] = round_half_even(Wf[c, k]
// * (127 / amax)) (fp32, in [-127, 127]). Then
//   C = sum_{g64} a_s[g] * S[n, g] * D_g,   D_g = sum_{k in g} a_q[k] * w8[n, k]   (exact int32),
// the INT8 tile product with a column scale per 64-k unit. The requantization adds ~0.6% relative
// error per matrix (~1% on an expert MLP) on top of the exact product; amx_emulated runs the same
// source on emulated tiles and gives bit-identical results.
//
// Each call is single-threaded: the engine splits N (column ranges, whole blocks of
// kQuantColBlock) and M (row ranges or gathered row lists) across its threads. Nothing here
// aborts: bad arguments throw std::invalid_argument (ValueError in Python).
#pragma once

#include <cstdint>
#include <memory>

#include "cpu/cpu_features.hpp"
#include "kernels/fp16.hpp"
#include "kernels/gemm_bf16.hpp"

namespace kt_moe {

enum class QuantFormat : int { int8_channel = 0, int4_group16 = 1 };

// "int8_channel" / "int4_group16"; parse throws std::invalid_argument naming the accepted names.
const char* quant_format_name(QuantFormat format);
QuantFormat parse_quant_format(const char* name);

// Columns per packed block. A call's column range [n0, n1) starts at a multiple of this and ends
// at a multiple of it or at N.
constexpr int kQuantColBlock = 16;

// ---- packed weights ------------------------------------------------------------------------
// The packed layout (the same for every ISA level): N padded to whole blocks of 16 columns (the
// padding is zero weight), one block after another, each block_bytes long, 64-byte aligned
// within the buffer; K padded to a multiple of 64 (the padding is zero weight). Inside a block
// the weights are "VNNI" quads: 64 bytes hold 4 consecutive k of each of the 16 columns (byte
// 4 c + i = column c, k = 4 j + i), which is one zmm for vpdpbusd and one row of an AMX B tile.
//   int8_channel  [scale fp32 x 16][per 64 k: 16 quads x 64 B of q + 128 (uint8)]
//   int4_group16  per unit of 64 k, 704 B (0.6875 B per weight):
//                   8 x 64 B codes: vector 4 u + j (u = 0, 1 the halves of 32 k, j = 0..3), byte
//                     4 c + i holds k = 32 u + 4 j + i in its low nibble and k = 32 u + 16 + 4 j + i
//                     in its high nibble (column c): the 16-k group h = 2 u is the low nibbles of
//                     vectors 4 u .. 4 u + 3, h = 2 u + 1 their high nibbles
//                   4 x 16 fp16 scales (128 B): group h, column c at [h][c]
//                   4 x 16 uint8 zeros (64 B), sixteenths: group h, column c at [h][c]
//                 Whole groups past Kp and padding columns: codes 0, scale 0, zero 0 (exactly 0).
struct QuantWeightView {
  QuantFormat format = QuantFormat::int8_channel;
  int n = 0, k = 0;              // logical shape of W
  const uint8_t* data = nullptr;  // quant_weight_bytes(format, n, k) bytes, 64-byte aligned
};

// Bytes of the packed weight (throws for n < 1 or k < 1).
int64_t quant_weight_bytes(QuantFormat format, int n, int k);
int64_t quant_block_bytes(QuantFormat format, int k);  // bytes of one 16-column block

// Pack the canonical format into dst (quant_weight_bytes bytes, 64-byte aligned). Leading
// dimensions are in elements of each array, so that a slice of a bigger tensor (a tensor-
// parallel part along N, or along K at a multiple of 16 for int4_group16) packs in place.
//   q [n, k] (ld_q), scale [n]
void pack_int8_channel(const int8_t* q, int64_t ld_q, const float* scale, int n, int k, uint8_t* dst);
//   codes [n, Kp / 2] (ld_codes), scale [n, Kp / 16] (ld_scale), zero [n, Kp / 16] (ld_zero),
//   Kp = k rounded up to a multiple of 16 (every code of the last group is read)
void pack_int4_group16(const uint8_t* codes, int64_t ld_codes, const fp16_t* scale, int64_t ld_scale,
                       const uint8_t* zero, int64_t ld_zero, int n, int k, uint8_t* dst);

// An owning packed weight (64-byte aligned heap memory). Engines that place memory themselves
// (NUMA) call quant_weight_bytes and the pack_* functions directly.
class QuantWeight {
 public:
  static QuantWeight int8_channel(const int8_t* q, int64_t ld_q, const float* scale, int n, int k);
  static QuantWeight int4_group16(const uint8_t* codes, int64_t ld_codes, const fp16_t* scale, int64_t ld_scale,
                                  const uint8_t* zero, int64_t ld_zero, int n, int k);
  QuantWeightView view() const { return {format_, n_, k_, data_.get()}; }
  int64_t bytes() const { return bytes_; }  // memory held, for memory reporting

 private:
  QuantWeight(QuantFormat format, int n, int k);
  struct Free {
    void operator()(uint8_t* p) const;
  };
  QuantFormat format_;
  int n_, k_;
  int64_t bytes_;
  std::unique_ptr<uint8_t, Free> data_;
};

// ---- quantized activations -----------------------------------------------------------------
// One quantized row is a record of row_bytes (a multiple of 64):
//   int8 q[k_padded] | fp32 scale[groups] at scale_offset | fp32 sum[sums] at sum_offset
// group = 64 k per scale; sum_group = k per sum (64 for int8_channel, 16 for int4_group16).
struct QuantActLayout {
  int k = 0, group = 0, groups = 0, k_padded = 0, sum_group = 0, sums = 0;
  int64_t scale_offset = 0, sum_offset = 0, row_bytes = 0;
};
QuantActLayout quant_act_layout(QuantFormat format, int k);  // throws like quant_weight_bytes

// Records of quantized rows: row r at data + r * stride (stride >= row_bytes, a multiple of 4).
// 64-byte aligned records (data and stride) let the AMX kernel load whole cache lines per tile row.
struct QuantActView {
  QuantFormat format = QuantFormat::int8_channel;
  int rows = 0, k = 0;
  const uint8_t* data = nullptr;
  int64_t stride = 0;
};

// out record r = quantized row r of a bf16 [m, k] (row stride lda elements).
struct QuantizeArgs {
  QuantFormat format = QuantFormat::int8_channel;
  int m = 0, k = 0;
  const bf16_t* a = nullptr;
  int64_t lda = 0;
  uint8_t* out = nullptr;
  int64_t out_stride = 0;  // bytes, >= row_bytes, a multiple of 4
};
using QuantizeFn = void (*)(const QuantizeArgs&);
// The quantizer of `level` (all give bit-identical records). Never null.
QuantizeFn quantize_activations_kernel(IsaLevel level);

// ---- the product ---------------------------------------------------------------------------
// c[i * ldc + n] = (accumulate ? c[i * ldc + n] : 0) + sum_k a(i, k) * W[n, k]
//   for i < m and n0 <= n < n1, where a(i, .) is activation record row_ids[i] (or i when row_ids
//   is null). c is indexed by the weight's column n, not n - n0. Weight and activations must
//   share format and k; n0 % 16 == 0, n0 <= n1 <= N, n1 % 16 == 0 or n1 == N.
struct QuantGemmArgs {
  QuantWeightView w;
  QuantActView a;
  int m = 0;
  const int32_t* row_ids = nullptr;  // [m] indices into a's rows, or null
  int n0 = 0, n1 = 0;
  float* c = nullptr;
  int64_t ldc = 0;
  bool accumulate = false;
};
using QuantGemmFn = void (*)(const QuantGemmArgs&);

// Throws std::invalid_argument describing the first violated rule above. Every kernel calls it.
void validate_quant_gemm(const QuantGemmArgs& args);

// The kernel of `level` (amx_emulated included). Never null. The amx level sends calls with
// fewer than quant_amx_min_rows(format) rows to the avx512_bf16 (VNNI) kernel, which computes
// int4_group16 exactly (see gemm_quant_dispatch.cpp).
QuantGemmFn gemm_quant_kernel(IsaLevel level);
int quant_amx_min_rows(QuantFormat format);

}  // namespace kt_moe
