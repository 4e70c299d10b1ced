// The SFT engine's frozen base weights in the format of its method, in an ExpertStore
// (moe/expert_store.hpp: split by intermediate slice over the pool's subpools, tensor parallel):
//   AMXBF16_SFT  bf16 (Bf16ExpertSlices)
//   otherwise    the registered weight format whose sft_methods name the method
//                (formats/registry.cpp: AMXINT8_SFT int8_channel, AMXINT4_SFT int4_group16,
//                AMXINT4_KGroup_SFT int4_kgroup of group_size with or without zero points), kept in
//                its canonical parts as they are and read through its bf16 dequantizer
// Only the quantized weights are held (moe/canonical_experts.hpp): the backward reads them row block
// by row block through moe/base_products (no transposed copy).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "config/moe_config.hpp"
#include "formats/weight_format.hpp"
#include "kernels/dequant_bf16.hpp"
#include "moe/base_products.hpp"
#include "moe/canonical_experts.hpp"
#include "moe/expert_slices.hpp"
#include "pool/worker_pool.hpp"

namespace kt_moe {

class SftBaseWeights {
 public:
  virtual ~SftBaseWeights() = default;

  // "bf16" or the registered format's name (kt_moe.quant's scheme names).
  virtual const char* format() const = 0;
  virtual int loaded_count() const = 0;
  virtual void check_slot(int slot) const = 0;  // std::invalid_argument unless 0 <= slot < E
  // Memory one expert's base holds, all slices together (scales, zero points and alignment included).
  virtual size_t resident_bytes_per_expert() const = 0;
  // Expert `slot`'s matrix in slice s: gate, up [Is, H]; down [H, Is].
  virtual WeightView weight(int s, int slot, BaseMatrix which) const = 0;
};

// AMXBF16_SFT: the bf16 experts as given.
class Bf16SftBase final : public SftBaseWeights {
 public:
  Bf16SftBase(const MOESFTConfig& config, WorkerPool& pool);
  const char* format() const override { return "bf16"; }
  int loaded_count() const override { return slices_.loaded_count(); }
  void check_slot(int slot) const override { slices_.check_slot(slot); }
  size_t resident_bytes_per_expert() const override;
  WeightView weight(int s, int slot, BaseMatrix which) const override;

  // One expert (gate, up [I, H], down [H, I] bf16) into `slot`; see Bf16ExpertSlices::load.
  void load(int slot, const bf16_t* gate, const bf16_t* up, const bf16_t* down) { slices_.load(slot, gate, up, down); }

 private:
  Bf16ExpertSlices slices_;
  int hidden_, intermediate_;
};

// The quantized bases: any registered format with a bf16 dequantizer, in its canonical parts.
class QuantSftBase final : public SftBaseWeights {
 public:
  // std::invalid_argument when the format has no bf16 dequantizer.
  QuantSftBase(const MOESFTConfig& config, WorkerPool& pool, const WeightFormat& format);

  const WeightFormat& weight_format() const { return experts_.format(BaseMatrix::gate); }  // one for all three
  const CanonicalExperts& experts() const { return experts_; }
  const char* format() const override { return weight_format().name; }
  int loaded_count() const override { return experts_.loaded_count(); }
  void check_slot(int slot) const override { experts_.check_slot(slot); }
  size_t resident_bytes_per_expert() const override { return experts_.bytes_per_expert(); }
  WeightView weight(int s, int slot, BaseMatrix which) const override {
    return WeightView::of_quant(experts_.view(s, slot, which));
  }

  // One expert in the format's canonical parts; see CanonicalExperts::load.
  void load(int slot, const MatrixParts& gate, const MatrixParts& up, const MatrixParts& down) {
    experts_.load(slot, gate, up, down);
  }

 private:
  CanonicalExperts experts_;
};

// The base of config.method; std::invalid_argument naming the method when it has none, or for
// options (group_size) its format does not take.
std::unique_ptr<SftBaseWeights> make_sft_base_weights(const MOESFTConfig& config, WorkerPool& pool);

}  // namespace kt_moe
