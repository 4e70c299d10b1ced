// The SFT base weights per format (sft_base_weights.hpp) and the method -> format table.
#include "moe/sft_base_weights.hpp"

#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "pool/numa_topology.hpp"

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

namespace {

constexpr size_t kAlign = 64;

size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }
int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace

// One subpool's experts: per expert gate, up, down (values, scale, zero each), expert_bytes apart.
struct QuantSftBase::Slice {
  int begin = 0;
  Layout layouts[3];
  size_t expert_bytes = 0;
  uint8_t* data = nullptr;
  size_t bytes = 0;
  ~Slice() { numa_free(data, bytes); }
};

QuantSftBase::QuantSftBase(const MOESFTConfig& config, WorkerPool& pool, const Scheme& scheme)
    : scheme_(scheme), experts_(config.expert_num), hidden_(config.hidden_size),
      intermediate_(config.intermediate_size), pool_(pool) {
  const int tp = pool.subpool_count();
  slice_size_ = intermediate_ / tp;
  for (int s = 0; s < tp; ++s) {
    auto slice = std::make_unique<Slice>();
    slice->begin = s * slice_size_;
    size_t at = 0;
    for (int m = 0; m < 3; ++m) {
      Layout& l = slice->layouts[m];
      l = layout(slice->begin, BaseMatrix(m));
      const QuantMatrixView& v = l.view;
      l.values_at = at;
      at += aligned(size_t(v.rows) * v.ld_values);
      l.scale_at = at;  // int8_channel: fp32 [rows]; int4: fp16 [rows, ld_scale]
      at += aligned(scheme_.format == DequantFormat::int4 ? sizeof(fp16_t) * v.rows * v.ld_scale
                                                          : sizeof(float) * v.rows);
      l.zero_at = at;
      at += aligned(size_t(v.rows) * v.ld_zero);
    }
    slice->expert_bytes = at;
    slice->bytes = at * experts_;
    slice->data = static_cast<uint8_t*>(numa_alloc(slice->bytes, pool.subpool(s).node()));
    slices_.push_back(std::move(slice));
  }
  loaded_.assign(experts_, 0);
}

QuantSftBase::~QuantSftBase() = default;

QuantSftBase::Layout QuantSftBase::layout(int begin, BaseMatrix which) const {
  const bool down = which == BaseMatrix::down;
  const int Is = slice_size_;
  Layout l;
  QuantMatrixView& v = l.view;
  v.format = scheme_.format;
  v.rows = down ? hidden_ : Is;
  v.cols = down ? Is : hidden_;
  l.src_row0 = down ? 0 : begin;
  if (scheme_.format == DequantFormat::int8_channel) {
    v.ld_values = v.cols;
    l.src_k0 = down ? begin : 0;
    return l;
  }
  // int4: the whole groups covering the slice's inputs: all of gate's and up's, down's [g0, g1)
  const int G = scheme_.group;
  const int g0 = down ? begin / G : 0, g1 = down ? ceil_div(begin + Is, G) : ceil_div(hidden_, G);
  v.group = G;
  v.col0 = down ? begin - g0 * G : 0;
  v.ld_values = int64_t(g1 - g0) * G / 2;
  v.ld_scale = g1 - g0;
  v.ld_zero = scheme_.zero_point ? g1 - g0 : 0;
  l.src_k0 = g0 * G;
  return l;
}

void QuantSftBase::check_slot(int slot) const {
  if (slot < 0 || slot >= experts_)
    throw std::invalid_argument("expert slot " + std::to_string(slot) + " out of range [0, " +
                                std::to_string(experts_) + ")");
}

size_t QuantSftBase::resident_bytes_per_expert() const {
  size_t bytes = 0;
  for (const auto& slice : slices_) bytes += slice->expert_bytes;
  return bytes;
}

WeightView QuantSftBase::weight(int s, int slot, BaseMatrix which) const {
  const Slice& slice = *slices_[s];
  const Layout& l = slice.layouts[int(which)];
  const uint8_t* expert = slice.data + size_t(slot) * slice.expert_bytes;
  QuantMatrixView v = l.view;
  v.values = expert + l.values_at;
  if (scheme_.format == DequantFormat::int4)
    v.scale_fp16 = reinterpret_cast<const fp16_t*>(expert + l.scale_at);
  else
    v.scale = reinterpret_cast<const float*>(expert + l.scale_at);
  v.zero = v.ld_zero > 0 ? expert + l.zero_at : nullptr;
  return WeightView::of_quant(v);
}

