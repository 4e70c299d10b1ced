// The LoRA fine-tuning engine of one MoE layer (AMXBF16_SFT, AMXINT8_SFT, AMXINT4_SFT,
// AMXINT4_KGroup_SFT). The frozen experts, bf16 or quantized (moe/sft_base_weights.hpp), are split
// by intermediate slice over the pool's subpools (tensor parallel: subpool s owns rows
// [s * I / tp, (s + 1) * I / tp) of gate/up and the same columns of down); every product with them
// goes through moe/base_products.hpp, so the methods share all of this engine. The LoRA adapters
// are read in place from the caller's tensors. forward() can save what backward() needs on a bounded
// stack; backward() pops the latest entry and produces grad_input, the six LoRA gradients and the
// routing-weight gradient (math: docs/design.md section 3).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "config/moe_config.hpp"
#include "kernels/gemm_bf16.hpp"
#include "kernels/swiglu.hpp"
#include "moe/buffer.hpp"
#include "moe/base_products.hpp"
#include "moe/float_output.hpp"
#include "moe/sft_base_weights.hpp"
#include "moe/routing.hpp"
#include "moe/staged_weights.hpp"
#include "pool/task_tickets.hpp"
#include "pool/worker_pool.hpp"

namespace kt_moe {

// The caller's LoRA tensors, bf16, contiguous; E experts, rank r.
struct LoraTensors {
  const bf16_t* gate_a = nullptr;  // [E, r, H]
  const bf16_t* gate_b = nullptr;  // [E, I, r]
  const bf16_t* up_a = nullptr;    // [E, r, H]
  const bf16_t* up_b = nullptr;    // [E, I, r]
  const bf16_t* down_a = nullptr;  // [E, r, I]
  const bf16_t* down_b = nullptr;  // [E, H, r]
};

// fp32 gradients with the shapes of LoraTensors: the sums over the slices when there are several.
struct LoraGradients {
  float* gate_a = nullptr;
  float* gate_b = nullptr;
  float* up_a = nullptr;
  float* up_b = nullptr;
  float* down_a = nullptr;
  float* down_b = nullptr;
};

// Where backward() leaves one LoRA gradient: the caller's buffer with the shape of its LoRA
// tensor, fp32 or bf16. All six, in the order gate_a, gate_b, up_a, up_b, down_a, down_b.
using GradientOutputs = std::array<FloatOutput, 6>;

class GradientBlocks;  // moe/lora_gradient_blocks.hpp

// The kernels one forward or backward uses, chosen from the active ISA level when it starts.
struct EngineKernels {
  BaseKernels base;  // the base products (and base.gemm the LoRA products)
  SwigluKernels swiglu;
  static EngineKernels for_level(IsaLevel level) { return {BaseKernels::for_level(level), swiglu_kernels(level)}; }
};

// Calls from several threads are serialised (one engine call at a time).
class SftEngine {
 public:
  // Allocates the base-weight storage of every subpool (on its NUMA node) in the format of
  // config.method. std::invalid_argument when the config's sizes are not positive, tp_size differs
  // from the pool's subpool count, intermediate_size is not divisible by tp_size, or the method has
  // no base format (make_sft_base_weights).
  SftEngine(const MOESFTConfig& config, WorkerPool& pool);
  ~SftEngine();
  SftEngine(const SftEngine&) = delete;
  SftEngine& operator=(const SftEngine&) = delete;

  const MOESFTConfig& config() const { return config_; }

  // Loading is all or nothing, as in InferEngine: load_expert / load_quant_expert write into a staged
  // base (a fresh one, made by begin_load() or by the first load after a commit or an abort), which
  // commit_load() puts in place once every slot holds an expert; calls before it read the previous
  // base, calls after it the new one; abort_load() drops the staged base. Both bases exist during a
  // reload. begin_load() and commit_load() throw std::runtime_error while saved forwards wait for
  // backward() (their backward would read another base than their forward did), commit_load() also
  // when a slot of the staged base has no expert.
  void begin_load();
  void commit_load();
  void abort_load();
  int staged_count() const;  // slots of the staged base loaded so far (0 without one)

  // Copies one expert into physical slot `slot` of the staged base, each subpool its own slice: bf16
  // gate, up [I, H] and down [H, I], contiguous (AMXBF16_SFT), or their canonical parts in the
  // method's registered format (the other methods; QuantSftBase::load). std::invalid_argument when
  // the method stores its base the other way.
  void load_expert(int slot, const bf16_t* gate, const bf16_t* up, const bf16_t* down);
  void load_quant_expert(int slot, const MatrixParts& gate, const MatrixParts& up, const MatrixParts& down);
  bool weights_loaded() const;
  std::shared_ptr<const SftBaseWeights> base() const;  // the base calls read now

