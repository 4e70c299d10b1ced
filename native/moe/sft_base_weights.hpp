// The SFT engine's frozen base weights in the format of its method, split by intermediate slice
// over the pool's subpools (tensor parallel: slice s holds rows [s Is, (s + 1) Is) of gate and up
// and the same columns of down, Is = I / tp, in memory of the subpool's NUMA node):
//   AMXBF16_SFT         bf16 (Bf16ExpertSlices)
//   AMXINT8_SFT         int8_channel: q int8 and an fp32 scale per output row
//   AMXINT4_SFT         int4 groups of 16 inputs with zero points (int4_group16)
//   AMXINT4_KGroup_SFT  int4 groups of group_size (32, 64, 128), with or without zero points (int4_kgroup)
// The int4 groups keep their canonical parts as they are: codes (two per byte), an fp16 scale and, with
// zero points, a uint8 zero point in sixteenths of a code per group (kernels/dequant_bf16.hpp).
// Only the quantized weights are held: the backward reads them row block by row block through
// moe/base_products (no transposed copy). A quantized down slice keeps, per row, the whole groups
// that cover its columns, so it dequantizes to exactly the columns of the whole dequantized matrix
// for any I and tp (that costs at most two partial groups per row and slice).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "config/moe_config.hpp"
#include "kernels/dequant_bf16.hpp"
#include "moe/base_products.hpp"
#include "moe/expert_slices.hpp"
#include "moe/quant_parts.hpp"
#include "pool/worker_pool.hpp"

namespace kt_moe {

enum class BaseMatrix : int { gate = 0, up = 1, down = 2 };

class SftBaseWeights {
 public:
  virtual ~SftBaseWeights() = default;

  // "bf16", "int8_channel", "int4_group16" or "int4_kgroup" (kt_moe.quant's scheme names).
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

// The quantized bases.
class QuantSftBase final : public SftBaseWeights {
 public:
  // How the weights are quantized: int8_channel (group 0, no zero points) or int4 groups.
  struct Scheme {
    DequantFormat format;
    int group;
    bool zero_point;
    const char* name;
  };

  QuantSftBase(const MOESFTConfig& config, WorkerPool& pool, const Scheme& scheme);
  ~QuantSftBase() override;

  const Scheme& scheme() const { return scheme_; }
  const char* format() const override { return scheme_.name; }
  int loaded_count() const override { return loaded_count_; }
  void check_slot(int slot) const override;
  size_t resident_bytes_per_expert() const override;
  WeightView weight(int s, int slot, BaseMatrix which) const override;

  // One expert in the canonical parts (moe/quant_parts.hpp) of gate, up (W [I, H]) and down
  // (W [H, I]) into `slot`, each subpool copying its own slice. Runs for_each_subpool on the calling
  // thread, like Bf16ExpertSlices::load. std::invalid_argument when a part the scheme needs is null
  // (values; scale for int8_channel, scale_fp16 for int4; zero with zero points).
  void load(int slot, const QuantParts& gate, const QuantParts& up, const QuantParts& down);

 private:
  // Where one matrix of an expert lives in its slice's block and how it is read (a QuantMatrixView
  // without the pointers), plus the first row and stored column of the whole matrix it holds.
  struct Layout {
    QuantMatrixView view;  // pointers are offsets from the expert's block
    size_t values_at = 0, scale_at = 0, zero_at = 0;
    int src_row0 = 0, src_k0 = 0;
  };
  struct Slice;
  Layout layout(int begin, BaseMatrix which) const;
  void copy(const QuantParts& src, int src_cols, const Layout& l, uint8_t* expert) const;

  Scheme scheme_;
  int experts_, hidden_, intermediate_, slice_size_;
  WorkerPool& pool_;
  std::vector<std::unique_ptr<Slice>> slices_;
  std::vector<char> loaded_;
  std::atomic<int> loaded_count_{0};  // written by loads on the dispatcher, read by callers
};

// The base of config.method; std::invalid_argument naming the method when it has none, or for a
// group_size int4_kgroup does not take.
std::unique_ptr<SftBaseWeights> make_sft_base_weights(const MOESFTConfig& config, WorkerPool& pool);

}  // namespace kt_moe
