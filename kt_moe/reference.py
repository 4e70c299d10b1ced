"""Pure-torch reference of the routed-expert MoE layer (docs/design.md section 3): the oracle of the
tests, the demo and the bench. Plain torch, no native code.

The public functions take weights as the engines get them (bf16 or any float dtype) and compute
everything in fp32. Routing semantics, shared with the engines:
  - expert id -1: the slot contributes nothing;
  - id in [0, num_gpu_experts): the expert lives on the GPU, the slot contributes nothing here
    and gets zero gradient;
  - duplicate ids in one row: each slot counts (two slots, two contributions);
  - any other id outside [0, E): ValueError naming the id.
Tokens are grouped by expert (index_select / index_add_); the only Python loop is over experts.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F


class LoraWeights(NamedTuple):
    """The six stacked LoRA tensors, in the order init_lora_weights takes them."""

    gate_lora_a: torch.Tensor  # [E, r, H]
    gate_lora_b: torch.Tensor  # [E, I, r]
    up_lora_a: torch.Tensor  # [E, r, H]
    up_lora_b: torch.Tensor  # [E, I, r]
    down_lora_a: torch.Tensor  # [E, r, I]
    down_lora_b: torch.Tensor  # [E, H, r]


class ExpertGroup(NamedTuple):
    """The slots routed to one expert."""

    expert: int
    tokens: torch.Tensor  # [n] int64, row of each slot in x
    slots: torch.Tensor  # [n] int64, index of each slot in expert_ids.flatten()


def _normal(shape: Tuple[int, ...], std: float, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """N(0, std^2) of `shape` in `dtype`, drawn one leading index at a time (no fp32 copy of it all)."""
    out = torch.empty(shape, dtype=dtype)
    for i in range(shape[0]):
        out[i] = torch.randn(shape[1:], generator=gen) * std
    return out


def random_experts(num_experts: int, hidden: int, intermediate: int, dtype: torch.dtype = torch.bfloat16,
                   seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random expert weights gate [E, I, H], up [E, I, H], down [E, H, I] with std 1/sqrt(fan_in),
    so that for x ~ N(0, 1) the expert outputs are O(1) and relative errors mean something."""
    gen = torch.Generator().manual_seed(seed)
    gate = _normal((num_experts, intermediate, hidden), hidden ** -0.5, dtype, gen)
    up = _normal((num_experts, intermediate, hidden), hidden ** -0.5, dtype, gen)
    down = _normal((num_experts, hidden, intermediate), intermediate ** -0.5, dtype, gen)
    return gate, up, down


def random_lora(num_experts: int, hidden: int, intermediate: int, rank: int, dtype: torch.dtype = torch.bfloat16,
                seed: int = 1, zero_b: bool = False) -> LoraWeights:
    """Random LoRA tensors: A with std 1/sqrt(fan_in); B zero (zero_b, the usual LoRA init) or with
    std 0.1/sqrt(r), so that at s = 2 the LoRA term is about a fifth of the base term."""
    gen = torch.Generator().manual_seed(seed)
    b_std = 0.0 if zero_b else 0.1 * rank ** -0.5
    return LoraWeights(
        gate_lora_a=_normal((num_experts, rank, hidden), hidden ** -0.5, dtype, gen),
        gate_lora_b=_normal((num_experts, intermediate, rank), b_std, dtype, gen),
        up_lora_a=_normal((num_experts, rank, hidden), hidden ** -0.5, dtype, gen),
        up_lora_b=_normal((num_experts, intermediate, rank), b_std, dtype, gen),
        down_lora_a=_normal((num_experts, rank, intermediate), intermediate ** -0.5, dtype, gen),
        down_lora_b=_normal((num_experts, hidden, rank), b_std, dtype, gen),
    )


