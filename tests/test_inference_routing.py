"""Which slots the BF16 inference engine computes: -1 ids, duplicates, GPU experts (num_gpu_experts
and an explicit mask), the physical-to-logical map, deferred experts (select_deferred_experts and
immediate + deferred == full output) and cpu_save."""

import pytest
import torch

from inference_helpers import MAIN, TINY, assert_close, build

K = 6


def test_minus_one_slots_contribute_nothing():
    wrapper, layer = build(MAIN, top_k=K, seed=1)
    x, ids, weights = layer.batch(12, K, seed=1)
    ids[::2, 1:4] = -1
    ids[3] = -1  # a token without any expert: zeros
    out = wrapper.forward(x, ids, weights)
    assert torch.count_nonzero(out[3]) == 0
    assert_close(out, layer.reference(x, ids, weights))


def test_duplicate_ids_count_twice():
    wrapper, layer = build(MAIN, top_k=K, seed=2)
    x, ids, weights = layer.batch(5, K, seed=2)
    ids[:, 1] = ids[:, 0]
    assert_close(wrapper.forward(x, ids, weights), layer.reference(x, ids, weights))


def test_num_gpu_experts_are_skipped():
    wrapper, layer = build(MAIN, top_k=K, seed=3, num_gpu_experts=4)
    x, ids, weights = layer.batch(20, K, seed=3)
    mask = torch.arange(MAIN.num_experts) < 4
    assert torch.equal(wrapper.gpu_experts_mask, mask)
    assert_close(wrapper.forward(x, ids, weights), layer.reference(x, ids, weights, gpu_mask=mask))


def test_gpu_experts_mask():
    wrapper, layer = build(MAIN, top_k=K, seed=4, num_gpu_experts=2)
    x, ids, weights = layer.batch(20, K, seed=4)
    mask = torch.zeros(MAIN.num_experts, dtype=torch.bool)
    mask[[1, 5, 8]] = True
    wrapper.set_gpu_experts_mask(mask)
    assert torch.equal(wrapper.gpu_experts_mask, mask)
    assert_close(wrapper.forward(x, ids, weights), layer.reference(x, ids, weights, gpu_mask=mask))
    wrapper.set_gpu_experts_mask(None)  # back to num_gpu_experts
    default = torch.arange(MAIN.num_experts) < 2
    assert torch.equal(wrapper.gpu_experts_mask, default)
    assert_close(wrapper.forward(x, ids, weights), layer.reference(x, ids, weights, gpu_mask=default))


def test_all_experts_on_gpu_gives_zeros():
    wrapper, layer = build(TINY, top_k=2, seed=5)
    wrapper.set_gpu_experts_mask(torch.ones(TINY.num_experts, dtype=torch.bool))
    assert torch.count_nonzero(wrapper.forward(*layer.batch(4, 2, seed=5))) == 0


@pytest.mark.parametrize("physical_map", [[3, 0, 4, 1, 5, 2], [2, 2, 0, 5, 5, 1]], ids=["permutation", "repeats"])
def test_physical_to_logical_map(physical_map):
    wrapper, layer = build(TINY, top_k=2, seed=6, physical_map=torch.tensor(physical_map))
    batch = layer.batch(9, 2, seed=6)
    assert_close(wrapper.forward(*batch), layer.reference(*batch))


# ---- deferred experts ---------------------------------------------------------------------------

def selector(max_deferred, num_gpu_experts=0, top_k=4):
    wrapper, _ = build(TINY, top_k=top_k, max_deferred=max_deferred, num_gpu_experts=num_gpu_experts)
    return wrapper


def test_select_deferred_experts_rule():
    wrapper = selector(max_deferred=2)
    ids = torch.tensor([[3, 1, 4, 5], [0, 2, -1, 5], [1, 2, 3, 4]])
    scores = torch.tensor([[0.1, 0.4, 0.3, 0.2], [0.5, 0.1, 0.9, 0.2], [0.25, 0.25, 0.25, 0.25]])
    immediate, deferred = wrapper.select_deferred_experts(ids, scores, protected_k=1)
    # token 0: 1 protected (0.4); of the rest the two lowest (0.1, 0.2) are deferred.
    # token 1: -1 never deferred; 0 protected; 2 (0.1) and 5 (0.2) deferred.
    # token 2: ties keep earlier slots: slot 0 protected, slots 2 and 3 deferred.
    assert immediate.tolist() == [[-1, 1, 4, -1], [0, -1, -1, -1], [1, 2, -1, -1]]
    assert deferred.tolist() == [[3, -1, -1, 5], [-1, 2, -1, 5], [-1, -1, 3, 4]]
    assert immediate.dtype == ids.dtype and deferred.dtype == ids.dtype


