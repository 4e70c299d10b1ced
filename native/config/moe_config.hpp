// Immutable native configurations handed from the validated Python model to the engines.
// Python validates every field (kt_moe/config.py); these structs only carry the values.
// Bound read-only: once built, no field can change.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace kt_moe {

// Fields shared by the inference and the SFT engines.
struct MoECommonConfig {
  int expert_num = 0;           // E: experts in the layer
  int hidden_size = 0;          // H
  int intermediate_size = 0;    // I: per-expert intermediate size
  int experts_per_token = 0;    // k: experts routed per token
  int num_gpu_experts = 0;      // experts [0, num_gpu_experts) live on the GPU and are skipped here
  std::string weight_path;      // directory holding the layer's weights
  int layer_idx = 0;            // which layer of the checkpoint
  int tp_size = 1;              // tensor-parallel parts = threadpool_count; each owns I / tp_size
  int chunked_prefill_size = 0; // most tokens one engine call is sized for
  std::string method;           // backend method name, e.g. "AMXINT4" or "AMXBF16_SFT"
};

// Inference engine configuration (spec 1.1 inference parameters).
struct MOEConfig : MoECommonConfig {
  bool cpu_save = false;                                  // keep results in CPU memory
  std::optional<int> max_deferred_experts_per_token;      // none: no deferral
  // The option of the method's weight format (formats/registry.cpp): FP8's scale block side
  // (0: one scale per output row), RAWINT4's inputs per scale, AMXINT4's inputs per INT4 scale
  // (0 or 16: int4_group16; 64 or 128: int4_kgroup); the other methods ignore it.
  int group_size = 0;
  bool zero_point = false;  // AMXINT4 with group_size 64 or 128: a zero point per group (else symmetric)
  // LLAMAFILE: the registered format of gate, up and down, in that order (a GGUF file's types, e.g.
  // gguf_q4_k, gguf_q4_k, gguf_q6_k); empty for the other methods.
  std::vector<std::string> matrix_formats;
};

// SFT engine configuration (spec 2.1 plus the common fields above).
struct MOESFTConfig : MoECommonConfig {
  int lora_rank = 16;        // r
  float lora_alpha = 32.0f;  // LoRA scale s = lora_alpha / lora_rank
  int max_cache_depth = 1;   // forward_sft(save_for_backward=True) entries held at once
  int group_size = 128;      // AMXINT4_KGroup_SFT: inputs per INT4 scale (32, 64 or 128)
  bool zero_point = true;    // AMXINT4_KGroup_SFT: a zero point per group (else symmetric)
  // Empty: the base format the registry gives the method; else the registered format the checkpoint
  // ships, kept as it is (AMXINT4_KGroup_SFT on a pack-quantized INT4 checkpoint: "int4_packed",
  // group_size its group size).
  std::string base_format;
};

}  // namespace kt_moe
