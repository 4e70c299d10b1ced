// How the inference engine stores the experts' weights and multiplies by them, behind one interface
// so that the engine's routing, tasks and threading do not depend on the format. BF16
// (Bf16InferWeights) reads bf16 weights with the bf16 GEMM kernels; every registered weight format
// with quantized GEMM kernels (QuantInferWeights over formats/weight_format.hpp: AMXINT8's
// int8_channel, AMXINT4's int4_group16, ...) keeps them packed for those kernels
// (kernels/gemm_quant.hpp), which read int8-quantized activations: such a format converts each
// chunk's inputs once (convert_*), before the products read them. make_infer_weights() maps a
// method to its format through the registry.
//
// Both keep their experts in an ExpertStore (moe/expert_store.hpp): each expert split by
// intermediate slice over the pool's subpools (tensor parallel), slice s holding rows [s * Is,
// (s + 1) * Is) of gate and up and the same columns of down, Is = I / tp, in memory of the
// subpool's NUMA node.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/moe_config.hpp"
#include "cpu/cpu_features.hpp"
#include "kernels/gemm_bf16.hpp"
#include "kernels/gemm_quant.hpp"
#include "formats/weight_format.hpp"
#include "moe/buffer.hpp"
#include "moe/canonical_experts.hpp"
#include "moe/expert_slices.hpp"
#include "moe/expert_store.hpp"
#include "pool/worker_pool.hpp"

namespace kt_moe {

class InferWeights {
 public:
  virtual ~InferWeights() = default;

  virtual const char* format() const = 0;       // "bf16" or the registered format's name
  virtual int slice_size() const = 0;           // Is = I / tp
  virtual int loaded_count() const = 0;         // physical slots loaded so far
  virtual void check_slot(int slot) const = 0;  // std::invalid_argument unless 0 <= slot < E
  // Memory one expert holds, all slices together (scales and alignment included).
  virtual size_t resident_bytes_per_expert() const = 0;

  // Whether the products read their inputs in another form than bf16. If so the engine, for each
  // chunk of R routed rows, calls prepare_inputs(R), then, per slice s, convert_gate_up_input for
  // the rows of slice s's gathered x [R, H] and, once slice s's z [R, Is] is complete,
  // convert_down_input for its rows; both for disjoint row ranges [r0, r1) from several threads.
  // (The default: the products read bf16, nothing to convert.)
  virtual bool converts_inputs() const { return false; }
  virtual void prepare_inputs(int) {}
  virtual void convert_gate_up_input(IsaLevel, int, const bf16_t*, int, int) {}
  virtual void convert_down_input(IsaLevel, int, const bf16_t*, int, int) {}

  // Slice s, expert `slot`, the chunk's rows [b, b + n) (x: [R, H] bf16, slice s's copy of the
  // whole chunk), the slice's intermediate columns [c0, c0 + nc), with the kernels of `level`:
  //   g[m * ldc + c] = x[b + m, :] . W_gate[slot][begin + c, :]   and u likewise with W_up,
  // for m < n and c0 <= c < c0 + nc (g and u are indexed by the slice's column).
  virtual void gate_up(IsaLevel level, int s, int slot, const bf16_t* x, int b, int n, int c0, int nc, float* g,
                       float* u, int64_t ldc) const = 0;

  // Slice s's share of the down projection for rows [b, b + n) (z: [R, Is] bf16, the whole chunk),
  // hidden columns [h0, h0 + nh):
  //   y[m * ldy + h] = z[b + m, :] . W_down[slot][h, begin : begin + Is]   m < n, h0 <= h < h0 + nh.
  virtual void down(IsaLevel level, int s, int slot, const bf16_t* z, int b, int n, int h0, int nh, float* y,
                    int64_t ldy) const = 0;
};

// Method BF16: the experts as given, bf16, read in place by the bf16 GEMM kernels.
class Bf16InferWeights final : public InferWeights {
 public:
  Bf16InferWeights(const MOEConfig& config, WorkerPool& pool);

  const char* format() const override { return "bf16"; }
  int slice_size() const override { return slices_.slice_size(); }
  int loaded_count() const override { return slices_.loaded_count(); }
  void check_slot(int slot) const override { slices_.check_slot(slot); }
  size_t resident_bytes_per_expert() const override { return slices_.bytes_per_expert(); }

  // One expert (gate, up [I, H], down [H, I] bf16) into `slot`; see Bf16ExpertSlices::load.
  void load(int slot, const bf16_t* gate, const bf16_t* up, const bf16_t* down) { slices_.load(slot, gate, up, down); }

  void gate_up(IsaLevel level, int s, int slot, const bf16_t* x, int b, int n, int c0, int nc, float* g, float* u,
               int64_t ldc) const override;
  void down(IsaLevel level, int s, int slot, const bf16_t* z, int b, int n, int h0, int nh, float* y,
            int64_t ldy) const override;

