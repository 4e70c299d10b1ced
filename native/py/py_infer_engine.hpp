// The object Python sees as kt_moe._native.TP_MOE: an InferEngine plus the checks of the arrays it
// is handed and the references that keep a queued forward's tensors alive until its sync (visible
// to the cycle collector: py/held_objects.hpp). Also
// bind_infer_engine(), the binding of the class, so that bindings.cpp needs one line for it.
// Included by bindings.cpp only.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include <array>
#include <cstdint>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "moe/infer_engine.hpp"
#include "pool/py_worker_pool.hpp"
#include "py/arrays.hpp"
#include "py/held_objects.hpp"
#include "py/quant_parts.hpp"

namespace kt_moe::py {

class PyInferEngine {
 public:
  PyInferEngine(const MOEConfig& config, WorkerPool& pool) : engine_(config, pool) {}

  InferEngine& engine() { return engine_; }

  // One expert into physical slot `slot`: gate, up [I, H], down [H, I] bf16 (method BF16).
  void load_expert(int slot, const Array& gate, const Array& up, const Array& down) {
    const MOEConfig& c = engine_.config();
    const int64_t I = c.intermediate_size, H = c.hidden_size;
    const bf16_t* g = checked<const bf16_t>(gate, "gate", DType::bf16, {I, H});
    const bf16_t* u = checked<const bf16_t>(up, "up", DType::bf16, {I, H});
    const bf16_t* d = checked<const bf16_t>(down, "down", DType::bf16, {H, I});
    nanobind::gil_scoped_release unlocked;
    engine_.load_bf16_expert(slot, g, u, d);
  }

  // One expert into physical slot `slot` in the canonical parts of the method's registered format
  // (AMXINT8: [q int8, scale fp32]; AMXINT4: [codes uint8, scale fp16, zero uint8]; gate and up of
  // W [I, H], down of W [H, I]; see py/quant_parts.hpp).
  void load_quant_expert(int slot, const std::vector<Array>& gate, const std::vector<Array>& up,
                         const std::vector<Array>& down) {
    const MOEConfig& c = engine_.config();
    const std::shared_ptr<const InferWeights> weights = engine_.weights();
    const auto* format = dynamic_cast<const PartsInferWeights*>(weights.get());
    if (!format)
      throw std::invalid_argument("method " + c.method + " stores its experts as " + weights->format() +
                                  ": load them with load_expert_task");
    const int64_t I = c.intermediate_size, H = c.hidden_size;
    const MatrixParts g = checked_parts(format->weight_format(BaseMatrix::gate), gate, "gate", I, H),
                      u = checked_parts(format->weight_format(BaseMatrix::up), up, "up", I, H),
                      d = checked_parts(format->weight_format(BaseMatrix::down), down, "down", H, I);
    nanobind::gil_scoped_release unlocked;
    engine_.load_quant_expert(slot, g, u, d);
  }

  void set_gpu_experts(const std::optional<std::vector<bool>>& mask) {
    if (!mask) return engine_.set_gpu_experts(nullptr);
    const size_t E = engine_.config().expert_num;
    if (mask->size() != E)
      throw std::invalid_argument("gpu_experts_mask must have " + std::to_string(E) + " entries (one per expert), got " +
                                  std::to_string(mask->size()));
    const std::vector<uint8_t> bytes(mask->begin(), mask->end());
    engine_.set_gpu_experts(bytes.data());
  }

  std::vector<bool> gpu_experts() const {
    const std::vector<uint8_t> mask = engine_.gpu_experts();
    return std::vector<bool>(mask.begin(), mask.end());
  }

  // Queues a forward and returns its ticket at once; the arrays are kept alive until sync(ticket).
  uint64_t submit(int qlen, int k, const Array& expert_ids, const Array& weights, const Array& input,
                  const Array& output) {
    const MOEConfig& c = engine_.config();
    check_batch(qlen, k, c.experts_per_token);
    const int64_t H = c.hidden_size;
    const int64_t* ids = checked<const int64_t>(expert_ids, "expert_ids", DType::i64, {qlen, k});
    const float* w = checked<const float>(weights, "weights", DType::f32, {qlen, k});
    const bf16_t* x = checked<const bf16_t>(input, "input", DType::bf16, {qlen, H});
    bf16_t* out = checked<bf16_t>(output, "output", DType::bf16, {qlen, H});
    const uint64_t ticket = engine_.submit(qlen, ids, w, x, out);
    in_use_.emplace(ticket, std::array<nanobind::object, 4>{owner_of(expert_ids), owner_of(weights),
                                                            owner_of(input), owner_of(output)});
    return ticket;
  }