def test_select_deferred_experts_limits():
    ids = torch.tensor([[3, 1, 4, 5]])
    scores = torch.tensor([[0.1, 0.4, 0.3, 0.2]])
    imm, dfr = selector(max_deferred=1).select_deferred_experts(ids, scores, protected_k=0)
    assert dfr.tolist() == [[3, -1, -1, -1]]  # only the lowest one
    imm, dfr = selector(max_deferred=4).select_deferred_experts(ids, scores, protected_k=3)
    assert dfr.tolist() == [[3, -1, -1, -1]]  # k - protected_k left
    imm, dfr = selector(max_deferred=None).select_deferred_experts(ids, scores, protected_k=0)
    assert torch.equal(imm, ids) and (dfr == -1).all()  # deferral off
    imm, dfr = selector(max_deferred=4, num_gpu_experts=4).select_deferred_experts(ids, scores, protected_k=0)
    assert dfr.tolist() == [[-1, -1, 4, 5]]  # GPU experts (< 4) are never deferred
    assert imm.tolist() == [[3, 1, -1, -1]]


def test_select_deferred_experts_int32():
    ids = torch.tensor([[3, 1, 4, 5]], dtype=torch.int32)
    imm, dfr = selector(max_deferred=1).select_deferred_experts(ids, torch.rand(1, 4), protected_k=2)
    assert imm.dtype == dfr.dtype == torch.int32
    assert torch.equal(torch.where(imm == -1, dfr, imm), ids)


@pytest.mark.parametrize("tp", (1, 2))
def test_immediate_plus_deferred_equals_full(tp):
    wrapper, layer = build(MAIN, top_k=K, seed=7, max_deferred=3, tp=tp, chunk=16)
    x, ids, weights = layer.batch(40, K, seed=7)  # 40 tokens: three chunks each
    scores = torch.rand(ids.shape, generator=torch.Generator().manual_seed(7))
    immediate, deferred = wrapper.select_deferred_experts(ids, scores, protected_k=2)
    assert ((deferred != -1).sum(1) == 3).all()
    full = wrapper.forward(x, ids, weights)
    now = wrapper.forward(x, immediate, weights, deferred_ids=deferred)
    later = wrapper.sync_deferred_forward()
    assert_close(now, layer.reference(x, immediate, weights))
    assert_close(later, layer.reference(x, deferred, weights))
    assert_close(now.float() + later.float(), full.float())
    assert_close(now.float() + later.float(), layer.reference(x, ids, weights))


def test_deferred_with_submit_and_sync():
    wrapper, layer = build(MAIN, top_k=K, seed=8, max_deferred=2)
    x, ids, weights = layer.batch(3, K, seed=8)
    immediate, deferred = wrapper.select_deferred_experts(ids, weights, protected_k=4)
    wrapper.submit_forward(x, immediate, weights, 0, deferred_ids=deferred)
    now = wrapper.sync_forward(x, 0)
    later = wrapper.sync_deferred_forward(0)
    assert_close(now.float() + later.float(), layer.reference(x, ids, weights))
    assert wrapper.engine.pending == 0


# ---- cpu_save -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cpu_save", (False, True))
def test_cpu_save_with_cpu_tensors(cpu_save):
    """CPU inputs: the result is a fresh CPU tensor either way (cpu_save only changes CUDA batches,
    see test_inference_device.py)."""
    wrapper, layer = build(TINY, top_k=2, seed=9, cpu_save=cpu_save)
    batch = layer.batch(4, 2, seed=9)
    first = wrapper.forward(*batch)
    second = wrapper.forward(*batch)
    assert first.device.type == "cpu" and first.data_ptr() != second.data_ptr()
    assert torch.equal(first, second)
