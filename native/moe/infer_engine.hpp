// The inference engine of one MoE layer: out[t] = sum over the token's CPU experts e of
// w_e * W_down(silu(W_gate x_t) * W_up x_t) (docs/design.md section 3 without LoRA). The experts' weights
// live in an InferWeights format (infer_weights.hpp), each subpool owning a slice of every expert's
// intermediate dimension (tensor parallel; the slices' partial outputs are summed in fp32).
//
// Work is asynchronous: submit() routes the batch on the calling thread (bad ids fail there), queues
// the compute on the worker pool and returns a ticket at once; wait(ticket) blocks until that work
// is done and rethrows its error. Each forward runs as phases on the pool: in every subpool at once,
// gather each expert's tokens (a copy per subpool), then (expert, column block) tasks for gate/up +
// SwiGLU and for down (with few experts, as in decode, every expert is split across all threads so
// each weight byte is read once); then, over all threads, the weighted merge of the subpools'
// partial outputs into the output rows. Batches above chunked_prefill_size
// tokens run as consecutive chunks of at most that many, so scratch never exceeds
// chunked_prefill_size * k rows.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "config/moe_config.hpp"
#include "cpu/cpu_features.hpp"
#include "kernels/gemm_bf16.hpp"
#include "moe/buffer.hpp"
#include "moe/infer_weights.hpp"
#include "moe/routing.hpp"
#include "moe/staged_weights.hpp"
#include "pool/task_tickets.hpp"
#include "pool/worker_pool.hpp"

namespace kt_moe {

class InferEngine {
 public:
  // std::invalid_argument when a size of the config is not positive, num_gpu_experts is outside
  // [0, expert_num], tp_size differs from the pool's subpool count, intermediate_size is not
  // divisible by tp_size, or the method has no weight format (make_infer_weights) or the format's
  // shape rules fail (QuantInferWeights).
  InferEngine(const MOEConfig& config, WorkerPool& pool);
  // Waits for every piece of work this engine queued (waited for or not).
  ~InferEngine();
  InferEngine(const InferEngine&) = delete;
  InferEngine& operator=(const InferEngine&) = delete;

  const MOEConfig& config() const { return config_; }
  // The weights forwards submitted now read: those of the last commit_load() (none loaded before it).
  std::shared_ptr<const InferWeights> weights() const;
  bool weights_loaded() const;

  // Loading is all or nothing. The load_*_expert calls write into a staged set of weights (a fresh
  // one, made by begin_load() or by the first load after a commit or an abort), never into the one
  // forwards read; commit_load() puts the staged set in place once every slot holds an expert.
  // Forwards submitted before the commit read the previous weights to their end (which stay
  // allocated until then), forwards submitted after it the new ones. A failed load followed by
  // abort_load() leaves the engine as it was. During a reload both sets exist (twice the memory of
  // the layer's experts); before the first commit the engine's set is allocated but never touched.
  void begin_load();   // drops a staged set left over and starts a fresh one
  void commit_load();  // std::runtime_error when a slot of the staged set has no expert
  void abort_load();   // drops the staged set, if any
  int staged_count() const;  // slots of the staged set loaded so far (0 without one)

  // Method BF16: copies one expert (gate, up [I, H], down [H, I] bf16) into physical slot `slot` of
  // the staged set, on the pool after the work queued before it; returns when done.
  // std::invalid_argument for a bad slot or when the method stores another format.
  void load_bf16_expert(int slot, const bf16_t* gate, const bf16_t* up, const bf16_t* down);
  // Methods with a registered quantized format: packs one expert given in the format's canonical
  // parts (gate, up W [I, H], down W [H, I]; QuantInferWeights::load) likewise.
  void load_quant_expert(int slot, const MatrixParts& gate, const MatrixParts& up, const MatrixParts& down);

  // Which experts live on the GPU (their slots are skipped): mask [E], nonzero = on the GPU; null
  // restores the config's experts [0, num_gpu_experts). Applies to forwards submitted afterwards.
  void set_gpu_experts(const uint8_t* mask);
  std::vector<uint8_t> gpu_experts() const;

  // x [q, H] bf16, expert_ids [q, k] int64, weights [q, k] fp32 -> out [q, H] bf16 (written by the
  // queued work), q >= 1. Slots with id -1 or a GPU expert add nothing. Returns the ticket to wait
  // for; the four arrays must stay valid and untouched until wait(ticket) returns.
  // std::runtime_error "Weights not loaded" before every slot is loaded; std::invalid_argument for
  // q < 1 or an id outside [-1, E) (nothing is queued then).
  uint64_t submit(int q, const int64_t* expert_ids, const float* weights, const bf16_t* x, bf16_t* out);

  // submit() then wait() in one call: the calling thread runs the forward itself when the pool has
  // nothing queued or running (no hand-over to the pool's dispatcher and back).
  void forward(int q, const int64_t* expert_ids, const float* weights, const bf16_t* x, bf16_t* out);

  // Blocks until the work of `ticket` has finished and rethrows what it threw. Each ticket is
  // waited for once: an unknown or already waited ticket is std::invalid_argument.
  void wait(uint64_t ticket) { tickets_.wait(ticket); }

  // Tickets queued and not yet waited for.
  int pending() const { return tickets_.pending(); }

  // The forwards' per-call buffers (one chunk's scratch), measured behind the queued work. After
  // each forward every buffer larger than both what the forward needed and scratch_keep_bytes()
  // is freed.
  size_t scratch_bytes();
  size_t scratch_keep_bytes() const { return scratch_keep_bytes_; }
  void set_scratch_keep_bytes(size_t bytes) { scratch_keep_bytes_ = bytes; }

  // Blocks until every forward queued so far has finished (their tickets stay to be waited for).
  void wait_all() { tickets_.wait_all(); }

 private:
  struct Scratch;

  // The forward's work for submit() and forward(): routes the batch now (its errors are thrown
  // here, before anything is queued) and returns the compute.
  std::function<void()> forward_work(int q, const int64_t* expert_ids, const float* weights, const bf16_t* x,
                                     bf16_t* out);
  // Queues work behind the work already queued and waits for it.
  void run_queued(std::function<void()> work) { tickets_.run(std::move(work)); }
  // The staged set as a Format (made now when there is none); std::invalid_argument naming `wanted`
  // when the method has another format.
  template <class Format>
  std::shared_ptr<Format> staged_as(const char* wanted);
  // One chunk: rt routes its tokens x [c, H] with weights [c, k] into out [c, H], reading w.
  void compute(InferWeights& w, const Routing& rt, const float* weights, const bf16_t* x, bf16_t* out,
               IsaLevel level);
  // On subpool s's leader: y [R, H] fp32 = the routed rows' expert outputs, this slice's share
  // (rt has at least one active expert).
  void compute_experts(InferWeights& w, const Routing& rt, const bf16_t* x, float* y, IsaLevel level, int s);

  MOEConfig config_;
  WorkerPool& pool_;
  std::unique_ptr<Scratch> scratch_;  // used by the queued work only, which runs one piece at a time
  std::atomic<size_t> scratch_keep_bytes_{kDefaultScratchKeepBytes};

  mutable std::mutex mutex_;  // guards the members below
  StagedWeights<InferWeights> weights_;  // current: what forwards read (each queued forward holds a reference)
  std::vector<uint8_t> on_gpu_;            // [E]
  TaskTickets tickets_;  // last: destroyed first, waiting for the queued work that uses the above
};

}  // namespace kt_moe