  // submit() and sync() in one call, GIL released, on arrays given by address that the caller has
  // checked (the wrapper's CPU fast path: importing four arrays costs more than the rest of a decode
  // step's fixed work when the caches are cold).
  void forward_at(int qlen, int k, uintptr_t expert_ids, uintptr_t weights, uintptr_t input, uintptr_t output) {
    check_batch(qlen, k, engine_.config().experts_per_token);
    if (!expert_ids || !weights || !input || !output) throw std::invalid_argument("forward_task_at: a null address");
    nanobind::gil_scoped_release unlocked;
    engine_.forward(qlen, reinterpret_cast<const int64_t*>(expert_ids), reinterpret_cast<const float*>(weights),
                    reinterpret_cast<const bf16_t*>(input), reinterpret_cast<bf16_t*>(output));
  }

  // Waits (GIL released) for the forward of `ticket`, then drops its arrays; rethrows its error.
  void sync(uint64_t ticket) {
    std::exception_ptr error;
    {
      nanobind::gil_scoped_release unlocked;
      try {
        engine_.wait(ticket);
      } catch (...) {
        error = std::current_exception();
      }
    }
    in_use_.erase(ticket);
    if (error) std::rethrow_exception(error);
  }

  // The cycle collector's view of the tensors held for queued forwards (py/held_objects.hpp).
  int visit_held(visitproc visit, void* arg) {
    for (const auto& [ticket, objects] : in_use_)
      for (const nanobind::object& o : objects) Py_VISIT(o.ptr());
    return 0;
  }
  void release_held() {
    engine_.wait_all();  // with the GIL: inside a collection no other Python thread may run
    in_use_.clear();
  }

