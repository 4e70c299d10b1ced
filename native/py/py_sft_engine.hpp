// The object Python sees as kt_moe._native.TP_MOE_SFT (spec 2.2): an SftEngine plus the checks of
// the arrays it is handed and the references to the LoRA tensors it reads in place (visible to the
// cycle collector: py/held_objects.hpp). Every *_task runs on the worker pool and returns when it
// has finished. Included by bindings.cpp only.
#pragma once

#include <nanobind/nanobind.h>

#include <nanobind/stl/vector.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "moe/sft_engine.hpp"
#include "py/arrays.hpp"
#include "py/held_objects.hpp"
#include "py/quant_parts.hpp"

namespace kt_moe::py {

class PySftEngine {
 public:
  PySftEngine(const MOESFTConfig& config, WorkerPool& pool) : engine_(config, pool) {}

  SftEngine& engine() { return engine_; }

  // gate, up [E_logical, I, H], down [E_logical, H, I] bf16; physical slot p gets logical expert map[p].
  void load_weights(const Array& gate, const Array& up, const Array& down, const Array& map) {
    const MOESFTConfig& c = engine_.config();
    const int64_t logical = gate.ndim() == 3 ? int64_t(gate.shape(0)) : -1;
    const int64_t I = c.intermediate_size, H = c.hidden_size;
    const bf16_t* g = checked<const bf16_t>(gate, "gate", DType::bf16, {logical, I, H});
    const bf16_t* u = checked<const bf16_t>(up, "up", DType::bf16, {logical, I, H});
    const bf16_t* d = checked<const bf16_t>(down, "down", DType::bf16, {logical, H, I});
    const int64_t* m = checked<const int64_t>(map, "physical_to_logical_map", DType::i64, {c.expert_num});
    for (int p = 0; p < c.expert_num; ++p)
      if (m[p] < 0 || m[p] >= logical)
        throw std::invalid_argument("physical_to_logical_map[" + std::to_string(p) + "] = " + std::to_string(m[p]) +
                                    " is out of range [0, " + std::to_string(logical) + ")");
    nanobind::gil_scoped_release unlocked;
    engine_.begin_load();
    try {
      for (int p = 0; p < c.expert_num; ++p)
        engine_.load_expert(p, g + m[p] * I * H, u + m[p] * I * H, d + m[p] * H * I);
      engine_.commit_load();
    } catch (...) {
      engine_.abort_load();
      throw;
    }
  }

  // One expert into physical slot `slot` in the canonical quantized parts of the method's scheme
  // (AMXINT8_SFT: [q int8, scale fp32]; AMXINT4_SFT: [codes uint8, scale fp16, zero uint8 in
  // sixteenths of a code] in groups of 16; AMXINT4_KGroup_SFT: the same in groups of group_size,
  // without zero when zero_point is false; gate and up of W [I, H], down of W [H, I]; see
  // py/quant_parts.hpp).
  void load_quant_expert(int slot, const std::vector<Array>& gate, const std::vector<Array>& up,
                         const std::vector<Array>& down) {
    const MOESFTConfig& c = engine_.config();
    const std::shared_ptr<const SftBaseWeights> weights = engine_.base();
    const auto* base = dynamic_cast<const QuantSftBase*>(weights.get());
    if (!base)
      throw std::invalid_argument("method " + c.method + " stores its experts as " + weights->format() +
                                  ": load them with load_expert_task");
    const WeightFormat& f = base->weight_format();
    const int64_t I = c.intermediate_size, H = c.hidden_size;
    const MatrixParts g = checked_parts(f, gate, "gate", I, H), u = checked_parts(f, up, "up", I, H),
                      d = checked_parts(f, down, "down", H, I);
    nanobind::gil_scoped_release unlocked;
    engine_.load_quant_expert(slot, g, u, d);
  }

  // One expert into physical slot `slot`: gate, up [I, H], down [H, I] bf16.
  void load_expert(int slot, const Array& gate, const Array& up, const Array& down) {
    const MOESFTConfig& c = engine_.config();
    const int64_t I = c.intermediate_size, H = c.hidden_size;
    const bf16_t* g = checked<const bf16_t>(gate, "gate", DType::bf16, {I, H});
    const bf16_t* u = checked<const bf16_t>(up, "up", DType::bf16, {I, H});
    const bf16_t* d = checked<const bf16_t>(down, "down", DType::bf16, {H, I});
    nanobind::gil_scoped_release unlocked;
    engine_.load_expert(slot, g, u, d);
  }

