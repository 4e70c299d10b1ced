"""The bench's grouped_mm baselines (kt_moe/benchmark/grouped_mm.py): the inference forward is what
transformers' grouped_mm experts implementation computes (its own function, on the same bf16 weights),
and the split-LoRA SFT step's output and gradients match the fp32 reference within bf16 rounding,
experts without tokens included."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kt_moe.benchmark.grouped_mm import GroupedExperts, grouped_mm_moe
from kt_moe.reference import (LoraWeights, lora_moe_backward, moe_forward, random_experts, random_lora,
                              random_routing, relative_l2)

E, K, H, I, R, Q = 8, 2, 64, 48, 8, 24  # Q * K slots over E - 2 experts: the last two get no token
BF16_BOUND = 2e-2


def layer(seed: int = 0):
    """(gate, up, down, x) bf16, expert ids [Q, K] of which the last two experts get none, weights."""
    x = torch.randn(Q, H, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    ids, weights = random_routing(Q, E - 2, K, seed=seed)
    return (*random_experts(E, H, I, seed=seed), x), ids, weights


def transformers_grouped_mm(x, ids, weights, gate, up, down):
    """transformers' own grouped_mm_experts_forward, on a stand-in for its experts module."""
    moe = pytest.importorskip("transformers.integrations.moe")
    experts = SimpleNamespace(num_experts=E, _is_expert_parallel=False, has_gate=True, has_bias=False,
                              is_transposed=False, has_post_expert_norm=False, act_fn=F.silu,
                              gate_up_proj=torch.cat([gate, up], dim=1), down_proj=down)
    experts._apply_gate = lambda gate_up: moe._default_apply_gate(experts, gate_up)
    return moe.grouped_mm_experts_forward(experts, x, ids, weights.to(x.dtype))


def test_forward_is_transformers_grouped_mm():
    (gate, up, down, x), ids, weights = layer()
    ours = grouped_mm_moe(x, ids, weights, GroupedExperts.of(gate, up, down))
    theirs = transformers_grouped_mm(x, ids, weights, gate, up, down)
    assert ours.dtype == torch.bfloat16 and ours.shape == (Q, H)
    assert torch.equal(ours, theirs)
    reference = moe_forward(x, ids, weights, gate, up, down)
    assert relative_l2(ours, reference) < BF16_BOUND


def test_split_lora_step_matches_the_reference():
    (gate, up, down, x), ids, weights = layer(1)
    lora = random_lora(E, H, I, R, seed=2)
    scale = 2.0
    grad_output = torch.randn(Q, H, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    leaves = LoraWeights(*(t.clone().requires_grad_() for t in lora))
    xg, wg = x.clone().requires_grad_(), weights.clone().requires_grad_()
    out = grouped_mm_moe(xg, ids, wg, GroupedExperts.of(gate, up, down), leaves, scale)
    out.backward(grad_output)
    ref_out, ref_grad_input, ref_grads = lora_moe_backward(x, ids, weights, gate, up, down, lora, scale, grad_output)
    assert relative_l2(out, ref_out) < BF16_BOUND
    assert relative_l2(xg.grad, ref_grad_input) < BF16_BOUND
    for name, t in leaves._asdict().items():
        assert relative_l2(t.grad, ref_grads[name]) < BF16_BOUND, name
        assert not t.grad[E - 2:].any(), name  # experts without tokens get no gradient
    assert relative_l2(wg.grad, ref_grads["routing_weights"]) < BF16_BOUND
