"""Which transformers models kt-moe can take the routed experts of, and where their experts are.

transformers 5 keeps each MoE layer's routed experts in one module decorated with
`use_experts_implementation`: `gate_up_proj` [E, 2I, H] (gate rows first, then up rows) and
`down_proj` [E, H, I], called as `experts(hidden_states [T, H], top_k_index [T, k], top_k_weights
[T, k])` after the model's own router. kt-moe computes exactly that function, SwiGLU experts
without biases, so a model qualifies when its type is one checked here and each experts module has
that layout (shared experts are plain MLPs and stay in torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List

import torch

# model_type -> the name users know it by. Each is tested (tests/test_transformers_models.py).
SUPPORTED_MODEL_TYPES = {
    "qwen3_moe": "Qwen3-MoE",
    "qwen2_moe": "Qwen2-MoE",
    "mixtral": "Mixtral",
    "deepseek_v2": "DeepSeek-V2",
    "deepseek_v3": "DeepSeek-V3",
}
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class ExpertsSite:
    """One MoE layer's routed experts module: `name` in model.named_modules(), `layer_idx` the
    decoder layer (the index in the checkpoint's tensor names)."""
    name: str
    layer_idx: int
    module: torch.nn.Module

    @property
    def num_experts(self) -> int:
        return self.module.num_experts

    @property
    def hidden_size(self) -> int:
        return self.module.hidden_dim

    @property
    def intermediate_size(self) -> int:
        return self.module.intermediate_dim


def text_config(model: torch.nn.Module):
    """The config of the model's language part (the model's own config for these architectures)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _is_experts_module(module: torch.nn.Module) -> bool:
    """A module decorated with transformers' use_experts_implementation (it has `_apply_gate` and the
    decorator's layout flags)."""
    return hasattr(type(module), "_apply_gate") and hasattr(module, "is_concatenated")


def _check_layout(name: str, module: torch.nn.Module, hidden_act: str) -> None:
    problems = []
    if not module.has_gate or not module.is_concatenated:
        problems.append("its gate and up projections are not one concatenated gate_up_proj")
    if module.is_transposed:
        problems.append("its weights are stored transposed")
    if module.has_bias:
        problems.append("its projections have biases")
    if getattr(module, "has_post_expert_norm", False):
        problems.append("it normalizes each expert's output")
    if hidden_act != "silu":
        problems.append(f"its activation is {hidden_act!r}, not 'silu' (kt-moe computes SwiGLU experts)")
    if problems:
        raise ValueError(f"{name} cannot run on kt-moe: " + "; ".join(problems))


def find_experts(model: torch.nn.Module) -> List[ExpertsSite]:
    """Every MoE layer's routed experts module of `model`, in layer order. ValueError when the model
    is not one of SUPPORTED_MODEL_TYPES or has no experts module."""
    config = text_config(model)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        supported = ", ".join(f"{label} ({key})" for key, label in SUPPORTED_MODEL_TYPES.items())
        raise ValueError(f"model: kt-moe does not support model_type {model_type!r} "
                         f"({type(model).__name__}); supported: {supported}")
    sites = []
    for name, module in model.named_modules():
        if not _is_experts_module(module):
            continue
        match = _LAYER_INDEX.search(name + ".")
        if match is None:
            raise ValueError(f"model: cannot tell which decoder layer the experts module {name} belongs to")
        _check_layout(name, module, getattr(config, "hidden_act", "silu"))
        sites.append(ExpertsSite(name, int(match.group(1)), module))
    if not sites:
        raise ValueError(f"model: {type(model).__name__} has no routed experts module (no MoE layer)")
    return sorted(sites, key=lambda site: site.layer_idx)
