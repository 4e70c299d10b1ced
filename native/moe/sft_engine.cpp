// SftEngine: weight slices, the forward cache, and the forward / backward as phases of
// expert-block tasks on the worker pool (each phase a barrier). Rows are routed (token, slot)
// pairs grouped by expert (routing.hpp); "slice" is one subpool's share of the intermediate size.
#include "moe/sft_engine.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

#include "cpu/cpu_features.hpp"
#include "moe/bf16.hpp"
#include "moe/expert_tasks.hpp"
#include "moe/gemm_calls.hpp"
#include "moe/lora_gradient_blocks.hpp"

namespace kt_moe {
namespace {

// dst [m, r] = bf16(a [m, K] mk . b): a thin LoRA product, rounded because it feeds the next GEMM.
void thin_product(GemmFn gemm, BLayout b_layout, int m, int r, int k, const bf16_t* a, int64_t lda,
                  const bf16_t* b, int64_t ldb, bf16_t* dst) {
  float* tmp = thread_floats(size_t(m) * r);
  gemm({m, r, k, a, lda, ALayout::mk, b, ldb, b_layout, tmp, r, 1.0f, false});
  to_bf16(tmp, dst, size_t(m) * r);
}

}  // namespace

// What forward() computes and backward() reads. R = routed rows, Is = slice size.
struct SftEngine::ForwardState {
  Routing routing;
  std::vector<float> weights;  // [q * k] routing weights
  Buffer<bf16_t> x;            // [R, H] the rows' tokens
  Buffer<bf16_t> ax_gate;      // [R, r] A_g x
  Buffer<bf16_t> ax_up;        // [R, r] A_u x
  struct PerSlice {
    Buffer<float> gate, up;    // [R, Is] pre-activation g and u
    Buffer<bf16_t> az;         // [R, r] this slice's share of A_d z
    Buffer<float> y;           // [R, H] this slice's share of the expert output; slice 0 ends as the sum
  };
  std::vector<PerSlice> slices;

  // Calls f(buffer) for every buffer.
  template <class F>
  void each_buffer(F&& f) {
    f(x), f(ax_gate), f(ax_up);
    for (PerSlice& s : slices) f(s.gate), f(s.up), f(s.az), f(s.y);
  }
};

// Scratch of one forward or backward, reused by the next.
struct SftEngine::Scratch {
  Buffer<bf16_t> d;   // [R, H] w * dy
  Buffer<bf16_t> bd;  // [R, r] B_d^T d
  Buffer<float> grads[6];  // several slices: the LoRA gradients summed in fp32 (GradientOutputs order)
  struct PerSlice {
    Buffer<bf16_t> z, dg, du;  // [R, Is]
    Buffer<float> dz;          // [R, Is]
    Buffer<bf16_t> bg, bu;     // [R, r] this slice's share of B_g^T dg, B_u^T du
    Buffer<float> dx;          // [R, H] this slice's share of grad_input rows
    Buffer<float> gate_a, up_a, down_b;  // slices >= 1: their shares of the summed LoRA gradients
  };
  std::vector<PerSlice> slices;

