// The SFT base weights (sft_base_weights.hpp): bf16, the registered quantized formats, and the
// method -> format lookup.
#include "moe/sft_base_weights.hpp"

#include <stdexcept>
#include <string>

namespace kt_moe {

// ---- bf16 ----------------------------------------------------------------------------------

Bf16SftBase::Bf16SftBase(const MOESFTConfig& config, WorkerPool& pool)
    : slices_(config.expert_num, config.hidden_size, config.intermediate_size, pool), hidden_(config.hidden_size),
      intermediate_(config.intermediate_size) {}

size_t Bf16SftBase::resident_bytes_per_expert() const { return slices_.bytes_per_expert(); }

WeightView Bf16SftBase::weight(int s, int slot, BaseMatrix which) const {
  const int H = hidden_, Is = slices_.slice_size();
  switch (which) {
    case BaseMatrix::gate: return WeightView::of_bf16(slices_.gate(s, slot), Is, H, slices_.gate_ld());
    case BaseMatrix::up: return WeightView::of_bf16(slices_.up(s, slot), Is, H, slices_.gate_ld());
    case BaseMatrix::down: break;
  }
  return WeightView::of_bf16(slices_.down(s, slot), H, Is, slices_.down_ld());
}

// ---- quantized -----------------------------------------------------------------------------

QuantSftBase::QuantSftBase(const MOESFTConfig& config, WorkerPool& pool, const WeightFormat& format)
    : experts_(format, config.expert_num, config.hidden_size, config.intermediate_size, pool) {}

// ---- method -> format ----------------------------------------------------------------------

std::unique_ptr<SftBaseWeights> make_sft_base_weights(const MOESFTConfig& config, WorkerPool& pool) {
  const std::string& m = config.method;
  if (m == "AMXBF16_SFT") return std::make_unique<Bf16SftBase>(config, pool);
  if (!config.base_format.empty()) {
    for (const FormatEntry& e : weight_format_entries())
      for (const std::string& method : e.checkpoint_sft_methods)
        if (config.base_format == e.name && method == m)
          return std::make_unique<QuantSftBase>(config, pool, e.make({config.group_size, config.zero_point}));
    throw std::invalid_argument("method " + m + " does not keep its base in format '" + config.base_format + "'");
  }
  if (const FormatEntry* entry = weight_format_entry_for_method(m, true))
    return std::make_unique<QuantSftBase>(config, pool, entry->make({config.group_size, config.zero_point}));
  throw std::invalid_argument("the SFT engine has no base format for method '" + m + "' (it runs " +
                              weight_format_methods(true, "AMXBF16_SFT") + ")");
}

}  // namespace kt_moe
