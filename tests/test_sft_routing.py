"""Routing rules of AMXBF16_SFT, against the reference: -1 ids and GPU-expert ids ([0,
num_gpu_experts)) contribute nothing and get exactly zero gradient; duplicate ids in a row count
once per slot; experts that get no token have exactly zero LoRA gradients."""

import pytest
import torch

from kt_moe.reference import random_routing
from sft_helpers import LORA_NAMES, MAIN, assert_close, assert_zero_rows, build, step

SHAPE = MAIN
GPU = 3  # experts 0, 1, 2 live on the GPU


def subset_routing(experts, q, k, seed):
    """Routing over the given experts only (distinct per row)."""
    ids, _ = random_routing(q, len(experts), k, seed=seed)
    return torch.tensor(experts)[ids]


def assert_idle_experts_zero(grads, idle):
    for name in LORA_NAMES:
        assert torch.count_nonzero(grads[name][idle]) == 0, f"{name}: experts {idle} must get exactly zero"


def active_experts(expert_ids, num_gpu_experts):
    return sorted({e for e in expert_ids.flatten().tolist() if e >= max(num_gpu_experts, 0)})


@pytest.mark.parametrize("num_gpu_experts", [0, GPU])
def test_minus_one_and_gpu_ids_contribute_nothing(num_gpu_experts):
    q, k = 16, 4
    ids = subset_routing(list(range(SHAPE.num_experts)), q, k, seed=1)
    ids[0] = -1  # a row with nothing to do
    ids[1, 1:] = -1  # one real slot
    ids[2] = torch.tensor([-1, 7, -1, 6])
    ids[3] = torch.tensor([0, 1, -1, 2])  # GPU experts and -1 only, when num_gpu_experts = 3
    ids[4] = torch.tensor([2, 9, 0, 5])
    ids[5] = torch.tensor([4, -1, 1, 8])
    wrapper, layer = build(SHAPE, top_k=k, seed=2, num_gpu_experts=num_gpu_experts)
    batch = layer.batch(q, k, seed=2, expert_ids=ids, num_gpu_experts=num_gpu_experts)
    result = step(wrapper, batch)
    assert_close(result, layer.reference(batch, num_gpu_experts))

    skipped = (ids == -1) | (ids < num_gpu_experts)
    empty_rows = skipped.all(dim=1).nonzero().flatten().tolist()
    assert empty_rows == ([0, 3] if num_gpu_experts else [0])
    assert_zero_rows(result.out, empty_rows, "out")
    assert_zero_rows(result.grad_input, empty_rows, "grad_input")
    assert torch.count_nonzero(result.grads["routing_weights"][skipped]) == 0, "skipped slots need zero dL/dw"
    idle = sorted(set(range(SHAPE.num_experts)) - set(active_experts(ids, num_gpu_experts)))
    assert idle == list(range(num_gpu_experts))  # the data: every CPU expert has a token
    assert_idle_experts_zero(result.grads, idle)


@pytest.mark.parametrize("fill", ["minus_one", "gpu"])
def test_batch_with_every_slot_skipped(fill):
    """Nothing runs on the CPU: zero output, zero grad_input, zero gradients, no error."""
    q, k = 5, 2
    wrapper, layer = build(SHAPE, top_k=k, seed=3, num_gpu_experts=GPU)
    ids = torch.full((q, k), -1) if fill == "minus_one" else torch.tensor([[0, 1], [2, 2], [1, -1], [0, 2], [-1, 2]])
    batch = layer.batch(q, k, seed=3, expert_ids=ids, num_gpu_experts=GPU)
    result = step(wrapper, batch)
    assert result.out.shape == (q, SHAPE.hidden)
    assert torch.count_nonzero(result.out) == 0
    assert torch.count_nonzero(result.grad_input) == 0
    for name, grad in result.grads.items():
        assert torch.count_nonzero(grad) == 0, name


def test_duplicate_ids_count_per_slot():
    q, k = 9, 4
    ids = subset_routing(list(range(SHAPE.num_experts)), q, k, seed=4)
    ids[0] = torch.tensor([3, 3, 5, 7])
    ids[1] = torch.tensor([6, 6, 6, 6])
    ids[2] = torch.tensor([8, 1, 8, -1])
    ids[3] = torch.tensor([2, 9, 2, 9])
    wrapper, layer = build(SHAPE, top_k=k, seed=4)
    batch = layer.batch(q, k, seed=4, expert_ids=ids)
    result = step(wrapper, batch)
    assert_close(result, layer.reference(batch))


def test_experts_without_tokens_get_zero_gradients():
    """A big batch that leaves half of the experts idle (odd ids never routed)."""
    q, k = 128, 2
    used = [0, 2, 4, 6, 8]
    wrapper, layer = build(SHAPE, top_k=k, seed=5, tp=2)
    batch = layer.batch(q, k, seed=5, expert_ids=subset_routing(used, q, k, seed=5))
    result = step(wrapper, batch)
    assert_close(result, layer.reference(batch))
    assert_idle_experts_zero(result.grads, [1, 3, 5, 7, 9])
