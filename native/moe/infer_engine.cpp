// InferEngine: chunking, and the forward phases queued on the worker pool (each with a ticket:
// pool/task_tickets.hpp).
// Rows are routed (token, slot) pairs grouped by expert (routing.hpp); "slice" is one subpool's
// share of the intermediate size.
#include "moe/infer_engine.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels/swiglu.hpp"
#include "moe/expert_tasks.hpp"

namespace kt_moe {

// Scratch of one chunk, reused by the next. R = routed rows, Is = slice size. Each slice gathers
// its own copy of the rows' tokens (memory of its node; no barrier between the gather and its work).
struct InferEngine::Scratch {
  struct PerSlice {
    Buffer<bf16_t> x;  // [R, H] the rows' tokens
    Buffer<bf16_t> z;  // [R, Is] silu(g) * u
    Buffer<float> y;   // [R, H] this slice's share of the rows' expert outputs
  };
  std::vector<PerSlice> slices;

  // Calls f(buffer) for every buffer.
  template <class F>
  void each_buffer(F&& f) {
    for (PerSlice& s : slices) f(s.x), f(s.z), f(s.y);
  }
};

InferEngine::InferEngine(const MOEConfig& config, WorkerPool& pool)
    : config_(config), pool_(pool), scratch_(std::make_unique<Scratch>()), tickets_(pool) {
  const MOEConfig& c = config_;
  if (c.expert_num < 1 || c.hidden_size < 1 || c.intermediate_size < 1 || c.experts_per_token < 1 ||
      c.tp_size < 1 || c.chunked_prefill_size < 1)
    throw std::invalid_argument("MOEConfig: expert_num, hidden_size, intermediate_size, experts_per_token, "
                                "tp_size and chunked_prefill_size must be positive");
  if (c.num_gpu_experts < 0 || c.num_gpu_experts > c.expert_num)
    throw std::invalid_argument("MOEConfig: num_gpu_experts must be in [0, expert_num]");
  if (c.tp_size != pool.subpool_count())
    throw std::invalid_argument("MOEConfig.tp_size (" + std::to_string(c.tp_size) +
                                ") must equal the pool's subpool count (" + std::to_string(pool.subpool_count()) + ")");
  if (c.intermediate_size % c.tp_size != 0)
    throw std::invalid_argument("MOEConfig: intermediate_size must be divisible by tp_size");
  weights_ = StagedWeights<InferWeights>(make_infer_weights(c, pool));
  scratch_->slices.resize(c.tp_size);
  set_gpu_experts(nullptr);
}

InferEngine::~InferEngine() = default;  // tickets_ waits for the queued work

std::shared_ptr<const InferWeights> InferEngine::weights() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return weights_.current();
}

bool InferEngine::weights_loaded() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return weights_.current_complete(config_.expert_num);
}

void InferEngine::begin_load() {
  std::shared_ptr<InferWeights> fresh = make_infer_weights(config_, pool_);
  std::lock_guard<std::mutex> lock(mutex_);
  fresh = weights_.restart(std::move(fresh));  // a staged set left over, freed after the lock is released
}

void InferEngine::commit_load() {
  std::shared_ptr<InferWeights> previous;  // freed after the lock is released, unless queued forwards hold it
  std::lock_guard<std::mutex> lock(mutex_);
  previous = weights_.commit(config_.expert_num);
}

void InferEngine::abort_load() {
  std::shared_ptr<InferWeights> dropped;
  std::lock_guard<std::mutex> lock(mutex_);
  dropped = weights_.abort();
}

int InferEngine::staged_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return weights_.staged_count();
}

template <class Format>
std::shared_ptr<Format> InferEngine::staged_as(const char* wanted) {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::shared_ptr<InferWeights>& staged = weights_.staged([&] { return make_infer_weights(config_, pool_); });
  std::shared_ptr<Format> format = std::dynamic_pointer_cast<Format>(staged);
  if (!format)
    throw std::invalid_argument("method " + config_.method + " stores its experts as " + staged->format() +
                                ", not " + wanted);
  return format;
}