void QuantSftBase::copy(const QuantParts& src, int src_cols, const Layout& l, uint8_t* expert) const {
  const QuantMatrixView& v = l.view;
  auto* values = expert + l.values_at;
  if (scheme_.format == DequantFormat::int8_channel) {
    const auto* q = static_cast<const uint8_t*>(src.values);
    for (int r = 0; r < v.rows; ++r)
      std::memcpy(values + r * v.ld_values, q + int64_t(l.src_row0 + r) * src_cols + l.src_k0, v.ld_values);
    std::memcpy(expert + l.scale_at, src.scale + l.src_row0, sizeof(float) * v.rows);
    return;
  }
  auto* scale = reinterpret_cast<fp16_t*>(expert + l.scale_at);
  const int G = scheme_.group, src_groups = ceil_div(src_cols, G);
  const int64_t src_bytes = int64_t(src_groups) * G / 2;
  const auto* codes = static_cast<const uint8_t*>(src.values);
  for (int r = 0; r < v.rows; ++r) {
    const int64_t row = l.src_row0 + r;
    std::memcpy(values + r * v.ld_values, codes + row * src_bytes + l.src_k0 / 2, v.ld_values);
    std::memcpy(scale + r * v.ld_scale, src.scale_fp16 + row * src_groups + l.src_k0 / G, sizeof(fp16_t) * v.ld_scale);
    if (v.ld_zero > 0)
      std::memcpy(expert + l.zero_at + r * v.ld_zero, src.zero + row * src_groups + l.src_k0 / G, v.ld_zero);
  }
}

void QuantSftBase::load(int slot, const QuantParts& gate, const QuantParts& up, const QuantParts& down) {
  check_slot(slot);
  const bool int4 = scheme_.format == DequantFormat::int4;
  for (const QuantParts* m : {&gate, &up, &down})
    if (!m->values || (int4 ? !m->scale_fp16 : !m->scale))
      throw std::invalid_argument(std::string(scheme_.name) + " needs the values and the " +
                                  (int4 ? "fp16 scale" : "fp32 scale") + " of every matrix");
  if (scheme_.zero_point && (!gate.zero || !up.zero || !down.zero))
    throw std::invalid_argument(std::string(scheme_.name) + " with zero points needs the zero part of every matrix");
  pool_.for_each_subpool([&](int s) {
    const Slice& slice = *slices_[s];
    uint8_t* expert = slice.data + size_t(slot) * slice.expert_bytes;
    copy(gate, hidden_, slice.layouts[0], expert);
    copy(up, hidden_, slice.layouts[1], expert);
    copy(down, intermediate_, slice.layouts[2], expert);
  });
  if (!loaded_[slot]) {
    loaded_[slot] = 1;
    ++loaded_count_;
  }
}

// ---- method -> format ----------------------------------------------------------------------

std::unique_ptr<SftBaseWeights> make_sft_base_weights(const MOESFTConfig& config, WorkerPool& pool) {
  const std::string& m = config.method;
  if (m == "AMXBF16_SFT") return std::make_unique<Bf16SftBase>(config, pool);
  if (m == "AMXINT8_SFT")
    return std::make_unique<QuantSftBase>(config, pool,
                                          QuantSftBase::Scheme{DequantFormat::int8_channel, 0, false, "int8_channel"});
  if (m == "AMXINT4_SFT")
    return std::make_unique<QuantSftBase>(config, pool,
                                          QuantSftBase::Scheme{DequantFormat::int4, 16, true, "int4_group16"});
  if (m == "AMXINT4_KGroup_SFT") {
    const int G = config.group_size;
    if (G != 32 && G != 64 && G != 128)
      throw std::invalid_argument("MOESFTConfig.group_size must be 32, 64 or 128 for AMXINT4_KGroup_SFT, got " +
                                  std::to_string(G));
    return std::make_unique<QuantSftBase>(
        config, pool, QuantSftBase::Scheme{DequantFormat::int4, G, config.zero_point, "int4_kgroup"});
  }
  throw std::invalid_argument("the SFT engine has no base format for method '" + m +
                              "' (it runs AMXBF16_SFT, AMXINT8_SFT, AMXINT4_SFT and AMXINT4_KGroup_SFT)");
}

}  // namespace kt_moe