  // Calls f(buffer) for every buffer.
  template <class F>
  void each_buffer(F&& f) {
    f(d), f(bd);
    for (Buffer<float>& g : grads) f(g);
    for (PerSlice& s : slices)
      f(s.z), f(s.dg), f(s.du), f(s.dz), f(s.bg), f(s.bu), f(s.dx), f(s.gate_a), f(s.up_a), f(s.down_b);
  }
};

SftEngine::SftEngine(const MOESFTConfig& config, WorkerPool& pool)
    : config_(config), pool_(pool), scratch_(std::make_unique<Scratch>()), tickets_(pool) {
  const MOESFTConfig& c = config_;
  if (c.expert_num < 1 || c.hidden_size < 1 || c.intermediate_size < 1 || c.experts_per_token < 1 ||
      c.lora_rank < 1 || c.max_cache_depth < 1 || c.tp_size < 1)
    throw std::invalid_argument("MOESFTConfig: expert_num, hidden_size, intermediate_size, experts_per_token, "
                                "lora_rank, max_cache_depth and tp_size must be positive");
  if (c.num_gpu_experts < 0 || c.num_gpu_experts > c.expert_num)
    throw std::invalid_argument("MOESFTConfig: num_gpu_experts must be in [0, expert_num]");
  if (c.tp_size != pool.subpool_count())
    throw std::invalid_argument("MOESFTConfig.tp_size (" + std::to_string(c.tp_size) +
                                ") must equal the pool's subpool count (" + std::to_string(pool.subpool_count()) + ")");
  if (c.intermediate_size % c.tp_size != 0)
    throw std::invalid_argument("MOESFTConfig: intermediate_size must be divisible by tp_size");
  slice_size_ = c.intermediate_size / c.tp_size;
  scale_ = c.lora_alpha / static_cast<float>(c.lora_rank);
  weights_ = StagedWeights<SftBaseWeights>(make_sft_base_weights(c, pool));
  scratch_->slices.resize(c.tp_size);
}

SftEngine::~SftEngine() = default;

bool SftEngine::weights_loaded() const {
  std::lock_guard<std::mutex> lock(call_mutex_);
  return weights_.current_complete(config_.expert_num);
}

std::shared_ptr<const SftBaseWeights> SftEngine::base() const {
  std::lock_guard<std::mutex> lock(call_mutex_);
  return weights_.current();
}

void SftEngine::check_no_saved_forward(const char* call) const {
  if (!cache_.empty())
    throw std::runtime_error(std::string(call) + ": " + std::to_string(cache_.size()) +
                             " saved forward(s) wait for backward(), which must read the base their forward read: "
                             "call backward() for them before loading new weights");
}

void SftEngine::begin_load() {
  std::shared_ptr<SftBaseWeights> fresh = make_sft_base_weights(config_, pool_);
  std::lock_guard<std::mutex> lock(call_mutex_);
  check_no_saved_forward("begin_load");
  fresh = weights_.restart(std::move(fresh));  // a staged base left over, freed after the lock is released
}

void SftEngine::commit_load() {
  std::shared_ptr<SftBaseWeights> previous;  // freed after the lock is released
  std::lock_guard<std::mutex> lock(call_mutex_);
  check_no_saved_forward("commit_load");
  previous = weights_.commit(config_.expert_num);
}

void SftEngine::abort_load() {
  std::shared_ptr<SftBaseWeights> dropped;
  std::lock_guard<std::mutex> lock(call_mutex_);
  dropped = weights_.abort();
}

int SftEngine::staged_count() const {
  std::lock_guard<std::mutex> lock(call_mutex_);
  return weights_.staged_count();
}

template <class Format>
Format& SftEngine::staged_as(const char* instead) {
  const std::shared_ptr<SftBaseWeights>& staged =
      weights_.staged([&] { return make_sft_base_weights(config_, pool_); });
  auto* format = dynamic_cast<Format*>(staged.get());
  if (!format)
    throw std::invalid_argument("method " + config_.method + " stores its experts as " + staged->format() +
                                ": load them " + instead);
  return *format;
}

void SftEngine::load_expert(int slot, const bf16_t* gate, const bf16_t* up, const bf16_t* down) {
  std::lock_guard<std::mutex> lock(call_mutex_);
  Bf16SftBase& base = staged_as<Bf16SftBase>("as quantized parts, not bf16");
  base.check_slot(slot);
  run([&] { base.load(slot, gate, up, down); });
}

void SftEngine::load_quant_expert(int slot, const MatrixParts& gate, const MatrixParts& up, const MatrixParts& down) {
  std::lock_guard<std::mutex> lock(call_mutex_);
  QuantSftBase& base = staged_as<QuantSftBase>("as bf16, not quantized parts");
  base.check_slot(slot);
  run([&] { base.load(slot, gate, up, down); });
}

void SftEngine::set_lora(const LoraTensors& lora) {
  if (!lora.gate_a || !lora.gate_b || !lora.up_a || !lora.up_b || !lora.down_a || !lora.down_b)
    throw std::invalid_argument("set_lora: every LoRA tensor is required");
  std::lock_guard<std::mutex> lock(call_mutex_);
  lora_ = lora;
}

void SftEngine::clear_lora() {
  std::lock_guard<std::mutex> lock(call_mutex_);
  lora_ = LoraTensors();
}

void SftEngine::check_ready() const {
  if (!weights_.current_complete(config_.expert_num))
    throw std::runtime_error("Weights not loaded: call load_weights() or load_weights_from_tensors() first (" +
                             std::to_string(weights_.current()->loaded_count()) + " of " +
                             std::to_string(config_.expert_num) + " experts loaded)");
  if (!lora_set()) throw std::runtime_error("LoRA weights not initialized: call init_lora_weights() first");
}

std::unique_ptr<SftEngine::ForwardState> SftEngine::acquire_state() {
  if (free_.empty()) return std::make_unique<ForwardState>();
  std::unique_ptr<ForwardState> state = std::move(free_.back());
  free_.pop_back();
  return state;
}

void SftEngine::release_state(std::unique_ptr<ForwardState> state) {
  if (free_.size() >= 2) return;  // two are enough for save / no-save alternation
  const size_t keep = scratch_keep_bytes();
  state->each_buffer([keep](auto& buffer) { buffer.end_call(keep); });
  free_.push_back(std::move(state));
}

size_t SftEngine::scratch_bytes() const {
  std::lock_guard<std::mutex> lock(call_mutex_);
  size_t bytes = 0;
  auto add = [&bytes](const auto& buffer) { bytes += buffer.bytes(); };
  scratch_->each_buffer(add);
  for (const std::unique_ptr<ForwardState>& state : free_) state->each_buffer(add);
  return bytes;
}

size_t SftEngine::cached_bytes_per_routed_slot() const {
  const size_t H = config_.hidden_size, r = config_.lora_rank, Is = slice_size_, tp = config_.tp_size;
  // x, A_g x, A_u x; per slice g, u (fp32), A_d z share (bf16), y share (fp32); the slot's routing
  return H * 2 + 2 * r * 2 + tp * (2 * Is * 4 + r * 2 + H * 4) + 4 * sizeof(int) + sizeof(float);
}

void SftEngine::forward(int q, const int64_t* expert_ids, const float* weights, const bf16_t* x,
                        const FloatOutput& out, bool save) {
  std::lock_guard<std::mutex> lock(call_mutex_);
  forward_locked(q, expert_ids, weights, x, out, save);
}

void SftEngine::forward_locked(int q, const int64_t* expert_ids, const float* weights, const bf16_t* x,
                               const FloatOutput& out, bool save) {
  check_ready();
  if (q < 1) throw std::invalid_argument("forward: q must be positive");
  if (save && int(cache_.size()) >= config_.max_cache_depth)
    throw std::runtime_error("Forward cache full: " + std::to_string(cache_.size()) +
                             " saved forwards (max_cache_depth) are waiting for backward()");
  std::unique_ptr<ForwardState> state = acquire_state();
  state->routing = route_tokens(expert_ids, q, config_.experts_per_token, config_.expert_num,
                                config_.num_gpu_experts);
  state->weights.assign(weights, weights + size_t(q) * config_.experts_per_token);
  const EngineKernels kernels = EngineKernels::for_level(active_isa_level());
  run([&] { compute_forward(*state, x, out, kernels); });
  for (Scratch::PerSlice& sc : scratch_->slices) sc.z.end_call(scratch_keep_bytes());  // backward ensures it again
  if (save)
    cache_.push_back(std::move(state));
  else
    release_state(std::move(state));
}

void SftEngine::compute_forward(ForwardState& st, const bf16_t* x, const FloatOutput& out,
                                const EngineKernels& kernels) {
  const SftBaseWeights& frozen = *weights_.current();
  const GemmFn gemm = kernels.base.gemm;
  const Routing& rt = st.routing;
  const int H = config_.hidden_size, I = config_.intermediate_size, r = config_.lora_rank;
  const int Is = slice_size_, R = rt.rows(), na = static_cast<int>(rt.active_experts.size());
  const std::vector<int>& experts = rt.active_experts;
  bf16_t* X = st.x.ensure(size_t(R) * H);
  bf16_t* ax_gate = st.ax_gate.ensure(size_t(R) * r);
  bf16_t* ax_up = st.ax_up.ensure(size_t(R) * r);
  st.slices.resize(config_.tp_size);
  for (int s = 0; s < config_.tp_size; ++s) {
    st.slices[s].gate.ensure(size_t(R) * Is);
    st.slices[s].up.ensure(size_t(R) * Is);
    st.slices[s].az.ensure(size_t(R) * r);
    st.slices[s].y.ensure(size_t(R) * H);
    scratch_->slices[s].z.ensure(size_t(R) * Is);
  }

  // Gather each expert's tokens; LoRA A products (the same for every slice).
  pool_.parallel_for_all(na, [&](int i) {
    const int e = experts[i], b = rt.expert_begin[e], n = rt.rows_of(e);
    gather_expert_rows(rt, e, x, H, X);
    thin_product(gemm, BLayout::nk, n, r, H, X + size_t(b) * H, H, lora_.gate_a + size_t(e) * r * H, H,
                 ax_gate + size_t(b) * r);
    thin_product(gemm, BLayout::nk, n, r, H, X + size_t(b) * H, H, lora_.up_a + size_t(e) * r * H, H,
                 ax_up + size_t(b) * r);
  });

  pool_.for_each_subpool([&](int s) {
    Subpool& sp = pool_.subpool(s);
    const int begin = s * Is;
    ForwardState::PerSlice& ss = st.slices[s];
    bf16_t* z = scratch_->slices[s].z.data();
    // g = W_g x + s B_g (A_g x), u likewise, z = silu(g) * u: per (expert, intermediate block).
    const int iw = block_columns(Is, na, sp.thread_count()), ib = block_count(Is, iw);
    sp.parallel_for(na * ib, [&](int task) {
      const int e = experts[task / ib], c0 = (task % ib) * iw;
      const int nc = std::min(iw, Is - c0), b = rt.expert_begin[e], n = rt.rows_of(e);
      float* g = ss.gate.data() + size_t(b) * Is + c0;
      float* u = ss.up.data() + size_t(b) * Is + c0;
      const size_t b_off = (size_t(e) * I + begin + c0) * r;
      base_nt(kernels.base, frozen.weight(s, e, BaseMatrix::gate), n, c0, c0 + nc, X + size_t(b) * H, H, g, Is);
      gemm_nt(gemm, n, nc, r, ax_gate + size_t(b) * r, r, lora_.gate_b + b_off, r, g, Is, scale_, true);
      base_nt(kernels.base, frozen.weight(s, e, BaseMatrix::up), n, c0, c0 + nc, X + size_t(b) * H, H, u, Is);
      gemm_nt(gemm, n, nc, r, ax_up + size_t(b) * r, r, lora_.up_b + b_off, r, u, Is, scale_, true);
      for (int m = 0; m < n; ++m)
        kernels.swiglu.forward(g + size_t(m) * Is, u + size_t(m) * Is, z + size_t(b + m) * Is + c0, nc);
    });
    // This slice's share of A_d z, per expert.
    sp.parallel_for(na, [&](int i) {
      const int e = experts[i], b = rt.expert_begin[e], n = rt.rows_of(e);
      thin_product(gemm, BLayout::nk, n, r, Is, z + size_t(b) * Is, Is, lora_.down_a + size_t(e) * r * I + begin,
                   I, ss.az.data() + size_t(b) * r);
    });
    // y = W_d z + s B_d (A_d z) (this slice's share), per (expert, hidden block).
    const int hw = block_columns(H, na, sp.thread_count()), hb = block_count(H, hw);
    sp.parallel_for(na * hb, [&](int task) {
      const int e = experts[task / hb], h0 = (task % hb) * hw;
      const int nh = std::min(hw, H - h0), b = rt.expert_begin[e], n = rt.rows_of(e);
      float* y = ss.y.data() + size_t(b) * H + h0;
      base_nt(kernels.base, frozen.weight(s, e, BaseMatrix::down), n, h0, h0 + nh, z + size_t(b) * Is, Is, y, H);
      gemm_nt(gemm, n, nh, r, ss.az.data() + size_t(b) * r, r, lora_.down_b + (size_t(e) * H + h0) * r, r, y, H,
              scale_, true);
    });
  });

  // out[t] = sum_j w_j y_(t, j); slice 0's y becomes the sum over slices (kept for backward).
  std::vector<float*> ys;
  for (ForwardState::PerSlice& ss : st.slices) ys.push_back(ss.y.data());
  combine_expert_outputs(pool_, rt, st.weights.data(), ys, H, out);
}

void SftEngine::discard_saved_forward() {
  std::lock_guard<std::mutex> lock(call_mutex_);
  if (cache_.empty()) throw std::runtime_error("No forward cache available: nothing to discard");
  std::unique_ptr<ForwardState> state = std::move(cache_.back());
  cache_.pop_back();
  release_state(std::move(state));
}

void SftEngine::backward(int q, const bf16_t* grad_out, const FloatOutput& grad_in, const GradientOutputs& grads,
                         float* grad_weights) {
  std::lock_guard<std::mutex> lock(call_mutex_);
  if (cache_.empty())
    throw std::runtime_error("No forward cache available: call forward_sft(..., save_for_backward=True) first");
  if (q != cache_.back()->routing.q)
    throw std::invalid_argument("grad_output has " + std::to_string(q) + " tokens, the saved forward had " +
                                std::to_string(cache_.back()->routing.q));
  std::unique_ptr<ForwardState> state = std::move(cache_.back());
  cache_.pop_back();
  const EngineKernels kernels = EngineKernels::for_level(active_isa_level());
  const size_t E = config_.expert_num, H = config_.hidden_size, I = config_.intermediate_size;
  const size_t r = config_.lora_rank;
  const bool direct = config_.tp_size == 1;  // one slice: the tasks store the gradients themselves
  LoraGradients fp32;
  if (!direct) {
    Buffer<float>* g = scratch_->grads;
    fp32 = {g[0].ensure(E * r * H), g[1].ensure(E * I * r), g[2].ensure(E * r * H),
            g[3].ensure(E * I * r), g[4].ensure(E * r * I), g[5].ensure(E * H * r)};
  }
  run([&] {
    compute_backward(*state, grad_out, grad_in, GradientBlocks(fp32, grads, direct), grad_weights, kernels);
    if (!direct) write_gradients(fp32, grads);
  });
  const size_t keep = scratch_keep_bytes();
  scratch_->each_buffer([keep](auto& buffer) { buffer.end_call(keep); });
  release_state(std::move(state));
}

void SftEngine::write_gradients(const LoraGradients& grads, const GradientOutputs& out) {
  const size_t H = config_.hidden_size, I = config_.intermediate_size, r = config_.lora_rank;
  const float* src[6] = {grads.gate_a, grads.gate_b, grads.up_a, grads.up_b, grads.down_a, grads.down_b};
  const size_t per_expert[6] = {r * H, I * r, r * H, I * r, r * I, H * r};
  pool_.parallel_for_all(6 * config_.expert_num, [&](int task) {
    const int which = task % 6;
    const size_t n = per_expert[which], at = size_t(task / 6) * n;
    out[which].store(at, src[which] + at, n);
  });
}

void SftEngine::compute_backward(ForwardState& st, const bf16_t* grad_out, const FloatOutput& grad_in,
                                 const GradientBlocks& grads, float* grad_weights, const EngineKernels& kernels) {
  const SftBaseWeights& frozen = *weights_.current();
  const GemmFn gemm = kernels.base.gemm;
  const Routing& rt = st.routing;
  const int E = config_.expert_num, H = config_.hidden_size, I = config_.intermediate_size;
  const int r = config_.lora_rank, k = rt.k, Is = slice_size_, R = rt.rows(), tp = config_.tp_size;
  const int na = static_cast<int>(rt.active_experts.size());
  const std::vector<int>& experts = rt.active_experts;
  bf16_t* D = scratch_->d.ensure(size_t(R) * H);
  bf16_t* bd = scratch_->bd.ensure(size_t(R) * r);
  for (int s = 0; s < tp; ++s) {
    Scratch::PerSlice& sc = scratch_->slices[s];
    sc.z.ensure(size_t(R) * Is);
    sc.dg.ensure(size_t(R) * Is);
    sc.du.ensure(size_t(R) * Is);
    sc.dz.ensure(size_t(R) * Is);
    sc.bg.ensure(size_t(R) * r);
    sc.bu.ensure(size_t(R) * r);
    sc.dx.ensure(size_t(R) * H);
    if (s > 0) {
      sc.gate_a.ensure(size_t(E) * r * H);
      sc.up_a.ensure(size_t(E) * r * H);
      sc.down_b.ensure(size_t(E) * H * r);
    }
  }

  // dL/dw = <dy, y_e> per slot; d = w dy per row.
  pool_.parallel_for_all(rt.q, [&](int t) {
    const bf16_t* dy = grad_out + size_t(t) * H;
    for (int j = 0; j < k; ++j) {
      const size_t slot = size_t(t) * k + j;
      const int row = rt.slot_row[slot];
      if (row < 0) {
        grad_weights[slot] = 0.0f;
        continue;
      }
      const float* y = st.slices[0].y.data() + size_t(row) * H;
      const float wt = st.weights[slot];
      bf16_t* d = D + size_t(row) * H;
      float dot = 0.0f;
      for (int h = 0; h < H; ++h) {
        const float g = bf16_to_float(dy[h]);
        dot += g * y[h];
        d[h] = float_to_bf16(wt * g);
      }
      grad_weights[slot] = dot;
    }
  });
  // Zero the gradients of experts without rows (the phases below overwrite the others); B_d^T d
  // per expert.
  pool_.parallel_for_all(E, [&](int e) {
    if (rt.rows_of(e) > 0) return;
    const size_t rh = size_t(r) * H, ri = size_t(r) * I;
    for (int which : {kGateA, kUpA, kDownB}) grads.zero(which, size_t(e) * rh, rh);
    for (int which : {kGateB, kUpB, kDownA}) grads.zero(which, size_t(e) * ri, ri);
  });
  pool_.parallel_for_all(na, [&](int i) {
    const int e = experts[i], b = rt.expert_begin[e], n = rt.rows_of(e);
    thin_product(gemm, BLayout::kn, n, r, H, D + size_t(b) * H, H, lora_.down_b + size_t(e) * H * r, r,
                 bd + size_t(b) * r);
  });

  pool_.for_each_subpool([&](int s) {
    Subpool& sp = pool_.subpool(s);
    const int begin = s * Is;
    const ForwardState::PerSlice& ss = st.slices[s];
    Scratch::PerSlice& sc = scratch_->slices[s];
    bf16_t *z = sc.z.data(), *dg = sc.dg.data(), *du = sc.du.data();
    // dz = W_d^T d + s A_d^T (B_d^T d); dg, du; dA_d, dB_g, dB_u: per (expert, intermediate block).
    const int iw = block_columns(Is, na, sp.thread_count()), ib = block_count(Is, iw);
    sp.parallel_for(na * ib, [&](int task) {
      const int e = experts[task / ib], c0 = (task % ib) * iw;
      const int nc = std::min(iw, Is - c0), b = rt.expert_begin[e], n = rt.rows_of(e);
      float* dz = sc.dz.data() + size_t(b) * Is + c0;
      base_nn(kernels.base, frozen.weight(s, e, BaseMatrix::down), n, c0, c0 + nc, D + size_t(b) * H, H, dz, Is);
      gemm_nn(gemm, n, nc, r, bd + size_t(b) * r, r, lora_.down_a + size_t(e) * r * I + begin + c0, I, dz, Is,
              scale_, true);
      for (int m = 0; m < n; ++m) {
        const size_t at = size_t(b + m) * Is + c0;
        kernels.swiglu.backward(ss.gate.data() + at, ss.up.data() + at, dz + size_t(m) * Is, z + at, dg + at,
                                du + at, nc);
      }
      const size_t rows_at = size_t(b) * Is + c0;
      grads.compute(kDownA, size_t(e) * r * I + begin + c0, r, nc, I, [&](float* c, int64_t ldc) {
        gemm_tn(gemm, r, nc, n, bd + size_t(b) * r, r, z + rows_at, Is, c, ldc, scale_);
      });
      const size_t b_off = (size_t(e) * I + begin + c0) * r;
      grads.compute(kGateB, b_off, nc, r, r, [&](float* c, int64_t ldc) {
        gemm_tn(gemm, nc, r, n, dg + rows_at, Is, st.ax_gate.data() + size_t(b) * r, r, c, ldc, scale_);
      });
      grads.compute(kUpB, b_off, nc, r, r, [&](float* c, int64_t ldc) {
        gemm_tn(gemm, nc, r, n, du + rows_at, Is, st.ax_up.data() + size_t(b) * r, r, c, ldc, scale_);
      });
    });
    // Per expert: this slice's B^T dg, B^T du and its shares of dA_g, dA_u, dB_d (slice 0's where
    // `grads` keeps them, the others' in their own buffers, added below).
    auto share = [&](int which, float* own, size_t at, int rows, int cols, auto&& compute_block) {
      if (s == 0)
        grads.compute(which, at, rows, cols, cols, compute_block);
      else
        compute_block(own + at, int64_t(cols));
    };
    sp.parallel_for(na, [&](int i) {
      const int e = experts[i], b = rt.expert_begin[e], n = rt.rows_of(e);
      const size_t b_off = (size_t(e) * I + begin) * r;
      thin_product(gemm, BLayout::kn, n, r, Is, dg + size_t(b) * Is, Is, lora_.gate_b + b_off, r,
                   sc.bg.data() + size_t(b) * r);
      thin_product(gemm, BLayout::kn, n, r, Is, du + size_t(b) * Is, Is, lora_.up_b + b_off, r,
                   sc.bu.data() + size_t(b) * r);
      const bf16_t* xe = st.x.data() + size_t(b) * H;
      const size_t rh = size_t(e) * r * H;
      share(kGateA, sc.gate_a.data(), rh, r, H, [&](float* c, int64_t ldc) {
        gemm_tn(gemm, r, H, n, sc.bg.data() + size_t(b) * r, r, xe, H, c, ldc, scale_);
      });
      share(kUpA, sc.up_a.data(), rh, r, H, [&](float* c, int64_t ldc) {
        gemm_tn(gemm, r, H, n, sc.bu.data() + size_t(b) * r, r, xe, H, c, ldc, scale_);
      });
      share(kDownB, sc.down_b.data(), rh, H, r, [&](float* c, int64_t ldc) {
        gemm_tn(gemm, H, r, n, D + size_t(b) * H, H, ss.az.data() + size_t(b) * r, r, c, ldc, scale_);
      });
    });
    // dx = W_g^T dg + W_u^T du + s (A_g^T B_g^T dg + A_u^T B_u^T du) (this slice's share), per (expert, hidden block).
    const int hw = block_columns(H, na, sp.thread_count()), hb = block_count(H, hw);
    sp.parallel_for(na * hb, [&](int task) {
      const int e = experts[task / hb], h0 = (task % hb) * hw;
      const int nh = std::min(hw, H - h0), b = rt.expert_begin[e], n = rt.rows_of(e);
      float* dx = sc.dx.data() + size_t(b) * H + h0;
      const size_t a_off = size_t(e) * r * H + h0;
      base_nn(kernels.base, frozen.weight(s, e, BaseMatrix::gate), n, h0, h0 + nh, dg + size_t(b) * Is, Is, dx, H);
      base_nn(kernels.base, frozen.weight(s, e, BaseMatrix::up), n, h0, h0 + nh, du + size_t(b) * Is, Is, dx, H,
              true);
      gemm_nn(gemm, n, nh, r, sc.bg.data() + size_t(b) * r, r, lora_.gate_a + a_off, H, dx, H, scale_, true);
      gemm_nn(gemm, n, nh, r, sc.bu.data() + size_t(b) * r, r, lora_.up_a + a_off, H, dx, H, scale_, true);
    });
  });

  // grad_input[t] = sum over the token's rows and the slices; the slices' LoRA gradient shares.
  pool_.parallel_for_all(rt.q, [&](int t) {
    float* acc = thread_floats(H);
    std::fill(acc, acc + H, 0.0f);
    for (int j = 0; j < k; ++j) {
      const int row = rt.slot_row[size_t(t) * k + j];
      if (row < 0) continue;
      for (int s = 0; s < tp; ++s) {
        const float* dx = scratch_->slices[s].dx.data() + size_t(row) * H;
        for (int h = 0; h < H; ++h) acc[h] += dx[h];
      }
    }
    grad_in.store(size_t(t) * H, acc, H);
  });
  if (tp > 1)
    pool_.parallel_for_all(na, [&](int i) {
      const int e = experts[i];
      float *gate_a = grads.sum(kGateA), *up_a = grads.sum(kUpA), *down_b = grads.sum(kDownB);
      for (int s = 1; s < tp; ++s) {
        const Scratch::PerSlice& sc = scratch_->slices[s];
        const size_t ra = size_t(e) * r * H, br = size_t(e) * H * r;
        for (size_t j = 0; j < size_t(r) * H; ++j) {
          gate_a[ra + j] += sc.gate_a.data()[ra + j];
          up_a[ra + j] += sc.up_a.data()[ra + j];
          down_b[br + j] += sc.down_b.data()[br + j];
        }
      }
    });
}

void SftEngine::warm_up() {
  std::lock_guard<std::mutex> lock(call_mutex_);
  check_ready();
  const int k = config_.experts_per_token, first = config_.num_gpu_experts, cpu_experts = config_.expert_num - first;
  const int q = std::max(1, (cpu_experts + k - 1) / k);
  std::vector<int64_t> ids(size_t(q) * k, -1);
  for (int i = 0; i < cpu_experts; ++i) ids[i] = first + i;
  std::vector<float> weights(ids.size(), 1.0f);
  std::vector<bf16_t> x(size_t(q) * config_.hidden_size, 0), out(x.size());
  forward_locked(q, ids.data(), weights.data(), x.data(), FloatOutput{out.data(), true}, false);
}

}  // namespace kt_moe