void InferEngine::load_bf16_expert(int slot, const bf16_t* gate, const bf16_t* up, const bf16_t* down) {
  const std::shared_ptr<Bf16InferWeights> format = staged_as<Bf16InferWeights>("bf16");
  format->check_slot(slot);
  run_queued([&] { format->load(slot, gate, up, down); });
}

void InferEngine::load_quant_expert(int slot, const MatrixParts& gate, const MatrixParts& up,
                                    const MatrixParts& down) {
  const std::shared_ptr<PartsInferWeights> format = staged_as<PartsInferWeights>("a quantized format");
  format->check_slot(slot);
  run_queued([&] { format->load(slot, gate, up, down); });
}

void InferEngine::set_gpu_experts(const uint8_t* mask) {
  const int E = config_.expert_num;
  std::lock_guard<std::mutex> lock(mutex_);
  on_gpu_.assign(E, 0);
  for (int e = 0; e < E; ++e) on_gpu_[e] = mask ? (mask[e] != 0) : (e < config_.num_gpu_experts);
}

std::vector<uint8_t> InferEngine::gpu_experts() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return on_gpu_;
}

uint64_t InferEngine::submit(int q, const int64_t* expert_ids, const float* weights, const bf16_t* x, bf16_t* out) {
  return tickets_.submit(forward_work(q, expert_ids, weights, x, out));
}

void InferEngine::forward(int q, const int64_t* expert_ids, const float* weights, const bf16_t* x, bf16_t* out) {
  tickets_.run(forward_work(q, expert_ids, weights, x, out));
}

std::function<void()> InferEngine::forward_work(int q, const int64_t* expert_ids, const float* weights,
                                                const bf16_t* x, bf16_t* out) {
  if (q < 1) throw std::invalid_argument("forward: q must be positive, got " + std::to_string(q));
  const int E = config_.expert_num, k = config_.experts_per_token, H = config_.hidden_size;
  const int chunk = config_.chunked_prefill_size;
  std::lock_guard<std::mutex> lock(mutex_);
  const std::shared_ptr<InferWeights>& current = weights_.current();
  if (current->loaded_count() != E)
    throw std::runtime_error("Weights not loaded: call load_weights() or load_weights_from_tensors() first (" +
                             std::to_string(current->loaded_count()) + " of " + std::to_string(E) +
                             " experts loaded" +
                             (weights_.has_staged() ? ", " + std::to_string(weights_.staged_count()) +
                                                          " staged: commit_load() puts them in place once all are"
                                                    : std::string()) +
                             ")");
  // Routing the whole batch checks every id; a batch above one chunk is then routed per chunk.
  auto routes = std::make_shared<std::vector<Routing>>();
  routes->push_back(route_tokens(expert_ids, q, k, E, on_gpu_.data()));
  if (q > chunk) {
    routes->clear();
    for (int t0 = 0; t0 < q; t0 += chunk)
      routes->push_back(route_tokens(expert_ids + size_t(t0) * k, std::min(chunk, q - t0), k, E, on_gpu_.data()));
  }
  const IsaLevel level = active_isa_level();
  return [this, w = current, routes, weights, x, out, level, chunk, k, H] {
    for (size_t c = 0; c < routes->size(); ++c) {
      const size_t t0 = c * size_t(chunk);
      compute(*w, (*routes)[c], weights + t0 * k, x + t0 * H, out + t0 * H, level);
    }
    const size_t keep = scratch_keep_bytes();
    scratch_->each_buffer([keep](auto& buffer) { buffer.end_call(keep); });
  };
}

size_t InferEngine::scratch_bytes() {
  size_t bytes = 0;
  run_queued([&] { scratch_->each_buffer([&bytes](const auto& buffer) { bytes += buffer.bytes(); }); });
  return bytes;
}