 private:
  // Declared before engine_, so destroyed after ~InferEngine has waited for the queued work.
  std::map<uint64_t, std::array<nanobind::object, 4>> in_use_;  // expert_ids, weights, input, output
  InferEngine engine_;
};

inline void bind_infer_engine(nanobind::module_& m) {
  namespace nb = nanobind;
  using namespace nb::literals;
  nb::class_<PyInferEngine>(m, "TP_MOE", nb::type_slots(held_object_slots<PyInferEngine>),
                            "Inference engine of one MoE layer on a WorkerPool (one subpool per tensor-parallel "
                            "part). submit_forward_task queues a forward and returns a ticket at once; "
                            "sync_forward_task(ticket) waits for it with the GIL released.")
      .def(
          "__init__",
          [](PyInferEngine* self, const MOEConfig& config, PyWorkerPool& pool) {
            new (self) PyInferEngine(config, pool.pool());
          },
          "config"_a, "pool"_a, nb::keep_alive<1, 3>())
      .def_prop_ro("config", [](PyInferEngine& e) { return e.engine().config(); })
      .def_prop_ro("weight_format", [](PyInferEngine& e) { return std::string(e.engine().weights()->format()); },
                   "How the experts are stored: 'bf16' or the method's registered weight format (weight_formats()).")
      .def_prop_ro("resident_bytes_per_expert",
                   [](PyInferEngine& e) { return e.engine().weights()->resident_bytes_per_expert(); },
                   "Memory one expert's weights hold, all subpools' slices together (scales and alignment included).")
      .def(
          "stored_parts",
          [](PyInferEngine& e, int slot, const std::string& matrix, int slice) {
            const std::shared_ptr<const InferWeights> weights = e.engine().weights();
            const auto* canonical = dynamic_cast<const DequantInferWeights*>(weights.get());
            return stored_parts(canonical ? &canonical->experts() : nullptr, e.engine().config().method, slot, matrix,
                                slice);
          },
          "slot"_a, "matrix"_a, "slice"_a = 0,
          "Test hook: the canonical parts kept of one expert's matrix ('gate', 'up', 'down') in a subpool's slice, "
          "as bytes in part order (methods that keep their experts in canonical parts: FP8, RAWINT4).")
      .def_prop_ro("weights_loaded", [](PyInferEngine& e) { return e.engine().weights_loaded(); })
      .def_prop_ro("staged_count", [](PyInferEngine& e) { return e.engine().staged_count(); },
                   "Slots of the load in progress (not committed) that hold an expert.")
      .def("begin_load", [](PyInferEngine& e) { e.engine().begin_load(); }, nb::call_guard<nb::gil_scoped_release>(),
           "Start an all-or-nothing load: the load_*_task calls fill a fresh staged set of weights that "
           "forwards do not read (a staged set left over is dropped).")
      .def("commit_load", [](PyInferEngine& e) { e.engine().commit_load(); },
           nb::call_guard<nb::gil_scoped_release>(),
           "Put the staged weights in place once every slot holds an expert (RuntimeError otherwise): forwards "
           "submitted before read the previous weights, forwards submitted after the new ones.")
      .def("abort_load", [](PyInferEngine& e) { e.engine().abort_load(); }, nb::call_guard<nb::gil_scoped_release>(),
           "Drop the staged weights; the weights forwards read stay as they were.")
      .def_prop_ro("pending", [](PyInferEngine& e) { return e.engine().pending(); },
                   "Forwards submitted and not yet synced.")
      .def_prop_ro("scratch_bytes", [](PyInferEngine& e) { return e.engine().scratch_bytes(); },
                   nb::call_guard<nb::gil_scoped_release>(),
                   "Bytes the forwards' per-call buffers hold now (measured behind the queued work).")
      .def_prop_rw(
          "scratch_keep_bytes", [](PyInferEngine& e) { return e.engine().scratch_keep_bytes(); },
          [](PyInferEngine& e, size_t bytes) { e.engine().set_scratch_keep_bytes(bytes); },
          "After each forward, a per-call buffer larger than both what the forward needed and this many bytes "
          "is freed (default 256 MiB).")
      .def("load_expert_task", &PyInferEngine::load_expert, "slot"_a, "gate"_a.noconvert(), "up"_a.noconvert(),
           "down"_a.noconvert(),
           "One expert (gate, up [I, H], down [H, I] bf16) into physical slot `slot` of the staged weights "
           "(commit_load puts them in place).")
      .def("load_quant_expert_task", &PyInferEngine::load_quant_expert, "slot"_a, "gate"_a, "up"_a, "down"_a,
           "One expert into physical slot `slot` of the staged weights for a method with a quantized weight format: "
           "each of gate, up (W [I, H]) and down (W [H, I]) as the list of its canonical parts (weight_formats(); "
           "AMXINT8: [q int8, scale fp32], AMXINT4: [codes uint8, scale fp16, zero uint8]; kt_moe.quant).")
      .def("set_gpu_experts", &PyInferEngine::set_gpu_experts, "mask"_a.none(),
           "A bool per expert (True: on the GPU, its slots are skipped), or None for experts "
           "[0, num_gpu_experts). Applies to forwards submitted afterwards.")
      .def_prop_ro("gpu_experts", &PyInferEngine::gpu_experts, "The current mask: a bool per expert.")
      .def("submit_forward_task", &PyInferEngine::submit, "qlen"_a, "k"_a, "expert_ids"_a.noconvert(),
           "weights"_a.noconvert(), "input"_a.noconvert(), "output"_a.noconvert(),
           "expert_ids int64 [q, k], weights fp32 [q, k], input bf16 [q, H] -> output bf16 [q, H], written by "
           "the queued work; returns its ticket. ValueError for bad ids, RuntimeError before weights are loaded.")
      .def("forward_task_at", &PyInferEngine::forward_at, "qlen"_a, "k"_a, "expert_ids_address"_a,
           "weights_address"_a, "input_address"_a, "output_address"_a,
           "submit_forward_task then sync_forward_task in one call (GIL released; with nothing queued on the pool "
           "the calling thread runs the forward itself), on arrays given by address (tensor.data_ptr()): "
           "C-contiguous CPU int64 [q, k], fp32 [q, k], bf16 [q, H] and bf16 [q, H] that the caller has checked "
           "and keeps alive until the call returns. Only q, k and null addresses are checked here.")
      .def("sync_forward_task", &PyInferEngine::sync, "ticket"_a,
           "Wait for the forward of `ticket` (GIL released); its error, if any, is raised here.");
}

}  // namespace kt_moe::py
