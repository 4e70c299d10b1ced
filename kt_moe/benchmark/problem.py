"""The inputs of one benchmark problem (shape, q, LoRA rank) and its fp32 reference results.

Every case of a (shape, q) sees the same tensors, so their results and timings compare:
bf16 expert weights and LoRA tensors (fixed seeds, kept for one shape at a time), bf16 hidden
states, random top-k routing without replacement with softmax weights, a bf16 grad_output.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Dict, NamedTuple, Optional, Tuple

import torch

from kt_moe.reference import (LoraWeights, lora_moe_backward, moe_forward, random_experts, random_lora,
                              random_routing)
from kt_moe.benchmark.shapes import Shape

LORA_ALPHA = 32.0


class Outputs(NamedTuple):
    """What one step of a case returns (and the reference returns for its mode)."""

    out: torch.Tensor  # [q, H]
    grad_input: Optional[torch.Tensor] = None  # [q, H], sft only
    grads: Optional[Dict[str, torch.Tensor]] = None  # LoRA and routing-weight gradients, sft only


@functools.lru_cache(maxsize=1)
def layer_weights(shape: Shape, rank: int, built: Optional[int] = None) -> Tuple[Tuple[torch.Tensor, ...], LoraWeights]:
    """bf16 (gate [B, I, H], up [B, I, H], down [B, H, I]) of B = built (default E) experts, and LoRA
    tensors of rank `rank`."""
    experts = random_experts(built or shape.num_experts, shape.hidden, shape.intermediate, torch.bfloat16, seed=0)
    lora = random_lora(shape.num_experts, shape.hidden, shape.intermediate, rank, torch.bfloat16, seed=1)
    return experts, lora


@dataclass
class Problem:
    """built_experts: how many distinct experts to build (default: one per slot); slot e then holds
    built expert e % built_experts (shapes.REPLICATED_SHAPES)."""

    shape: Shape
    q: int
    rank: int
    built_experts: Optional[int] = None
    x: torch.Tensor = field(init=False)  # bf16 [q, H]
    expert_ids: torch.Tensor = field(init=False)  # int64 [q, k]
    weights: torch.Tensor = field(init=False)  # fp32 [q, k]
    grad_output: torch.Tensor = field(init=False)  # bf16 [q, H]
    experts: Tuple[torch.Tensor, ...] = field(init=False)  # bf16 gate, up, down of the built experts
    expert_map: torch.Tensor = field(init=False)  # int64 [E]: the built expert of each slot
    lora: LoraWeights = field(init=False)  # bf16
    _references: Dict[str, Outputs] = field(init=False, default_factory=dict)

    def __post_init__(self):
        s = self.shape
        gen = torch.Generator().manual_seed(1000 + self.q)
        self.x = torch.randn(self.q, s.hidden, generator=gen).to(torch.bfloat16)
        self.grad_output = torch.randn(self.q, s.hidden, generator=gen).to(torch.bfloat16)
        self.expert_ids, self.weights = random_routing(self.q, s.num_experts, s.top_k, seed=2000 + self.q)
        self.experts, self.lora = layer_weights(s, self.rank, self.built_experts)
        self.expert_map = torch.arange(s.num_experts, dtype=torch.int64) % (self.built_experts or s.num_experts)

    @property
    def scale(self) -> float:
        return LORA_ALPHA / self.rank

    @property
    def distinct_experts(self) -> int:
        return int(self.expert_ids.unique().numel())

    def reference(self, mode: str) -> Outputs:
        """fp32 reference of the inference forward or of the SFT forward + backward (computed once).
        ValueError for sft with built_experts (the LoRA tensors are per slot, the bf16 experts are not)."""
        if mode != "inference" and self.built_experts:
            raise ValueError("the sft reference needs one built expert per slot (built_experts=None)")
        if mode not in self._references:
            if mode == "inference":
                ref = Outputs(moe_forward(self.x, self.expert_map[self.expert_ids], self.weights, *self.experts))
            else:
                ref = Outputs(*lora_moe_backward(self.x, self.expert_ids, self.weights, *self.experts, self.lora,
                                                 self.scale, self.grad_output))
            self._references[mode] = ref
        return self._references[mode]
