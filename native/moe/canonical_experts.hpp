// Every expert of a layer kept in its weight format's canonical parts (formats/weight_format.hpp),
// in an ExpertStore (one slice per subpool, tensor parallel), read through the format's bf16
// dequantizer: the storage of every engine that multiplies by dequantized row blocks
// (moe/base_products.hpp): the SFT engine's quantized bases and the inference engine's formats
// without packed kernels (FP8, RAWINT4). A slice keeps, per part, the whole units (groups, blocks)
// that cover its rows and columns (formats/part_slices.hpp), so it dequantizes to exactly the
// matching rows and columns of the whole dequantized matrix for any I and tp (at most two partial
// units per row and slice). The parts are kept as given: one expert's bytes are the checkpoint's
// bytes for it plus the 64-byte alignment of each part.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "formats/part_slices.hpp"
#include "formats/weight_format.hpp"
#include "kernels/dequant_bf16.hpp"
#include "moe/expert_store.hpp"
#include "pool/worker_pool.hpp"

namespace kt_moe {

enum class BaseMatrix : int { gate = 0, up = 1, down = 2 };

class CanonicalExperts {
 public:
  // One format per matrix (gate, up, down: a GGUF file's Q4_K gate and up with a Q6_K down), or one
  // for all three. std::invalid_argument when a format has no bf16 dequantizer, or like ExpertStore.
  CanonicalExperts(const std::array<WeightFormat, 3>& formats, int experts, int hidden, int intermediate,
                   WorkerPool& pool);
  CanonicalExperts(const WeightFormat& format, int experts, int hidden, int intermediate, WorkerPool& pool)
      : CanonicalExperts({format, format, format}, experts, hidden, intermediate, pool) {}

  const WeightFormat& format(BaseMatrix which) const { return formats_[int(which)]; }
  int slice_size() const { return store_.slice_size(); }
  int slice_count() const { return store_.slice_count(); }
  int loaded_count() const { return store_.loaded_count(); }
  void check_slot(int slot) const { store_.check_slot(slot); }
  size_t bytes_per_expert() const { return store_.bytes_per_expert(); }

  // Expert `slot`'s matrix in slice s (gate, up [Is, H]; down [H, Is]) as its dequantizer reads it:
  // parts 0, 1 and 2 are the values, the scale and the zero point (kernels/dequant_bf16.hpp); a
  // format of one part (GGUF blocks) has its scales inside the values.
  QuantMatrixView view(int s, int slot, BaseMatrix which) const;

  // Expert `slot`'s matrix in slice s as stored: each part's covered units, row-major, in part order
  // (their shapes: MatrixSlice of the slice's layout; a test hook).
  std::vector<std::vector<uint8_t>> stored_parts(int s, int slot, BaseMatrix which) const;

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
  void copy(const MatrixParts& src, BaseMatrix which, const Layout& l, uint8_t* expert) const;

  std::array<WeightFormat, 3> formats_;  // gate, up, down
  ExpertStore store_;
  std::vector<std::array<Layout, 3>> layouts_;  // per slice: gate, up, down
};

}  // namespace kt_moe
