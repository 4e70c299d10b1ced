// The SFT engine's frozen base weights in the format of its method, in an ExpertStore
// (moe/expert_store.hpp: split by intermediate slice over the pool's subpools, tensor parallel):
//   AMXBF16_SFT  bf16 (Bf16ExpertSlices)
//   otherwise    the registered weight format whose sft_methods name the method
//                (formats/registry.cpp: AMXINT8_SFT int8_channel, AMXINT4_SFT int4_group16,
//                AMXINT4_KGroup_SFT int4_kgroup of group_size with or without zero points), kept in
//                its canonical parts as they are and read through its bf16 dequantizer
// Only the quantized weights are held: the backward reads them row block by row block through
// moe/base_products (no transposed copy). A quantized slice keeps, per part, the whole units (groups)
// that cover its rows and columns (formats/part_slices.hpp), so it dequantizes to exactly the
// columns of the whole dequantized matrix for any I and tp (that costs at most two partial groups
// per row and slice).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "config/moe_config.hpp"
#include "formats/part_slices.hpp"
#include "formats/weight_format.hpp"
#include "kernels/dequant_bf16.hpp"
#include "moe/base_products.hpp"
#include "moe/expert_slices.hpp"
#include "moe/expert_store.hpp"
#include "pool/worker_pool.hpp"

namespace kt_moe {

enum class BaseMatrix : int { gate = 0, up = 1, down = 2 };

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

// The quantized bases: any registered format with a bf16 dequantizer.
class QuantSftBase final : public SftBaseWeights {
 public:
  // std::invalid_argument when the format has no bf16 dequantizer.
  QuantSftBase(const MOESFTConfig& config, WorkerPool& pool, const WeightFormat& format);

  const WeightFormat& weight_format() const { return format_; }
  const char* format() const override { return format_.name; }
  int loaded_count() const override { return store_.loaded_count(); }
  void check_slot(int slot) const override { store_.check_slot(slot); }
  size_t resident_bytes_per_expert() const override { return store_.bytes_per_expert(); }
  WeightView weight(int s, int slot, BaseMatrix which) const override;

  // One expert, each matrix whole in the format's canonical parts (gate, up W [I, H], down W [H, I];
  // row strides in MatrixParts::ld) into `slot`, each subpool copying its own slice
  // (ExpertStore::load). std::invalid_argument when a part is null.
  void load(int slot, const MatrixParts& gate, const MatrixParts& up, const MatrixParts& down);

 private:
  // One matrix of an expert in a slice: the covered part slices and where each part's rows start
  // in the expert's bytes (64-byte aligned), with their row strides (elements).
  struct Layout {
    int rows = 0, cols = 0;  // the slice's logical shape
    MatrixSlice slice;
    size_t at[kMaxMatrixParts] = {};
    int64_t ld[kMaxMatrixParts] = {};
  };
  Layout layout(int begin, BaseMatrix which, size_t& at) const;
  void copy(const MatrixParts& src, const Layout& l, uint8_t* expert) const;

  WeightFormat format_;
  const DequantFormat& dequant_;
  ExpertStore store_;
  std::vector<std::array<Layout, 3>> layouts_;  // per slice: gate, up, down
};

// The base of config.method; std::invalid_argument naming the method when it has none, or for
// options (group_size) its format does not take.
std::unique_ptr<SftBaseWeights> make_sft_base_weights(const MOESFTConfig& config, WorkerPool& pool);

}  // namespace kt_moe