void InferEngine::compute(InferWeights& w, const Routing& rt, const float* weights, const bf16_t* x, bf16_t* out,
                          IsaLevel level) {
  const int H = config_.hidden_size, Is = w.slice_size(), R = rt.rows();
  const int na = static_cast<int>(rt.active_experts.size());
  std::vector<float*> ys;
  for (Scratch::PerSlice& sc : scratch_->slices) {
    sc.x.ensure(size_t(R) * H);
    sc.z.ensure(size_t(R) * Is);
    ys.push_back(sc.y.ensure(size_t(R) * H));
  }

  // With one subpool, its leader also merges the outputs (no hand-over to the dispatcher and back).
  const bool merge_on_leader = pool_.subpool_count() == 1;
  const FloatOutput output{out, true};
  if (na > 0 && w.converts_inputs()) w.prepare_inputs(R);
  if (na > 0 || merge_on_leader) {
    pool_.for_each_subpool([&](int s) {
      Subpool& sp = pool_.subpool(s);
      if (na > 0) compute_experts(w, rt, x, ys[s], level, s);
      if (merge_on_leader) combine_expert_outputs(sp, rt, weights, ys, H, output);
    });
  }
  if (!merge_on_leader) combine_expert_outputs(pool_, rt, weights, ys, H, output);
}

void InferEngine::compute_experts(InferWeights& w, const Routing& rt, const bf16_t* x, float* y, IsaLevel level,
                                  int s) {
  const int H = config_.hidden_size, Is = w.slice_size(), R = rt.rows();
  const int na = static_cast<int>(rt.active_experts.size());
  const std::vector<int>& experts = rt.active_experts;
  const SwigluKernels swiglu = swiglu_kernels(level);
  const bool convert = w.converts_inputs();
  Subpool& sp = pool_.subpool(s);
  bf16_t* X = scratch_->slices[s].x.data();
  bf16_t* z = scratch_->slices[s].z.data();
  row_pass(sp, na, size_t(R) * H, [&](int i) {
    const int e = experts[i], b = rt.expert_begin[e];
    gather_expert_rows(rt, e, x, H, X);
    if (convert) w.convert_gate_up_input(level, s, X, b, b + rt.rows_of(e));
  });
  // z = silu(x W_gate^T) * (x W_up^T), per (expert, intermediate block); g and u are indexed
  // by the slice's column.
  const int iw = block_columns(Is, na, sp.thread_count()), ib = block_count(Is, iw);
  sp.parallel_for(na * ib, [&](int task) {
    const int e = experts[task / ib], c0 = (task % ib) * iw;
    const int nc = std::min(iw, Is - c0), b = rt.expert_begin[e], n = rt.rows_of(e);
    float* g = thread_floats(2 * size_t(n) * Is);
    float* u = g + size_t(n) * Is;
    w.gate_up(level, s, e, X, b, n, c0, nc, g, u, Is);
    for (int m = 0; m < n; ++m) {
      const size_t at = size_t(m) * Is + c0;
      swiglu.forward(g + at, u + at, z + size_t(b + m) * Is + c0, nc);
    }
  });
  if (convert)
    row_pass(sp, na, size_t(R) * Is, [&](int i) {
      const int e = experts[i], b = rt.expert_begin[e];
      w.convert_down_input(level, s, z, b, b + rt.rows_of(e));
    });
  // y = z W_down^T (this slice's share), per (expert, hidden block).
  const int hw = block_columns(H, na, sp.thread_count()), hb = block_count(H, hw);
  sp.parallel_for(na * hb, [&](int task) {
    const int e = experts[task / hb], h0 = (task % hb) * hw;
    const int nh = std::min(hw, H - h0), b = rt.expert_begin[e], n = rt.rows_of(e);
    w.down(level, s, e, z, b, n, h0, nh, y + size_t(b) * H, H);
  });
}

}  // namespace kt_moe
