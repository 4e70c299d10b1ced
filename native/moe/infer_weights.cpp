// The inference weight formats (BF16, AMXINT8, AMXINT4) and the method -> format table.
#include "moe/infer_weights.hpp"

#include <stdexcept>
#include <string>

#include "moe/gemm_calls.hpp"
#include "pool/numa_topology.hpp"

namespace kt_moe {

// ---- BF16 ----------------------------------------------------------------------------------

Bf16InferWeights::Bf16InferWeights(const MOEConfig& config, WorkerPool& pool)
    : slices_(config.expert_num, config.hidden_size, config.intermediate_size, pool), hidden_(config.hidden_size) {}

void Bf16InferWeights::gate_up(IsaLevel level, int s, int slot, const bf16_t* x, int b, int n, int c0, int nc,
                               float* g, float* u, int64_t ldc) const {
  const GemmFn gemm = gemm_bf16_kernel(level);
  const int H = hidden_;
  const int64_t ld = slices_.gate_ld();
  const bf16_t* rows = x + size_t(b) * H;
  gemm_nt(gemm, n, nc, H, rows, H, slices_.gate(s, slot) + c0 * ld, ld, g + c0, ldc);
  gemm_nt(gemm, n, nc, H, rows, H, slices_.up(s, slot) + c0 * ld, ld, u + c0, ldc);
}

void Bf16InferWeights::down(IsaLevel level, int s, int slot, const bf16_t* z, int b, int n, int h0, int nh, float* y,
                            int64_t ldy) const {
  const int Is = slices_.slice_size();
  const int64_t ld = slices_.down_ld();
  gemm_nt(gemm_bf16_kernel(level), n, nh, Is, z + size_t(b) * Is, Is, slices_.down(s, slot) + h0 * ld, ld, y + h0, ldy);
}

// ---- AMXINT8 / AMXINT4 -----------------------------------------------------------------------

// One subpool's packed experts: per expert gate [Is, H], up [Is, H], down [H, Is], one after another.
struct QuantInferWeights::Slice {
  int begin = 0;
  uint8_t* data = nullptr;
  size_t bytes = 0;
  ~Slice() { numa_free(data, bytes); }
};

QuantInferWeights::QuantInferWeights(const MOEConfig& config, WorkerPool& pool, QuantFormat format)
    : format_(format), experts_(config.expert_num), hidden_(config.hidden_size),
      intermediate_(config.intermediate_size), pool_(pool) {
  const int tp = pool.subpool_count();
  slice_size_ = intermediate_ / tp;
  // down's inputs are cut into the slices: at whole canonical groups of 16 for int4_group16 (each
  // slice is packed on its own, its K padded to the 64-k unit)
  if (format == QuantFormat::int4_group16 && tp > 1 && slice_size_ % quant_layout::kInt4Group != 0)
    throw std::invalid_argument("int4_group16 weights are split across subpools at whole groups of " +
                                std::to_string(quant_layout::kInt4Group) + " inputs: moe_intermediate_size / threadpool_count (" +
                                std::to_string(slice_size_) + ") must be a multiple of " +
                                std::to_string(quant_layout::kInt4Group) + " when threadpool_count > 1");
  gate_bytes_ = quant_weight_bytes(format, slice_size_, hidden_);
  down_bytes_ = quant_weight_bytes(format, hidden_, slice_size_);
  const size_t expert_bytes = size_t(2 * gate_bytes_ + down_bytes_);
  for (int s = 0; s < tp; ++s) {
    auto slice = std::make_unique<Slice>();
    slice->begin = s * slice_size_;
    slice->bytes = expert_bytes * experts_;
    slice->data = static_cast<uint8_t*>(numa_alloc(slice->bytes, pool.subpool(s).node()));
    slices_.push_back(std::move(slice));
  }
  loaded_.assign(experts_, 0);
  x_layout_ = quant_act_layout(format, hidden_);
  z_layout_ = quant_act_layout(format, slice_size_);
  records_.resize(tp);
}

QuantInferWeights::~QuantInferWeights() = default;

void QuantInferWeights::check_slot(int slot) const {
  if (slot < 0 || slot >= experts_)
    throw std::invalid_argument("expert slot " + std::to_string(slot) + " out of range [0, " +
                                std::to_string(experts_) + ")");
}

uint8_t* QuantInferWeights::packed(int s, int slot, int which) const {
  return slices_[s]->data + size_t(slot) * size_t(2 * gate_bytes_ + down_bytes_) + which * gate_bytes_;
}

QuantWeightView QuantInferWeights::weight(int s, int slot, int which) const {
  if (which == 2) return {format_, hidden_, slice_size_, packed(s, slot, 2)};
  return {format_, slice_size_, hidden_, packed(s, slot, which)};
}

void QuantInferWeights::pack(const Matrix& m, int cols, int n0, int n, int k0, int k, uint8_t* dst) const {
  if (format_ == QuantFormat::int8_channel) {
    pack_int8_channel(static_cast<const int8_t*>(m.values) + int64_t(n0) * cols + k0, cols, m.scale + n0, n, k, dst);
    return;
  }
  // int4_group16: the canonical rows hold ceil(cols / 16) groups; k0 is 0 or a slice start, a
  // multiple of 16 (checked at construction)
  const int64_t groups = (cols + quant_layout::kInt4Group - 1) / quant_layout::kInt4Group, g0 = k0 / quant_layout::kInt4Group;
  const int64_t ld_codes = groups * quant_layout::kInt4Group / 2;
  pack_int4_group16(static_cast<const uint8_t*>(m.values) + n0 * ld_codes + k0 / 2, ld_codes,
                    m.scale_fp16 + n0 * groups + g0, groups, m.zero + n0 * groups + g0, groups, n, k, dst);
}

void QuantInferWeights::load(int slot, const Matrix& gate, const Matrix& up, const Matrix& down) {
  check_slot(slot);
  const int H = hidden_, I = intermediate_, Is = slice_size_;
  pool_.for_each_subpool([&](int s) {
    const int begin = slices_[s]->begin;
    pack(gate, H, begin, Is, 0, H, packed(s, slot, 0));
    pack(up, H, begin, Is, 0, H, packed(s, slot, 1));
    pack(down, I, 0, H, begin, Is, packed(s, slot, 2));
  });
  if (!loaded_[slot]) {
    loaded_[slot] = 1;
    ++loaded_count_;
  }
}

void QuantInferWeights::prepare_inputs(int rows) {
  for (Records& r : records_) {
    r.x.ensure(size_t(rows) * x_layout_.row_bytes);
    r.z.ensure(size_t(rows) * z_layout_.row_bytes);
  }
}

void QuantInferWeights::convert_gate_up_input(IsaLevel level, int s, const bf16_t* x, int r0, int r1) {
  quantize_activations_kernel(level)({format_, r1 - r0, hidden_, x + size_t(r0) * hidden_, hidden_,
                                      records_[s].x.data() + r0 * x_layout_.row_bytes, x_layout_.row_bytes});
}

void QuantInferWeights::convert_down_input(IsaLevel level, int s, const bf16_t* z, int r0, int r1) {
  const int Is = slice_size_;
  quantize_activations_kernel(level)({format_, r1 - r0, Is, z + size_t(r0) * Is, Is,
                                      records_[s].z.data() + r0 * z_layout_.row_bytes, z_layout_.row_bytes});
}

void QuantInferWeights::gate_up(IsaLevel level, int s, int slot, const bf16_t*, int b, int n, int c0, int nc,
                                float* g, float* u, int64_t ldc) const {
  const QuantGemmFn gemm = gemm_quant_kernel(level);
  const QuantActView a{format_, n, hidden_, records_[s].x.data() + b * x_layout_.row_bytes, x_layout_.row_bytes};
  gemm({weight(s, slot, 0), a, n, nullptr, c0, c0 + nc, g, ldc, false});
  gemm({weight(s, slot, 1), a, n, nullptr, c0, c0 + nc, u, ldc, false});
}

void QuantInferWeights::down(IsaLevel level, int s, int slot, const bf16_t*, int b, int n, int h0, int nh, float* y,
                             int64_t ldy) const {
  const QuantActView a{format_, n, slice_size_, records_[s].z.data() + b * z_layout_.row_bytes,
                       z_layout_.row_bytes};
  gemm_quant_kernel(level)({weight(s, slot, 2), a, n, nullptr, h0, h0 + nh, y, ldy, false});
}

// ---- method -> format ------------------------------------------------------------------------

std::unique_ptr<InferWeights> make_infer_weights(const MOEConfig& config, WorkerPool& pool) {
  if (config.method == "BF16") return std::make_unique<Bf16InferWeights>(config, pool);
  if (config.method == "AMXINT8") return std::make_unique<QuantInferWeights>(config, pool, QuantFormat::int8_channel);
  if (config.method == "AMXINT4") return std::make_unique<QuantInferWeights>(config, pool, QuantFormat::int4_group16);
  throw std::invalid_argument("the inference engine has no weight format for method '" + config.method +
                              "' (it runs BF16, AMXINT8 and AMXINT4)");
}

}  // namespace kt_moe