def random_routing(num_tokens: int, num_experts: int, top_k: int,
                   seed: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """Router-like routing: top_k distinct expert ids per token (uniform, without replacement),
    int64 [q, k], and softmax-normalised fp32 weights [q, k]."""
    gen = torch.Generator().manual_seed(seed)
    expert_ids = torch.rand(num_tokens, num_experts, generator=gen).argsort(dim=1)[:, :top_k].contiguous()
    weights = torch.softmax(torch.randn(num_tokens, top_k, generator=gen), dim=1)
    return expert_ids, weights


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in fp64 (docs/design.md section 8); 0 when both are zero."""
    diff = (actual.double() - expected.double()).norm().item()
    norm = expected.double().norm().item()
    return diff / norm if norm > 0 else diff


def route(expert_ids: torch.Tensor, num_experts: int, num_gpu_experts: int = 0) -> List[ExpertGroup]:
    """Group the slots of expert_ids [q, k] by expert, dropping -1 and GPU experts; ascending expert order."""
    bad = (expert_ids < -1) | (expert_ids >= num_experts)
    if bool(bad.any()):
        bad_id = int(expert_ids[bad][0])
        raise ValueError(f"expert id {bad_id} out of range: ids must be -1 or in [0, {num_experts})")
    flat = expert_ids.reshape(-1)  # [q*k]
    slots = (flat >= max(num_gpu_experts, 0)).nonzero().squeeze(1)  # [m], -1 and GPU experts dropped
    slots = slots[flat[slots].argsort(stable=True)]
    experts, counts = torch.unique_consecutive(flat[slots], return_counts=True)
    top_k = expert_ids.shape[1]
    return [ExpertGroup(e, group // top_k, group)
            for e, group in zip(experts.tolist(), slots.split(counts.tolist()))]


def _check_shapes(x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor, gate: torch.Tensor,
                  up: torch.Tensor, down: torch.Tensor) -> None:
    num_experts, intermediate, hidden = gate.shape
    if x.dim() != 2 or x.shape[1] != hidden:
        raise ValueError(f"hidden_states must be [q, {hidden}], got {list(x.shape)}")
    if expert_ids.dim() != 2 or expert_ids.shape[0] != x.shape[0] or weights.shape != expert_ids.shape:
        raise ValueError(f"expert_ids {list(expert_ids.shape)} and weights {list(weights.shape)} must both be "
                         f"[q={x.shape[0]}, k]")
    if up.shape != gate.shape or down.shape != (num_experts, hidden, intermediate):
        raise ValueError(f"up {list(up.shape)} / down {list(down.shape)} do not match gate {list(gate.shape)}")


def lora_moe(x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor, gate: torch.Tensor,
             up: torch.Tensor, down: torch.Tensor, lora: Optional[LoraWeights] = None,
             scale: Optional[float] = None, num_gpu_experts: int = 0,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The layer computed in `dtype` with plain, differentiable torch ops; out [q, H] in `dtype`.

    lora=None computes the frozen experts only. Gradients reach x, weights and the LoRA tensors
    if they require grad. The public fp32 functions below and the bench's torch baselines
    (dtype=bfloat16) all run this one loop.
    """
    _check_shapes(x, expert_ids, weights, gate, up, down)
    if lora is not None and scale is None:
        raise ValueError("lora needs its scale (lora_alpha / lora_rank)")
    groups = route(expert_ids, gate.shape[0], num_gpu_experts)
    # Per-expert views through one unbind node each, so autograd stacks each LoRA gradient once.
    lora_e = None if lora is None else [t.unbind(0) for t in lora]
    x = x.to(dtype)  # [q, H]
    w_flat = weights.reshape(-1).to(dtype)  # [q*k]
    out = torch.zeros(x.shape, dtype=dtype)  # [q, H]
    for e, tokens, slots in groups:
        xe = x.index_select(0, tokens)  # [n, H]
        g = F.linear(xe, gate[e].to(dtype))  # [n, I]
        u = F.linear(xe, up[e].to(dtype))  # [n, I]
        if lora_e is not None:
            ga, gb, ua, ub = (t[e].to(dtype) for t in lora_e[:4])
            g = g + scale * F.linear(F.linear(xe, ga), gb)
            u = u + scale * F.linear(F.linear(xe, ua), ub)
        z = F.silu(g) * u  # [n, I]
        y = F.linear(z, down[e].to(dtype))  # [n, H]
        if lora_e is not None:
            da, db = (t[e].to(dtype) for t in lora_e[4:])
            y = y + scale * F.linear(F.linear(z, da), db)
        out.index_add_(0, tokens, y * w_flat.index_select(0, slots).unsqueeze(1))
    return out


def moe_forward(x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor, gate: torch.Tensor,
                up: torch.Tensor, down: torch.Tensor, num_gpu_experts: int = 0) -> torch.Tensor:
    """Inference forward in fp32: x [q, H], expert_ids int64 [q, k], weights [q, k] -> out fp32 [q, H]."""
    with torch.no_grad():
        return lora_moe(x, expert_ids, weights, gate, up, down, num_gpu_experts=num_gpu_experts)


def lora_moe_forward(x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor, gate: torch.Tensor,
                     up: torch.Tensor, down: torch.Tensor, lora: LoraWeights, scale: float,
                     num_gpu_experts: int = 0) -> torch.Tensor:
    """LoRA forward in fp32 (scale = lora_alpha / lora_rank) -> out fp32 [q, H]."""
    with torch.no_grad():
        return lora_moe(x, expert_ids, weights, gate, up, down, lora, scale, num_gpu_experts)


def lora_moe_backward(x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor, gate: torch.Tensor,
                      up: torch.Tensor, down: torch.Tensor, lora: LoraWeights, scale: float,
                      grad_output: torch.Tensor, num_gpu_experts: int = 0
                      ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """LoRA forward and backward in fp32 autograd.

    Returns (out [q, H], grad_input [q, H], grads): grads maps each LoraWeights field name to its
    gradient (shape of that tensor) and "routing_weights" to dL/dweights [q, k] (zero for skipped
    slots). All fp32; the caller's tensors are not modified.
    """
    def leaf(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(torch.float32, copy=True).requires_grad_()

    x32, w32 = leaf(x), leaf(weights)
    lora32 = LoraWeights(*(leaf(t) for t in lora))
    with torch.enable_grad():
        out = lora_moe(x32, expert_ids, w32, gate, up, down, lora32, scale, num_gpu_experts)
        if out.requires_grad:  # False when every slot was skipped
            out.backward(grad_output.to(torch.float32))

    def grad(t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t) if t.grad is None else t.grad

    grads = {name: grad(t) for name, t in lora32._asdict().items()}
    grads["routing_weights"] = grad(w32)
    return out.detach(), grad(x32), grads
