// The nanobind module kt_moe._native: binds the CPU probe, the read-only configs and the worker
// pool. Only bindings live here; behaviour lives in the files these declarations come from.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "config/moe_config.hpp"
#include "cpu/cpu_features.hpp"
#include "kernels/gemm_bf16.hpp"
#include "pool/numa_topology.hpp"
#include "pool/pool_selftest.hpp"
#include "pool/py_worker_pool.hpp"
#include "py/py_dequant_kernels.hpp"
#include "py/py_infer_engine.hpp"
#include "py/py_quant_kernels.hpp"
#include "py/py_weight_formats.hpp"
#include "py/py_weight_quantizers.hpp"
#include "py/py_sft_engine.hpp"
#include "py/py_swiglu_kernels.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

std::vector<std::string> level_names(const std::vector<kt_moe::IsaLevel>& levels) {
  std::vector<std::string> names;
  for (kt_moe::IsaLevel l : levels) names.emplace_back(kt_moe::isa_level_name(l));
  return names;
}

nb::dict cpu_info() {
  const kt_moe::CpuFeatures& f = kt_moe::cpu_features();
  nb::dict features;
  features["avx2"] = f.avx2;
  features["fma"] = f.fma;
  features["f16c"] = f.f16c;
  features["os_ymm_state"] = f.os_ymm_state;
  features["avx512f"] = f.avx512f;
  features["avx512bw"] = f.avx512bw;
  features["avx512vl"] = f.avx512vl;
  features["avx512dq"] = f.avx512dq;
  features["avx512_bf16"] = f.avx512_bf16;
  features["avx512_vnni"] = f.avx512_vnni;
  features["amx_tile"] = f.amx_tile;
  features["amx_bf16"] = f.amx_bf16;
  features["amx_int8"] = f.amx_int8;
  features["os_zmm_state"] = f.os_zmm_state;
  features["os_tile_state"] = f.os_tile_state;
  features["amx_permitted"] = f.amx_permitted;
  nb::dict info;
  info["vendor"] = f.vendor;
  info["features"] = features;
  info["levels"] = level_names(f.available_levels());
  info["selectable"] = level_names(f.selectable_levels());
  info["best"] = kt_moe::isa_level_name(f.best_level());
  info["active"] = kt_moe::isa_level_name(kt_moe::active_isa_level());
  return info;
}

template <class Config, class Class>
void bind_common_fields(Class& cls) {
  cls.def_ro("expert_num", &Config::expert_num)
      .def_ro("hidden_size", &Config::hidden_size)
      .def_ro("intermediate_size", &Config::intermediate_size)
      .def_ro("experts_per_token", &Config::experts_per_token)
      .def_ro("num_gpu_experts", &Config::num_gpu_experts)
      .def_ro("weight_path", &Config::weight_path)
      .def_ro("layer_idx", &Config::layer_idx)
      .def_ro("tp_size", &Config::tp_size)
      .def_ro("chunked_prefill_size", &Config::chunked_prefill_size)
      .def_ro("method", &Config::method);
}

void fill_common(kt_moe::MoECommonConfig& c, int expert_num, int hidden_size, int intermediate_size,
                 int experts_per_token, int num_gpu_experts, std::string weight_path, int layer_idx,
                 int tp_size, int chunked_prefill_size, std::string method) {
  c.expert_num = expert_num;
  c.hidden_size = hidden_size;
  c.intermediate_size = intermediate_size;
  c.experts_per_token = experts_per_token;
  c.num_gpu_experts = num_gpu_experts;
  c.weight_path = std::move(weight_path);
  c.layer_idx = layer_idx;
  c.tp_size = tp_size;
  c.chunked_prefill_size = chunked_prefill_size;
  c.method = std::move(method);
}

}  // namespace

