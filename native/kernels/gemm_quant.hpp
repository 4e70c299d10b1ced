// The quantized GEMM family of the inference engine: weights packed once at load in a format's own
// layout (a PackedFormat: int8_channel, int4_group16, ...; native/formats/ defines them and
// docs/design.md says how to add one) times int8-quantized activations, fp32 out, behind one entry
// per ISA level. Every level of a format reads the same packed bytes (switching the ISA level never
// repacks); activations are quantized once per call site (quantize_activations) and may then be
// read by any number of products, gathered by row index.
//
// What all packed formats share: the weight W [N, K] (N output channels, K inputs, as Hugging Face
// stores it) is cut into blocks of 16 columns (N padded to whole blocks, the padding zero weight),
// each block_bytes(K) long and 64-byte aligned within the buffer, K padded to a multiple of 64.
// Inside a block the weights are "VNNI" quads: 64 bytes hold 4 consecutive k of each of the 16
// columns (byte 4 c + i = column c, k = 4 j + i), which is one zmm for vpdpbusd and one row of an
// AMX B tile. How scales and codes sit around the quads is the format's (its layout.hpp).
//
// Activation quantization (one semantics at every level and for every format): row m of a bf16
// [M, K] is cut into groups of 64 consecutive k, the last group padded with zeros. Per group: amax
// = max |a|; if amax < FLT_MIN (zeros or only denormals) scale = 0 and q = 0; if the group holds an
// Inf or a NaN, scale = NaN and q = 0 (the row's products are NaN, as the unquantized ones would be
// non-finite); else scale = amax / 127 and q[k] = round_half_even(a[k] * (127 / amax)) (in [-127,
// 127], fp32 arithmetic). Sums of q (exact integers, kept as fp32) per `sum_group` k, the format's
// choice (64, 32 or 16: a weight format with zero points needs them per its group).
// Why groups of 64: relative L2 error of a DeepSeek-V2-Lite expert MLP against fp32 is 0.020 for
// INT8 with G = 64 and 0.018 with G = 32 (per token: 0.029), both well inside the 3e-2 bar; the
// INT4 error is the weights'. G = 64 halves the per-group fp32 work, which is what bounds the AMX
// prefill (one 64-byte tile row per group) and the scale traffic of the decode.
// Every format's product is dequant(a) . dequant(W)^T with dequant(a)[k] = a_q[k] * a_s[k / 64],
// computed from exact int32 dot products; its layout.hpp gives the fp32 order per level.
//
// Each call is single-threaded: the engine splits N (column ranges, whole blocks of
// kQuantColBlock) and M (row ranges or gathered row lists) across its threads. Nothing here
// aborts: bad arguments throw std::invalid_argument (ValueError in Python).
#pragma once

#include <cstdint>
#include <memory>

#include "cpu/cpu_features.hpp"
#include "kernels/by_level.hpp"
#include "kernels/gemm_bf16.hpp"
#include "kernels/matrix_parts.hpp"

namespace kt_moe {

// Columns per packed block. A call's column range [n0, n1) starts at a multiple of this and ends
// at a multiple of it or at N.
constexpr int kQuantColBlock = 16;

struct QuantGemmArgs;
using QuantGemmFn = void (*)(const QuantGemmArgs&);

// A packed weight format of this family: the packer and the kernel of every ISA level.
struct PackedFormat {
  const char* name;
  int act_sum_group;  // k per activation sum its products read (64, 32 or 16)
  int amx_min_rows;   // the amx level runs the avx512_bf16 kernel for fewer rows (the decode)
  int k_slice_align;  // a slice along K that starts inside W must start at a multiple of this
  int64_t (*block_bytes)(int k);  // one 16-column block (k >= 1)
  // Packs W [n, k] given as its canonical parts (formats/<name>/layout.hpp; a slice of a larger
  // matrix points at its first row and column) into dst, quant_weight_bytes bytes, 64-byte aligned.
  void (*pack)(const MatrixParts& src, int n, int k, uint8_t* dst);
  ByLevel<QuantGemmFn> kernels;  // a generic entry at least; the amx entry is the AMX tile kernel
};

// ---- packed weights ------------------------------------------------------------------------
struct QuantWeightView {
  const PackedFormat* format = nullptr;
  int n = 0, k = 0;              // logical shape of W
  const uint8_t* data = nullptr;  // quant_weight_bytes(*format, n, k) bytes, 64-byte aligned
};

// Bytes of the packed weight (throws for n < 1 or k < 1).
int64_t quant_weight_bytes(const PackedFormat& format, int n, int k);

// An owning packed weight (64-byte aligned heap memory). Engines that place memory themselves
// (NUMA) call quant_weight_bytes and format.pack directly.
class QuantWeight {
 public:
  static QuantWeight pack(const PackedFormat& format, const MatrixParts& src, int n, int k);
  QuantWeightView view() const { return {format_, n_, k_, data_.get()}; }
  int64_t bytes() const { return bytes_; }  // memory held, for memory reporting

 private:
  QuantWeight(const PackedFormat& format, int n, int k);
  struct Free {
    void operator()(uint8_t* p) const;
  };
  const PackedFormat* format_;
  int n_, k_;
  int64_t bytes_;
  std::unique_ptr<uint8_t, Free> data_;
};

// ---- quantized activations -----------------------------------------------------------------
// One quantized row is a record of row_bytes (a multiple of 64):
//   int8 q[k_padded] | fp32 scale[groups] at scale_offset | fp32 sum[sums] at sum_offset
// group = 64 k per scale; sum_group = k per sum (the format's act_sum_group).
struct QuantActLayout {
  int k = 0, group = 0, groups = 0, k_padded = 0, sum_group = 0, sums = 0;
  int64_t scale_offset = 0, sum_offset = 0, row_bytes = 0;
};
// Throws like quant_weight_bytes, and for a sum_group other than 64, 32 or 16.
QuantActLayout quant_act_layout(int sum_group, int k);
inline QuantActLayout quant_act_layout(const PackedFormat& format, int k) {
  return quant_act_layout(format.act_sum_group, k);
}

// Records of quantized rows: row r at data + r * stride (stride >= row_bytes, a multiple of 4).
// 64-byte aligned records (data and stride) let the AMX kernel copy whole cache lines into its tiles.
struct QuantActView {
  const PackedFormat* format = nullptr;
  int rows = 0, k = 0;
  const uint8_t* data = nullptr;
  int64_t stride = 0;
};

// out record r = quantized row r of a bf16 [m, k] (row stride lda elements), with sums per sum_group
// k (a format's act_sum_group: 64, 32 or 16).
struct QuantizeArgs {
  int sum_group = 0;
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

// Throws std::invalid_argument describing the first violated rule above. Every kernel calls it.
void validate_quant_gemm(const QuantGemmArgs& args);

// The product at `level` (amx_emulated included) for the format of args.w. Never null. The amx
// level sends calls with fewer than format.amx_min_rows rows to the format's avx512_bf16 kernel.
QuantGemmFn gemm_quant_kernel(IsaLevel level);

}  // namespace kt_moe
