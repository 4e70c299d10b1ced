// The quantized GEMM family of the inference engine: INT8 (per output channel) and INT4 (K groups
// of 32, asymmetric) weights times int8-quantized activations, fp32 out, behind one entry per ISA
// level. Weights are packed once at load into one layout that every level reads (switching the
// ISA level never repacks); activations are quantized once per call site (quantize_activations)
// and may then be read by any number of products, gathered by row index.
//
// Canonical weight formats (W [N, K], N output channels, K inputs, as Hugging Face stores it):
//   int8_channel  q int8 [N, K], scale fp32 [N]:                   W[n, k] ~= q[n, k] * scale[n]
//   int4_group32  codes uint8 [N, K / 2] (low nibble = even k, high nibble = odd k),
//                 scale fp32 [N, K / 32], zero uint8 [N, K / 32] (0..15):
//                 W[n, k] ~= (code[n, k] - zero[n, k / 32]) * scale[n, k / 32];   K % 32 == 0.
//
// Activation quantization (one semantics at every level): row m of a bf16 [M, K] is cut into
// groups of G consecutive k, G = 64 for int8_channel and 32 for int4_group32 (the weight groups),
// the last group padded with zeros. Per group: amax = max |a|; if amax < FLT_MIN (zeros or only
// denormals) scale = 0 and q = 0, else scale = amax / 127 and q[k] = round_half_even(a[k] *
// (127 / amax)) (in [-127, 127], fp32 arithmetic); sum = sum of q (an exact integer, kept as fp32).
// Why G = 64 for INT8: relative L2 error of a DeepSeek-V2-Lite expert MLP against fp32 is 0.020
// with G = 64 and 0.018 with G = 32 (per token: 0.029), both well inside the 3e-2 bar, and G = 64
// halves the per-group fp32 work, which is what bounds the AMX prefill (one 64-byte tile row per
// group) and the scale traffic of the decode. INT4 needs G = 32 (0.136 against a 0.15 bar).
//
// The product, per output (m, n), with a_q, a_s, a_sum the quantized row and D the exact int32
// group dot products (identical at every level; only the fp32 rounding order below may differ):
//   int8_channel  D'_g = sum_{k in g} a_q[k] * (q[n, k] + 128)
//                 C = (sum_g a_s[g] * D'_g  -  128 * sum_g a_s[g] * a_sum[g]) * scale[n]
//   int4_group32  D_g = sum_{k in g} a_q[k] * (code[n, k] - zero[n, g])
//                 C = sum_g (D_g * scale[n, g]) * a_s[g]
// which is dequant(a) . dequant(W)^T with dequant(a)[k] = a_q[k] * a_s[k / G].
//
// Each call is single-threaded: the engine splits N (column ranges, whole blocks of
// kQuantColBlock) and M (row ranges or gathered row lists) across its threads. Nothing here
// aborts: bad arguments throw std::invalid_argument (ValueError in Python).
#pragma once

#include <cstdint>
#include <memory>

#include "cpu/cpu_features.hpp"
#include "kernels/gemm_bf16.hpp"

namespace kt_moe {

enum class QuantFormat : int { int8_channel = 0, int4_group32 = 1 };

// "int8_channel" / "int4_group32"; parse throws std::invalid_argument naming the accepted names.
const char* quant_format_name(QuantFormat format);
QuantFormat parse_quant_format(const char* name);

// Columns per packed block. A call's column range [n0, n1) starts at a multiple of this and ends
// at a multiple of it or at N.
constexpr int kQuantColBlock = 16;

// ---- packed weights ------------------------------------------------------------------------
// The packed layout (the same for every ISA level): N padded to whole blocks of 16 columns (the
// padding is zero weight), one block after another, each block_bytes long, 64-byte aligned
// within the buffer. Inside a block the weights are "VNNI" quads: 64 bytes hold 4 consecutive k
// of each of the 16 columns (byte 4 c + i = column c, k = 4 j + i), which is one zmm for
// vpdpbusd and one row of an AMX B tile.
//   int8_channel  [scale fp32 x 16][groups of 64 k: 16 quads x 64 B of q + 128 (uint8)]; K is
//                 padded with q = 0 to a multiple of 64 (any K >= 1 is accepted).
//   int4_group32  [per group of 32 k: 4 x 64 B codes, 16 fp32 scales] x K/32, then the zeros
//                 [K/32][16] uint8 (padded to 64 B). Codes byte 4 c + i of the j-th 64 B holds
//                 k = 4 j + i in its low nibble and k = 16 + 4 j + i in its high nibble.
struct QuantWeightView {
  QuantFormat format = QuantFormat::int8_channel;
  int n = 0, k = 0;              // logical shape of W
  const uint8_t* data = nullptr;  // quant_weight_bytes(format, n, k) bytes, 64-byte aligned
};

// Bytes of the packed weight (throws for n < 1, k < 1, k % 32 != 0 with int4_group32).
int64_t quant_weight_bytes(QuantFormat format, int n, int k);
int64_t quant_block_bytes(QuantFormat format, int k);  // bytes of one 16-column block

// Pack the canonical format into dst (quant_weight_bytes bytes, 64-byte aligned). Leading
// dimensions are in elements of each array, so that a slice of a bigger tensor (a tensor-
// parallel part along N, or along K at a multiple of 32) packs in place.
//   q [n, k] (ld_q), scale [n]
void pack_int8_channel(const int8_t* q, int64_t ld_q, const float* scale, int n, int k, uint8_t* dst);
//   codes [n, k / 2] (ld_codes), scale [n, k / 32] (ld_scale), zero [n, k / 32] (ld_zero)
void pack_int4_group32(const uint8_t* codes, int64_t ld_codes, const float* scale, int64_t ld_scale,
                       const uint8_t* zero, int64_t ld_zero, int n, int k, uint8_t* dst);

// An owning packed weight (64-byte aligned heap memory). Engines that place memory themselves
// (NUMA) call quant_weight_bytes and the pack_* functions directly.
class QuantWeight {
 public:
  static QuantWeight int8_channel(const int8_t* q, int64_t ld_q, const float* scale, int n, int k);
  static QuantWeight int4_group32(const uint8_t* codes, int64_t ld_codes, const float* scale, int64_t ld_scale,
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
//   int8 q[k_padded] | fp32 scale[groups] at scale_offset | fp32 sum[groups] at sum_offset
struct QuantActLayout {
  int k = 0, group = 0, groups = 0, k_padded = 0;
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

// The kernel of `level` (amx_emulated included). Never null. The amx level sends calls with few
// rows (INT8: m < 5, INT4: m < 16) to the avx512_bf16 (VNNI) kernel: see gemm_quant_dispatch.cpp.
QuantGemmFn gemm_quant_kernel(IsaLevel level);

}  // namespace kt_moe