NB_MODULE(_native, m) {
  m.doc() = "kt-moe native core: CPU probe, read-only engine configs, worker pool, engines";

  // ---- CPU probe -------------------------------------------------------------------------
  m.def("cpu_info", &cpu_info,
        "Features found by CPUID/XGETBV, the ISA levels chosen automatically where available, those set_isa accepts (amx_emulated too), "
        "the best and the active one.");
  m.def(
      "set_isa", [](const std::string& name) { kt_moe::set_active_isa_level(kt_moe::parse_isa_level(name)); },
      "level"_a, "Force the kernel ISA level for the rest of the process (ValueError if unknown or unsupported).");
  m.def("active_isa", []() { return std::string(kt_moe::isa_level_name(kt_moe::active_isa_level())); },
        "The ISA level kernels dispatch on (honours KT_MOE_ISA).");

  // ---- configs (read-only) ---------------------------------------------------------------
  using kt_moe::MOEConfig;
  using kt_moe::MOESFTConfig;
  auto moe_config = nb::class_<MOEConfig>(m, "MOEConfig", "Frozen inference engine configuration.");
  moe_config.def(
      "__init__",
      [](MOEConfig* self, int expert_num, int hidden_size, int intermediate_size, int experts_per_token,
         int num_gpu_experts, std::string weight_path, int layer_idx, int tp_size, int chunked_prefill_size,
         std::string method, bool cpu_save, std::optional<int> max_deferred_experts_per_token, int group_size,
         bool zero_point, std::vector<std::string> matrix_formats) {
        new (self) MOEConfig();
        fill_common(*self, expert_num, hidden_size, intermediate_size, experts_per_token, num_gpu_experts,
                    std::move(weight_path), layer_idx, tp_size, chunked_prefill_size, std::move(method));
        self->cpu_save = cpu_save;
        self->max_deferred_experts_per_token = max_deferred_experts_per_token;
        self->group_size = group_size;
        self->zero_point = zero_point;
        self->matrix_formats = std::move(matrix_formats);
      },
      nb::kw_only(), "expert_num"_a = 0, "hidden_size"_a = 0, "intermediate_size"_a = 0,
      "experts_per_token"_a = 0, "num_gpu_experts"_a = 0, "weight_path"_a = "", "layer_idx"_a = 0,
      "tp_size"_a = 1, "chunked_prefill_size"_a = 0, "method"_a = "", "cpu_save"_a = false,
      "max_deferred_experts_per_token"_a = nb::none(), "group_size"_a = 0, "zero_point"_a = false,
      "matrix_formats"_a = std::vector<std::string>{});
  bind_common_fields<MOEConfig>(moe_config);
  moe_config.def_ro("cpu_save", &MOEConfig::cpu_save)
      .def_ro("max_deferred_experts_per_token", &MOEConfig::max_deferred_experts_per_token)
      .def_ro("group_size", &MOEConfig::group_size,
              "The weight format's option: FP8's scale block side (0: one scale per output row), RAWINT4's "
              "inputs per scale, AMXINT4's inputs per INT4 scale (0 or 16: int4_group16; 64 or 128: int4_kgroup).")
      .def_ro("zero_point", &MOEConfig::zero_point,
              "AMXINT4 with group_size 64 or 128: a zero point per group (else symmetric).")
      .def_ro("matrix_formats", &MOEConfig::matrix_formats,
              "LLAMAFILE: the registered formats of gate, up and down (GGUF block types); empty otherwise.");

  auto sft_config = nb::class_<MOESFTConfig>(m, "MOESFTConfig", "Frozen SFT engine configuration (spec 2.1).");
  sft_config.def(
      "__init__",
      [](MOESFTConfig* self, int expert_num, int hidden_size, int intermediate_size, int experts_per_token,
         int num_gpu_experts, std::string weight_path, int layer_idx, int tp_size, int chunked_prefill_size,
         std::string method, int lora_rank, float lora_alpha, int max_cache_depth, int group_size, bool zero_point,
         std::string base_format) {
        new (self) MOESFTConfig();
        fill_common(*self, expert_num, hidden_size, intermediate_size, experts_per_token, num_gpu_experts,
                    std::move(weight_path), layer_idx, tp_size, chunked_prefill_size, std::move(method));
        self->lora_rank = lora_rank;
        self->lora_alpha = lora_alpha;
        self->max_cache_depth = max_cache_depth;
        self->group_size = group_size;
        self->zero_point = zero_point;
        self->base_format = std::move(base_format);
      },
      nb::kw_only(), "expert_num"_a = 0, "hidden_size"_a = 0, "intermediate_size"_a = 0,
      "experts_per_token"_a = 0, "num_gpu_experts"_a = 0, "weight_path"_a = "", "layer_idx"_a = 0,
      "tp_size"_a = 1, "chunked_prefill_size"_a = 0, "method"_a = "", "lora_rank"_a = 16,
      "lora_alpha"_a = 32.0f, "max_cache_depth"_a = 1, "group_size"_a = 128, "zero_point"_a = true,
      "base_format"_a = "");
  bind_common_fields<MOESFTConfig>(sft_config);
  sft_config.def_ro("lora_rank", &MOESFTConfig::lora_rank)
      .def_ro("lora_alpha", &MOESFTConfig::lora_alpha)
      .def_ro("max_cache_depth", &MOESFTConfig::max_cache_depth)
      .def_ro("group_size", &MOESFTConfig::group_size)
      .def_ro("zero_point", &MOESFTConfig::zero_point)
      .def_ro("base_format", &MOESFTConfig::base_format,
              "Empty, or the registered format the checkpoint ships that the base is kept in (AMXINT4_KGroup_SFT "
              "on a pack-quantized INT4 checkpoint: 'int4_packed').");

  // ---- kernels (test hooks) --------------------------------------------------------------
  {
    using Array = nb::ndarray<>;  // device, dtype, rank and strides are checked below
    // Checks one operand: a CPU [rows, cols] array of `dtype` with unit column stride; returns its
    // leading dimension (row stride, in elements).
    auto leading_dim = [](const Array& x, const char* name, nb::dlpack::dtype dtype, const char* dtype_name,
                          int64_t rows, int64_t cols) -> int64_t {
      auto fail = [name](const std::string& what) { throw std::invalid_argument(std::string(name) + ": " + what); };
      if (x.device_type() != nb::device::cpu::value) fail("expected a CPU array");
      if (x.dtype() != dtype) fail(std::string("expected dtype ") + dtype_name);
      if (x.ndim() != 2) fail("expected a 2-d array");
      if (int64_t(x.shape(0)) != rows || int64_t(x.shape(1)) != cols)
        fail("expected shape (" + std::to_string(rows) + ", " + std::to_string(cols) + "), got (" +
             std::to_string(x.shape(0)) + ", " + std::to_string(x.shape(1)) + ")");
      if (cols > 1 && x.stride(1) != 1) fail("rows must be contiguous (stride(1) == 1)");
      if (rows > 1 && x.stride(0) < cols) fail("row stride must be at least the row length");
      return rows > 1 ? x.stride(0) : std::max<int64_t>(cols, 1);
    };
    m.def(
        "gemm_bf16_test",
        [leading_dim](const std::string& level_name, Array a, const std::string& a_layout, Array b,
                      const std::string& b_layout, Array c, float alpha, bool accumulate, int64_t m_, int64_t n_,
                      int64_t k_) {
          const kt_moe::IsaLevel level = kt_moe::parse_runnable_isa_level(level_name);
          if (a_layout != "mk" && a_layout != "km") throw std::invalid_argument("a_layout must be 'mk' or 'km'");
          if (b_layout != "nk" && b_layout != "kn") throw std::invalid_argument("b_layout must be 'nk' or 'kn'");
          constexpr int64_t kMaxDim = 1 << 30;
          if (m_ < 0 || n_ < 0 || k_ < 0 || m_ > kMaxDim || n_ > kMaxDim || k_ > kMaxDim)
            throw std::invalid_argument("m, n and k must be in [0, 2^30]");
          const nb::dlpack::dtype bf16{static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
          kt_moe::GemmArgs args;
          args.m = int(m_), args.n = int(n_), args.k = int(k_);
          args.a_layout = a_layout == "mk" ? kt_moe::ALayout::mk : kt_moe::ALayout::km;
          args.b_layout = b_layout == "nk" ? kt_moe::BLayout::nk : kt_moe::BLayout::kn;
          const bool a_mk = args.a_layout == kt_moe::ALayout::mk, b_nk = args.b_layout == kt_moe::BLayout::nk;
          args.lda = leading_dim(a, "a", bf16, "bfloat16", a_mk ? m_ : k_, a_mk ? k_ : m_);
          args.ldb = leading_dim(b, "b", bf16, "bfloat16", b_nk ? n_ : k_, b_nk ? k_ : n_);
          args.ldc = leading_dim(c, "c", nb::dtype<float>(), "float32", m_, n_);
          args.a = static_cast<const kt_moe::bf16_t*>(a.data());
          args.b = static_cast<const kt_moe::bf16_t*>(b.data());
          args.c = static_cast<float*>(c.data());
          args.alpha = alpha;
          args.accumulate = accumulate;
          const kt_moe::GemmFn kernel = kt_moe::gemm_bf16_kernel(level);
          nb::gil_scoped_release release;
          kernel(args);
        },
        "level"_a, "a"_a, "a_layout"_a, "b"_a, "b_layout"_a, "c"_a.noconvert(), "alpha"_a, "accumulate"_a, "m"_a,
        "n"_a, "k"_a,
        "Test hook: c = (accumulate ? c : 0) + alpha * a @ b with the bf16 GEMM kernel of `level`. a: bf16 "
        "[m, k] (a_layout 'mk') or [k, m] ('km'); b: bf16 [n, k] ('nk') or [k, n] ('kn'); c: float32 [m, n], "
        "written in place. Row-strided views are accepted (stride(1) == 1). ValueError on bad input.");
  }

  // ---- worker pool -----------------------------------------------------------------------
  using kt_moe::PyWorkerPool;
  using CountArray = nb::ndarray<int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
  nb::class_<PyWorkerPool>(m, "WorkerPool", nb::is_weak_referenceable(),
                           "`threads` compute threads in `subpools` subpools (one per NUMA node on a server) "
                           "and an ordered task queue (submit, then sync). Idle threads sleep.")
      .def(nb::init<int, int>(), "threads"_a, "subpools"_a, "ValueError unless 1 <= subpools <= threads.")
      .def_prop_ro("thread_count", [](PyWorkerPool& p) { return p.pool().thread_count(); })
      .def_prop_ro("subpool_count", [](PyWorkerPool& p) { return p.pool().subpool_count(); })
      .def("sync", &PyWorkerPool::sync,
           "Wait, with the GIL released, for every task submitted so far; RuntimeError carrying the first "
           "task error since the last sync.")
      .def(
          "submit_selftest",
          [](PyWorkerPool& p, CountArray counts, int pause_us, int64_t fail_at, std::string message) {
            p.submit(kt_moe::count_task(p.pool(), counts.data(), static_cast<int64_t>(counts.shape(0)), pause_us,
                                        fail_at, std::move(message)),
                     {nb::ndarray<>(counts)});
          },
          // noconvert: an implicitly converted copy, not the caller's array, would receive the counts
          "counts"_a.noconvert(), nb::kw_only(), "pause_us"_a = 0, "fail_at"_a = -1,
          "message"_a = "selftest failure",
          "Diagnostic task: over all subpools add 1 to counts[i] for every i, sleeping pause_us per index; "
          "index fail_at raises RuntimeError(message) at the next sync.")
      .def(
          "run_selftest_here",
          [](PyWorkerPool& p, CountArray counts, int pause_us, int64_t fail_at, std::string message) {
            const std::function<void()> task = kt_moe::count_task(
                p.pool(), counts.data(), static_cast<int64_t>(counts.shape(0)), pause_us, fail_at, std::move(message));
            nb::gil_scoped_release unlocked;
            return p.pool().run_here_if_idle(task);
          },
          "counts"_a.noconvert(), nb::kw_only(), "pause_us"_a = 0, "fail_at"_a = -1,
          "message"_a = "selftest failure",
          "The submit_selftest task run by the calling thread (GIL released) when the pool has nothing queued or "
          "running: returns True, or False without running it. Its error is raised here, not at sync.");
  m.def(
      "numa_nodes",
      [](const std::string& sysfs_dir) {
        std::vector<std::pair<int, std::vector<int>>> nodes;
        for (const kt_moe::NumaNode& n : kt_moe::read_numa_nodes(sysfs_dir)) nodes.emplace_back(n.id, n.cpus);
        return nodes;
      },
      "sysfs_dir"_a = "/sys/devices/system/node",
      "NUMA nodes with CPUs as (id, cpus) pairs, read from sysfs; one node with every CPU without NUMA support.");
  m.def(
      "pool_numa_nodes",
      []() {
        std::vector<std::pair<int, std::vector<int>>> nodes;
        for (const kt_moe::NumaNode& n : kt_moe::numa_nodes()) nodes.emplace_back(n.id, n.cpus);
        return nodes;
      },
      "The nodes worker pools place subpools on, as (kernel id, cpus) pairs: numa_nodes() of the machine, or "
      "the pseudo-nodes of KT_MOE_FAKE_NUMA_NODES. ValueError when that variable is invalid.");

  kt_moe::py::bind_infer_engine(m);
  kt_moe::py::bind_quant_kernels(m);
  kt_moe::py::bind_weight_quantizers(m);
  kt_moe::py::bind_weight_formats(m);
  kt_moe::py::bind_dequant_kernels(m);
  kt_moe::py::bind_swiglu_kernels(m);

  // ---- SFT engine (spec 2.2) -------------------------------------------------------------
  using kt_moe::py::PySftEngine;
  nb::class_<PySftEngine>(m, "TP_MOE_SFT", nb::type_slots(kt_moe::py::held_object_slots<PySftEngine>),
                          "LoRA SFT engine of one MoE layer on a WorkerPool (one subpool per tensor-parallel part). "
                          "Every *_task runs on the pool and returns when done (GIL released).")
      .def(
          "__init__",
          [](PySftEngine* self, const kt_moe::MOESFTConfig& config, PyWorkerPool& pool) {
            new (self) PySftEngine(config, pool.pool());
          },
          "config"_a, "pool"_a, nb::keep_alive<1, 3>())
      .def_prop_ro("config", [](PySftEngine& e) { return e.engine().config(); })
      .def_prop_ro("weight_format", [](PySftEngine& e) { return std::string(e.engine().base()->format()); },
                   "How the base is stored: 'bf16', 'int8_channel', 'int4_group16' or 'int4_kgroup'.")
      .def(
          "stored_parts",
          [](PySftEngine& e, int slot, const std::string& matrix, int slice) {
            const std::shared_ptr<const kt_moe::SftBaseWeights> base = e.engine().base();
            const auto* canonical = dynamic_cast<const kt_moe::QuantSftBase*>(base.get());
            return kt_moe::py::stored_parts(canonical ? &canonical->experts() : nullptr, e.engine().config().method,
                                            slot, matrix, slice);
          },
          "slot"_a, "matrix"_a, "slice"_a = 0,
          "Test hook: the canonical parts kept of one expert's base matrix ('gate', 'up', 'down') in a subpool's "
          "slice, as bytes in part order (the quantized bases).")
      .def_prop_ro("resident_bytes_per_expert",
                   [](PySftEngine& e) { return e.engine().base()->resident_bytes_per_expert(); },
                   "Bytes one expert's base weights hold, all tensor-parallel slices together (scales included).")
      .def_prop_ro("cache_depth", [](PySftEngine& e) { return e.engine().cache_depth(); },
                   "Saved forwards waiting for backward.")
      .def("discard_saved_forward", [](PySftEngine& e) { e.engine().discard_saved_forward(); },
           nb::call_guard<nb::gil_scoped_release>(),
           "Drop the latest saved forward without a backward (RuntimeError when none is saved).")
      .def_prop_ro("cached_bytes_per_routed_slot",
                   [](PySftEngine& e) { return e.engine().cached_bytes_per_routed_slot(); },
                   "Bytes a saved forward holds per routed (token, slot) pair.")
      .def_prop_ro("scratch_bytes", [](PySftEngine& e) { return e.engine().scratch_bytes(); },
                   nb::call_guard<nb::gil_scoped_release>(),
                   "Bytes the per-call buffers hold now (scratch and states kept for reuse; saved forwards "
                   "not included).")
      .def_prop_rw(
          "scratch_keep_bytes", [](PySftEngine& e) { return e.engine().scratch_keep_bytes(); },
          [](PySftEngine& e, size_t bytes) { e.engine().set_scratch_keep_bytes(bytes); },
          "After each call, a per-call buffer larger than both what the call needed and this many bytes is "
          "freed (default 256 MiB).")
      .def("warm_up_task", [](PySftEngine& e) { e.engine().warm_up(); }, nb::call_guard<nb::gil_scoped_release>(),
           "One forward without saving over every CPU expert (needs weights and LoRA).")
      .def_prop_ro("weights_loaded", [](PySftEngine& e) { return e.engine().weights_loaded(); })
      .def_prop_ro("staged_count", [](PySftEngine& e) { return e.engine().staged_count(); },
                   "Slots of the load in progress (not committed) that hold an expert.")
      .def("begin_load", [](PySftEngine& e) { e.engine().begin_load(); }, nb::call_guard<nb::gil_scoped_release>(),
           "Start an all-or-nothing load: the load_*_task calls fill a fresh staged base that other calls do "
           "not read (a staged base left over is dropped). RuntimeError while saved forwards wait for backward.")
      .def("commit_load", [](PySftEngine& e) { e.engine().commit_load(); }, nb::call_guard<nb::gil_scoped_release>(),
           "Put the staged base in place once every slot holds an expert; RuntimeError otherwise, or while saved "
           "forwards wait for backward.")
      .def("abort_load", [](PySftEngine& e) { e.engine().abort_load(); }, nb::call_guard<nb::gil_scoped_release>(),
           "Drop the staged base; the base calls read stays as it was.")
      .def("load_weights_task", &PySftEngine::load_weights, "gate"_a.noconvert(), "up"_a.noconvert(),
           "down"_a.noconvert(), "physical_to_logical_map"_a.noconvert(),
           "gate, up [E_logical, I, H], down [E_logical, H, I] bf16; slot p gets logical expert map[p] (int64 [E]). "
           "All or nothing: begin_load, every slot, commit_load.")
      .def("load_expert_task", &PySftEngine::load_expert, "slot"_a, "gate"_a.noconvert(), "up"_a.noconvert(),
           "down"_a.noconvert(),
           "One expert (gate, up [I, H], down [H, I] bf16) into physical slot `slot` of the staged base "
           "(commit_load puts it in place).")
      .def("load_quant_expert_task", &PySftEngine::load_quant_expert, "slot"_a, "gate"_a, "up"_a, "down"_a,
           "One expert into physical slot `slot` of the staged base for the quantized methods: each of gate, up (W [I, H]) and down "
           "(W [H, I]) as the list of its canonical parts (kt_moe.quant): [q int8, scale fp32] for AMXINT8_SFT, "
           "[codes uint8, scale fp16, zero uint8 in sixteenths] (zero only with zero points) for the INT4 methods.")
      .def("update_lora_weights_task", &PySftEngine::update_lora, "gate_a"_a.noconvert(), "gate_b"_a.noconvert(),
           "up_a"_a.noconvert(), "up_b"_a.noconvert(), "down_a"_a.noconvert(), "down_b"_a.noconvert(),
           "Point the engine at the six bf16 LoRA tensors; they are read in place by later calls.")
      .def("forward_sft_task", &PySftEngine::forward, "qlen"_a, "k"_a, "expert_ids"_a.noconvert(),
           "weights"_a.noconvert(), "input"_a.noconvert(), "output"_a.noconvert(), "save"_a,
           "expert_ids int64 [q, k], weights fp32 [q, k], input bf16 [q, H] -> output bf16 or fp32 [q, H].")
      .def("backward_task", &PySftEngine::backward, "qlen"_a, "k"_a, "grad_output"_a.noconvert(),
           "grad_input"_a.noconvert(), "grad_gate_a"_a.noconvert(), "grad_gate_b"_a.noconvert(),
           "grad_up_a"_a.noconvert(), "grad_up_b"_a.noconvert(), "grad_down_a"_a.noconvert(),
           "grad_down_b"_a.noconvert(), "grad_weights"_a.noconvert(),
           "Pops the latest saved forward: grad_output bf16 [q, H] -> grad_input bf16 or fp32 [q, H], the LoRA "
           "gradients (fp32 or bf16 buffers, overwritten) and grad_weights fp32 [q, k].");
}