  // The six LoRA tensors (bf16, spec 3.2 shapes), read in place until the next call.
  void update_lora(const Array& gate_a, const Array& gate_b, const Array& up_a, const Array& up_b,
                   const Array& down_a, const Array& down_b) {
    const MOESFTConfig& c = engine_.config();
    const int64_t E = c.expert_num, r = c.lora_rank, H = c.hidden_size, I = c.intermediate_size;
    LoraTensors t;
    t.gate_a = checked<const bf16_t>(gate_a, "gate_lora_a", DType::bf16, {E, r, H});
    t.gate_b = checked<const bf16_t>(gate_b, "gate_lora_b", DType::bf16, {E, I, r});
    t.up_a = checked<const bf16_t>(up_a, "up_lora_a", DType::bf16, {E, r, H});
    t.up_b = checked<const bf16_t>(up_b, "up_lora_b", DType::bf16, {E, I, r});
    t.down_a = checked<const bf16_t>(down_a, "down_lora_a", DType::bf16, {E, r, I});
    t.down_b = checked<const bf16_t>(down_b, "down_lora_b", DType::bf16, {E, H, r});
    engine_.set_lora(t);
    lora_refs_ = {owner_of(gate_a), owner_of(gate_b), owner_of(up_a), owner_of(up_b), owner_of(down_a),
                  owner_of(down_b)};
  }

  // The cycle collector's view of the LoRA tensors (py/held_objects.hpp).
  int visit_held(visitproc visit, void* arg) {
    for (const nanobind::object& o : lora_refs_) Py_VISIT(o.ptr());
    return 0;
  }
  void release_held() {
    engine_.clear_lora();  // no call is in progress: a caller would hold a reference to this object
    lora_refs_ = {};
  }

  void forward(int qlen, int k, const Array& expert_ids, const Array& weights, const Array& input,
               const Array& output, bool save) {
    const MOESFTConfig& c = engine_.config();
    check_batch(qlen, k, c.experts_per_token);
    const int64_t H = c.hidden_size;
    const int64_t* ids = checked<const int64_t>(expert_ids, "expert_ids", DType::i64, {qlen, k});
    const float* w = checked<const float>(weights, "weights", DType::f32, {qlen, k});
    const bf16_t* x = checked<const bf16_t>(input, "input", DType::bf16, {qlen, H});
    const FloatOutput out = float_output(output, "output", {qlen, H});
    nanobind::gil_scoped_release unlocked;
    engine_.forward(qlen, ids, w, x, out, save);
  }

  void backward(int qlen, int k, const Array& grad_output, const Array& grad_input, const Array& grad_gate_a,
                const Array& grad_gate_b, const Array& grad_up_a, const Array& grad_up_b, const Array& grad_down_a,
                const Array& grad_down_b, const Array& grad_weights) {
    const MOESFTConfig& c = engine_.config();
    check_batch(qlen, k, c.experts_per_token);
    const int64_t E = c.expert_num, r = c.lora_rank, H = c.hidden_size, I = c.intermediate_size;
    const bf16_t* dy = checked<const bf16_t>(grad_output, "grad_output", DType::bf16, {qlen, H});
    const FloatOutput dx = float_output(grad_input, "grad_input", {qlen, H});
    const GradientOutputs g = {float_output(grad_gate_a, "grad_gate_a", {E, r, H}),
                               float_output(grad_gate_b, "grad_gate_b", {E, I, r}),
                               float_output(grad_up_a, "grad_up_a", {E, r, H}),
                               float_output(grad_up_b, "grad_up_b", {E, I, r}),
                               float_output(grad_down_a, "grad_down_a", {E, r, I}),
                               float_output(grad_down_b, "grad_down_b", {E, H, r})};
    float* dw = checked<float>(grad_weights, "grad_weights", DType::f32, {qlen, k});
    nanobind::gil_scoped_release unlocked;
    engine_.backward(qlen, dy, dx, g, dw);
  }

 private:
  // An output the engine writes from fp32 values: bf16 or fp32 with the given shape.
  static FloatOutput float_output(const Array& a, const char* name, std::initializer_list<int64_t> shape) {
    const bool bf16 = has_dtype(a, DType::bf16);
    return {bf16 ? static_cast<void*>(checked<bf16_t>(a, name, DType::bf16, shape))
                 : static_cast<void*>(checked<float>(a, name, DType::f32, shape)),
            bf16};
  }

  SftEngine engine_;
  std::array<nanobind::object, 6> lora_refs_;  // keep the tensors the engine reads alive
};

}  // namespace kt_moe::py