  void set_lora(const LoraTensors& lora);
  // Forgets the LoRA tensors (after a call in progress): later calls fail as before set_lora().
  void clear_lora();
  bool lora_set() const { return lora_.gate_a != nullptr; }

  // x [q, H] bf16, expert_ids [q, k], weights [q, k] fp32 -> out [q, H] (bf16 or fp32), q >= 1.
  // With `save` pushes the forward's state on the cache (RuntimeError "Forward cache full" before any work
  // when max_cache_depth entries are held). std::runtime_error "Weights not loaded" / "LoRA weights
  // not initialized"; std::invalid_argument for bad expert ids.
  void forward(int q, const int64_t* expert_ids, const float* weights, const bf16_t* x, const FloatOutput& out,
               bool save);

  // Pops the latest saved forward (std::runtime_error "No forward cache available" when none):
  // grad_out [q, H] bf16 -> grad_in [q, H] (bf16 or fp32), the LoRA gradients (written to `grads`,
  // zero for experts without tokens), grad_weights [q, k] fp32 (dL/dweights). std::invalid_argument when q
  // differs from the saved forward's (the entry stays).
  void backward(int q, const bf16_t* grad_out, const FloatOutput& grad_in, const GradientOutputs& grads,
                float* grad_weights);
  // Drops the latest saved forward without a backward (its caller will never run one, e.g. an
  // autograd graph freed unused); std::runtime_error "No forward cache available" when none.
  void discard_saved_forward();

  int cache_depth() const {
    std::lock_guard<std::mutex> lock(call_mutex_);
    return static_cast<int>(cache_.size());
  }
  // Bytes one routed (token, slot) pair holds in a saved forward.
  size_t cached_bytes_per_routed_slot() const;

  // Per-call buffers (scratch and the states kept for reuse, not the saved forwards): after each
  // call every buffer larger than both what the call needed and scratch_keep_bytes() is freed.
  size_t scratch_bytes() const;
  size_t scratch_keep_bytes() const { return scratch_keep_bytes_; }
  void set_scratch_keep_bytes(size_t bytes) { scratch_keep_bytes_ = bytes; }

  // Runs a forward without saving over one token per expert (sizes the scratch, pages the
  // weights in). Needs weights and LoRA like forward().
  void warm_up();

  struct ForwardState;
  struct Scratch;

 private:
  void check_ready() const;
  void check_no_saved_forward(const char* call) const;
  // The staged base as a Format (made now when there is none); std::invalid_argument when the
  // method stores its base in another format, naming how to load it (`instead`).
  template <class Format>
  Format& staged_as(const char* instead);
  void forward_locked(int q, const int64_t* expert_ids, const float* weights, const bf16_t* x,
                      const FloatOutput& out, bool save);
  std::unique_ptr<ForwardState> acquire_state();
  void release_state(std::unique_ptr<ForwardState> state);
  // On the pool behind the work queued before it, waiting for it; rethrows what it threw (its own
  // ticket: errors of other pool users never surface here).
  void run(const std::function<void()>& work) { tickets_.run(work); }
  void compute_forward(ForwardState& st, const bf16_t* x, const FloatOutput& out, const EngineKernels& kernels);
  void compute_backward(ForwardState& st, const bf16_t* grad_out, const FloatOutput& grad_in,
                        const GradientBlocks& grads, float* grad_weights, const EngineKernels& kernels);
  // Copies the fp32 gradients of every expert to the caller's buffers, rounding to bf16 where asked
  // (with several slices; with one, the backward's tasks store them: moe/lora_gradient_blocks.hpp).
  void write_gradients(const LoraGradients& grads, const GradientOutputs& out);

  MOESFTConfig config_;
  WorkerPool& pool_;
  int slice_size_;  // I / tp
  float scale_;     // lora_alpha / lora_rank
  StagedWeights<SftBaseWeights> weights_;  // current: the frozen base calls read, one slice per subpool
  LoraTensors lora_;
  std::vector<std::unique_ptr<ForwardState>> cache_;  // saved forwards, latest last
  std::vector<std::unique_ptr<ForwardState>> free_;   // states not in the cache, kept for reuse
  std::unique_ptr<Scratch> scratch_;
  std::atomic<size_t> scratch_keep_bytes_{kDefaultScratchKeepBytes};
  mutable std::mutex call_mutex_;  // held by every public call that touches the state above
  TaskTickets tickets_;            // last: destroyed first, waiting for queued work
};

}  // namespace kt_moe
