"""Tiny Hugging Face MoE models of each architecture kt_moe.integrations.transformers supports, built
by transformers itself (random weights), for the integration tests.

Sizes keep a test fast (H = 128, I = 64, E = 8, k = 2, two decoder layers, both MoE where the
architecture allows; DeepSeek's first layer is dense as in the real models) while every expert
carries enough weight to move the logits: initializer_range 0.1 instead of 0.02, so the experts'
output is a sizeable share of the residual stream, and routers scaled up (ROUTER_SCALE)."""

from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, DeepseekV2Config, DeepseekV3Config, MixtralConfig, Qwen2MoeConfig,
                          Qwen3MoeConfig)

VOCAB, H, I, E, K = 256, 128, 64, 8, 2
COMMON = dict(vocab_size=VOCAB, hidden_size=H, intermediate_size=2 * H, num_attention_heads=4, num_key_value_heads=4,
              num_hidden_layers=2, initializer_range=0.1, max_position_embeddings=256, tie_word_embeddings=False)
DEEPSEEK_ATTENTION = dict(kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=32)

CONFIGS = {
    "qwen3_moe": lambda: Qwen3MoeConfig(**COMMON, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=K,
                                        head_dim=32, norm_topk_prob=True),
    "qwen2_moe": lambda: Qwen2MoeConfig(**COMMON, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=K,
                                        shared_expert_intermediate_size=I),
    "mixtral": lambda: MixtralConfig(**{**COMMON, "intermediate_size": I}, num_local_experts=E, num_experts_per_tok=K),
    "deepseek_v2": lambda: DeepseekV2Config(**COMMON, **DEEPSEEK_ATTENTION, moe_intermediate_size=I, n_routed_experts=E,
                                            num_experts_per_tok=K, n_shared_experts=1, first_k_dense_replace=1),
    "deepseek_v3": lambda: DeepseekV3Config(**COMMON, **DEEPSEEK_ATTENTION, moe_intermediate_size=I, n_routed_experts=E,
                                            num_experts_per_tok=K, n_shared_experts=1, first_k_dense_replace=1,
                                            n_group=1, topk_group=1),
}
ARCHITECTURES = tuple(CONFIGS)
# Random routers score the experts of a token within a few thousandths of each other, so the small
# change of the experts' output that bf16 rounding or a quantized method brings to one layer reorders
# some token's experts in the next layer (0.07 relative L2 of a tiny Mixtral's logits from one such
# token). Trained routers decide by clearer margins; scaling the random ones by 4 does that here.
# Sharper routers also pass more of the gradient through the routing weights, whose bf16 error they
# amplify: the experts' LoRA gradients of the first layer against fp32 PEFT go from 0.008 (scale 1)
# to 0.013 (scale 4) and 0.021 (scale 8) for that Mixtral.
ROUTER_SCALE = 4.0


def tiny_model(architecture: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> torch.nn.Module:
    """A freshly initialized model of `architecture` (a key of CONFIGS) in `dtype`, eval mode, its
    routers' weights scaled by ROUTER_SCALE."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[architecture]())
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("mlp.gate") and hasattr(module, "weight"):
                module.weight.mul_(ROUTER_SCALE)
    return model.to(dtype).eval()


def tokens(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