 private:
  Bf16ExpertSlices slices_;
  int hidden_;
};

// The weights of a registered weight format (formats/weight_format.hpp), loaded from its canonical
// parts: QuantInferWeights (formats with packed GEMM kernels) and DequantInferWeights (formats read
// through their bf16 dequantizer).
class PartsInferWeights : public InferWeights {
 public:
  // The format of matrix `which` (the same for all three except where a method takes one per matrix).
  virtual const WeightFormat& weight_format(BaseMatrix which) const = 0;
  // One expert, each matrix whole in the format's canonical parts (gate and up W [I, H], down
  // W [H, I]; row strides in MatrixParts::ld), into `slot`, each subpool its own slice
  // (ExpertStore::load).
  virtual void load(int slot, const MatrixParts& gate, const MatrixParts& up, const MatrixParts& down) = 0;
};

// A registered weight format with quantized GEMM kernels: every expert's slices packed for them;
// the rows of x and z quantized once per chunk. Any H and I; a format whose packed K slices must
// start at multiples of k_slice_align (int4_group16: whole groups of 16) needs Is to be a multiple
// of it when there is more than one subpool (each slice is packed on its own, its K padded to 64).
class QuantInferWeights final : public PartsInferWeights {
 public:
  // std::invalid_argument when the format has no quantized GEMM kernels or its shape rules do not
  // hold for H and Is.
  QuantInferWeights(const MOEConfig& config, WorkerPool& pool, const WeightFormat& format);

  const char* format() const override { return format_.name; }
  const WeightFormat& weight_format(BaseMatrix) const override { return format_; }
  int slice_size() const override { return store_.slice_size(); }
  int loaded_count() const override { return store_.loaded_count(); }
  void check_slot(int slot) const override { store_.check_slot(slot); }
  size_t resident_bytes_per_expert() const override { return store_.bytes_per_expert(); }

  // Packs each slice of the expert for the format's kernels.
  void load(int slot, const MatrixParts& gate, const MatrixParts& up, const MatrixParts& down) override;

  bool converts_inputs() const override { return true; }
  void prepare_inputs(int rows) override;
  void convert_gate_up_input(IsaLevel level, int s, const bf16_t* x, int r0, int r1) override;
  void convert_down_input(IsaLevel level, int s, const bf16_t* z, int r0, int r1) override;

  void gate_up(IsaLevel level, int s, int slot, const bf16_t* x, int b, int n, int c0, int nc, float* g, float* u,
               int64_t ldc) const override;
  void down(IsaLevel level, int s, int slot, const bf16_t* z, int b, int n, int h0, int nh, float* y,
            int64_t ldy) const override;

 private:
  // Where the packed gate, up or down (which = 0, 1, 2) of expert `slot` lives in slice s, and
  // the view the kernels read.
  uint8_t* packed(int s, int slot, int which) const;
  QuantWeightView weight(int s, int slot, int which) const;
  // Packs rows [n0, n0 + n) and columns [k0, k0 + k) of m (a whole W [rows, cols]) into dst.
  void pack(const MatrixParts& m, int n0, int n, int k0, int k, uint8_t* dst) const;

  WeightFormat format_;
  const PackedFormat& packed_;
  ExpertStore store_;
  int64_t gate_bytes_, down_bytes_;  // of one packed [Is, H] and one packed [H, Is]
  QuantActLayout x_layout_, z_layout_;  // the records of a row of x (k = H) and of z (k = Is)
  struct Records {
    Buffer<uint8_t> x, z;  // [R] quantized rows of x and of z
  };
  std::vector<Records> records_;  // per slice
};

// A registered weight format without packed GEMM kernels but with a bf16 dequantizer (FP8,
// RAWINT4): the experts kept in their canonical parts (moe/canonical_experts.hpp), every product
// through dequantized row blocks and the bf16 GEMM of the level (moe/base_products.hpp), the inputs
// read as bf16.
class DequantInferWeights final : public PartsInferWeights {
 public:
  // One format per matrix (gate, up, down), or the same three times. std::invalid_argument when a
  // format has no bf16 dequantizer.
  DequantInferWeights(const MOEConfig& config, WorkerPool& pool, const std::array<WeightFormat, 3>& formats);

  // The format's name, or "gate,up,down" names when they differ.
  const char* format() const override { return name_.c_str(); }
  const WeightFormat& weight_format(BaseMatrix which) const override { return experts_.format(which); }
  int slice_size() const override { return experts_.slice_size(); }
  int loaded_count() const override { return experts_.loaded_count(); }
  void check_slot(int slot) const override { experts_.check_slot(slot); }
  size_t resident_bytes_per_expert() const override { return experts_.bytes_per_expert(); }
  const CanonicalExperts& experts() const { return experts_; }

  // Copies each slice's covering units of the canonical parts (CanonicalExperts::load).
  void load(int slot, const MatrixParts& gate, const MatrixParts& up, const MatrixParts& down) override {
    experts_.load(slot, gate, up, down);
  }

  void gate_up(IsaLevel level, int s, int slot, const bf16_t* x, int b, int n, int c0, int nc, float* g, float* u,
               int64_t ldc) const override;
  void down(IsaLevel level, int s, int slot, const bf16_t* z, int b, int n, int h0, int nh, float* y,
            int64_t ldy) const override;

 private:
  CanonicalExperts experts_;
  std::string name_;
  int hidden_;
};

// The weight storage of config.method: BF16, or the registered format that names the method
// (allocated per subpool). std::invalid_argument naming the method when it has none.
std::unique_ptr<InferWeights> make_infer_weights(const MOEConfig& config, WorkerPool& pool);

}  // namespace kt_moe
