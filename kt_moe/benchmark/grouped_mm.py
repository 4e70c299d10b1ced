"""The MoE layer as transformers' "grouped_mm" experts implementation computes it on the CPU (what a
user of transformers 5 runs instead of kt-moe), with optional LoRA terms done with grouped_mm too
("split LoRA": x A^T B^T per expert, B A never materialized), for the bench's baselines.

Sort the (token, expert) slots by expert, one torch.nn.functional.grouped_mm for gate and up
together (the [E, 2I, H] gate_up_proj transformers stores), silu(gate) * up, one for down, scale by
the routing weight, restore the slot order and sum each token's k slots. Autograd differentiates it
(grouped_mm has a backward), so the same function is the SFT step's forward. torch's CPU grouped_mm
wants rows of a multiple of 16 bytes: in bf16, sizes and LoRA ranks that are multiples of 8.
tests/test_bench_grouped_mm.py checks it against transformers' own grouped_mm_experts_forward.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from kt_moe.reference import LoraWeights


class GroupedExperts(NamedTuple):
    """The experts in transformers' layout: gate_up [E, 2I, H] (gate rows first), down [E, H, I]."""

    gate_up: torch.Tensor
    down: torch.Tensor

    @classmethod
    def of(cls, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> "GroupedExperts":
        """From kt-moe's gate, up [E, I, H] and down [E, H, I] (the copy is not timed)."""
        return cls(torch.cat([gate, up], dim=1).contiguous(), down.contiguous())


class _Slots(NamedTuple):
    order: torch.Tensor  # int64 [q k]: slot indices sorted by expert
    offsets: torch.Tensor  # int32 [E]: end of each expert's rows in the sorted slots


def _slots(expert_ids: torch.Tensor, num_experts: int) -> _Slots:
    flat = expert_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    return _Slots(order, torch.cumsum(counts, 0, dtype=torch.int32))


def _linear(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x [S, K] (rows sorted by expert) times each expert's w [E, N, K] transposed: [S, N]."""
    return F.grouped_mm(x, w.transpose(-2, -1), offs=offsets)


def _lora(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x A^T B^T per expert: a [E, r, K], b [E, N, r] -> [S, N]."""
    return _linear(_linear(x, a, offsets), b, offsets)


def grouped_mm_moe(x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor, experts: GroupedExperts,
                   lora: Optional[LoraWeights] = None, scale: float = 0.0) -> torch.Tensor:
    """x bf16 [q, H], expert_ids int64 [q, k], weights [q, k] -> bf16 [q, H]; with `lora`, each
    projection gets scale * x A^T B^T."""
    q, k = expert_ids.shape
    num_experts, two_i, _ = experts.gate_up.shape
    slots = _slots(expert_ids, num_experts)
    xs = x[slots.order // k]  # [S, H]
    gate_up = _linear(xs, experts.gate_up, slots.offsets)  # [S, 2I]
    gate, up = gate_up.split(two_i // 2, dim=-1)
    if lora is not None:
        gate = gate + scale * _lora(xs, lora.gate_lora_a, lora.gate_lora_b, slots.offsets)
        up = up + scale * _lora(xs, lora.up_lora_a, lora.up_lora_b, slots.offsets)
    h = F.silu(gate) * up  # [S, I]
    out = _linear(h, experts.down, slots.offsets)  # [S, H]
    if lora is not None:
        out = out + scale * _lora(h, lora.down_lora_a, lora.down_lora_b, slots.offsets)
    out = out * weights.reshape(-1)[slots.order].to(out.dtype).unsqueeze(-1)
    inverse = torch.empty_like(slots.order)
    inverse[slots.order] = torch.arange(slots.order.numel())
    return out[inverse].view(q, k, -1).sum(dim=1).to(x.dtype)
