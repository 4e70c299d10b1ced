// The inference weight storage (BF16 and the registered quantized formats) and the method -> format lookup.
#include "moe/infer_weights.hpp"

#include <stdexcept>
#include <string>

#include "formats/part_slices.hpp"
#include "moe/base_products.hpp"
#include "moe/gemm_calls.hpp"

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

// ---- registered quantized formats ------------------------------------------------------------

QuantInferWeights::QuantInferWeights(const MOEConfig& config, WorkerPool& pool, const WeightFormat& format)
    : format_(format), packed_(format.packed_kernels()),
      store_(config.expert_num, config.hidden_size, config.intermediate_size, pool) {
  const int tp = store_.slice_count(), Is = store_.slice_size(), H = config.hidden_size;
  // down's inputs are cut into the slices, each packed on its own (its K padded to the 64-k unit)
  const int align = packed_.k_slice_align;
  if (tp > 1 && Is % align != 0)
    throw std::invalid_argument(std::string(format_.name) + " weights are split across subpools at whole groups of " +
                                std::to_string(align) + " inputs: moe_intermediate_size / threadpool_count (" +
                                std::to_string(Is) + ") must be a multiple of " + std::to_string(align) +
                                " when threadpool_count > 1");
  gate_bytes_ = quant_weight_bytes(packed_, Is, H);
  down_bytes_ = quant_weight_bytes(packed_, H, Is);
  store_.allocate([&](int) { return size_t(2 * gate_bytes_ + down_bytes_); });
  x_layout_ = quant_act_layout(packed_, H);
  z_layout_ = quant_act_layout(packed_, Is);
  records_.resize(tp);
}

uint8_t* QuantInferWeights::packed(int s, int slot, int which) const {
  return store_.expert(s, slot) + which * gate_bytes_;
}

QuantWeightView QuantInferWeights::weight(int s, int slot, int which) const {
  const int H = store_.hidden(), Is = store_.slice_size();
  if (which == 2) return {&packed_, H, Is, packed(s, slot, 2)};
  return {&packed_, Is, H, packed(s, slot, which)};
}

void QuantInferWeights::pack(const MatrixParts& m, int n0, int n, int k0, int k, uint8_t* dst) const {
  packed_.pack(slice_pointers(format_, m, slice_of(format_, n0, n, k0, k)), n, k, dst);
}

void QuantInferWeights::load(int slot, const MatrixParts& gate, const MatrixParts& up, const MatrixParts& down) {
  const int H = store_.hidden(), Is = store_.slice_size();
  store_.load(slot, [&](int s, int m, uint8_t*) {
    const int begin = store_.slice_begin(s);
    if (m < 2)
      pack(m == 0 ? gate : up, begin, Is, 0, H, packed(s, slot, m));
    else
      pack(down, 0, H, begin, Is, packed(s, slot, 2));
  });
}

void QuantInferWeights::prepare_inputs(int rows) {
  for (Records& r : records_) {
    r.x.ensure(size_t(rows) * x_layout_.row_bytes);
    r.z.ensure(size_t(rows) * z_layout_.row_bytes);
  }
}

void QuantInferWeights::convert_gate_up_input(IsaLevel level, int s, const bf16_t* x, int r0, int r1) {
  const int H = store_.hidden();
  quantize_activations_kernel(level)({packed_.act_sum_group, r1 - r0, H, x + size_t(r0) * H, H,
                                      records_[s].x.data() + r0 * x_layout_.row_bytes, x_layout_.row_bytes});
}

void QuantInferWeights::convert_down_input(IsaLevel level, int s, const bf16_t* z, int r0, int r1) {
  const int Is = store_.slice_size();
  quantize_activations_kernel(level)({packed_.act_sum_group, r1 - r0, Is, z + size_t(r0) * Is, Is,
                                      records_[s].z.data() + r0 * z_layout_.row_bytes, z_layout_.row_bytes});
}

void QuantInferWeights::gate_up(IsaLevel level, int s, int slot, const bf16_t*, int b, int n, int c0, int nc,
                                float* g, float* u, int64_t ldc) const {
  const QuantGemmFn gemm = gemm_quant_kernel(level);
  const QuantActView a{&packed_, n, store_.hidden(), records_[s].x.data() + b * x_layout_.row_bytes,
                       x_layout_.row_bytes};
  gemm({weight(s, slot, 0), a, n, nullptr, c0, c0 + nc, g, ldc, false});
  gemm({weight(s, slot, 1), a, n, nullptr, c0, c0 + nc, u, ldc, false});
}

void QuantInferWeights::down(IsaLevel level, int s, int slot, const bf16_t*, int b, int n, int h0, int nh, float* y,
                             int64_t ldy) const {
  const QuantActView a{&packed_, n, store_.slice_size(), records_[s].z.data() + b * z_layout_.row_bytes,
                       z_layout_.row_bytes};
  gemm_quant_kernel(level)({weight(s, slot, 2), a, n, nullptr, h0, h0 + nh, y, ldy, false});
}

// ---- formats read through their dequantizer ---------------------------------------------------

DequantInferWeights::DequantInferWeights(const MOEConfig& config, WorkerPool& pool,
                                         const std::array<WeightFormat, 3>& formats)
    : experts_(formats, config.expert_num, config.hidden_size, config.intermediate_size, pool),
      name_(formats[0].name),
      hidden_(config.hidden_size) {
  if (std::string(formats[1].name) != name_ || std::string(formats[2].name) != name_)
    name_ += std::string(",") + formats[1].name + "," + formats[2].name;
}

void DequantInferWeights::gate_up(IsaLevel level, int s, int slot, const bf16_t* x, int b, int n, int c0, int nc,
                                  float* g, float* u, int64_t ldc) const {
  const BaseKernels kernels = BaseKernels::for_level(level);
  const int H = hidden_;
  const bf16_t* rows = x + size_t(b) * H;
  base_nt(kernels, WeightView::of_quant(experts_.view(s, slot, BaseMatrix::gate)), n, c0, c0 + nc, rows, H, g + c0,
          ldc);
  base_nt(kernels, WeightView::of_quant(experts_.view(s, slot, BaseMatrix::up)), n, c0, c0 + nc, rows, H, u + c0,
          ldc);
}

void DequantInferWeights::down(IsaLevel level, int s, int slot, const bf16_t* z, int b, int n, int h0, int nh,
                               float* y, int64_t ldy) const {
  const int Is = experts_.slice_size();
  base_nt(BaseKernels::for_level(level), WeightView::of_quant(experts_.view(s, slot, BaseMatrix::down)), n, h0,
          h0 + nh, z + size_t(b) * Is, Is, y + h0, ldy);
}

// ---- method -> format ------------------------------------------------------------------------

std::unique_ptr<InferWeights> make_infer_weights(const MOEConfig& config, WorkerPool& pool) {
  if (config.method == "BF16") return std::make_unique<Bf16InferWeights>(config, pool);
  if (config.method == "LLAMAFILE") {  // one format per matrix, as the GGUF file stores them
    if (config.matrix_formats.size() != 3)
      throw std::invalid_argument("LLAMAFILE needs the formats of gate, up and down (MOEConfig.matrix_formats), got " +
                                  std::to_string(config.matrix_formats.size()));
    std::array<WeightFormat, 3> formats;
    for (int m = 0; m < 3; ++m) formats[m] = weight_format(config.matrix_formats[m]);
    return std::make_unique<DequantInferWeights>(config, pool, formats);
  }
  if (const std::optional<WeightFormat> found =
          inference_weight_format(config.method, config.group_size, config.zero_point)) {
    const WeightFormat& format = *found;
    if (format.packed) return std::make_unique<QuantInferWeights>(config, pool, format);
    return std::make_unique<DequantInferWeights>(config, pool, std::array<WeightFormat, 3>{format, format, format});
  }
  throw std::invalid_argument("the inference engine has no weight format for method '" + config.method +
                              "' (it runs " + weight_format_methods(false, "BF16") + ")");
}

}  // namespace kt_moe
