"""The native TP_MOE_SFT object (spec 2.2) used directly: its task methods, warm-up, the cache
depth it reports, and concurrent calls from several Python threads (same results, no crash)."""

import threading

import pytest
import torch

from kt_moe import _native
from kt_moe.reference import lora_moe_forward, random_experts, random_lora, random_routing, relative_l2

E, H, I, R, K = 6, 48, 32, 4, 2
ALPHA = 8.0


def engine(tp=1):
    config = _native.MOESFTConfig(expert_num=E, hidden_size=H, intermediate_size=I, experts_per_token=K,
                                  tp_size=tp, chunked_prefill_size=16, method="AMXBF16_SFT", lora_rank=R,
                                  lora_alpha=ALPHA, max_cache_depth=2)
    return _native.TP_MOE_SFT(config, _native.WorkerPool(2, tp))


@pytest.fixture
def layer():
    gate, up, down = random_experts(E, H, I)
    lora = random_lora(E, H, I, R)
    return gate, up, down, lora


def test_tasks_match_the_reference(layer):
    gate, up, down, lora = layer
    sft = engine()
    expert_map = torch.tensor([5, 4, 3, 2, 1, 0])
    sft.load_weights_task(gate, up, down, expert_map)
    sft.update_lora_weights_task(*lora)
    sft.warm_up_task()
    assert sft.cache_depth == 0
    ids, weights = random_routing(5, E, K)
    x = torch.randn(5, H).bfloat16()
    out = torch.empty(5, H, dtype=torch.bfloat16)
    sft.forward_sft_task(5, K, ids, weights, x, out, True)
    assert sft.cache_depth == 1
    expected = lora_moe_forward(x, ids, weights, gate[expert_map], up[expert_map], down[expert_map], lora, ALPHA / R)
    assert relative_l2(out, expected) < 1e-2
    grads = [torch.empty(t.shape) for t in lora]
    grad_input, grad_weights = torch.empty(5, H, dtype=torch.bfloat16), torch.empty(5, K)
    sft.backward_task(5, K, torch.randn(5, H).bfloat16(), grad_input, *grads, grad_weights)
    assert sft.cache_depth == 0
    assert sft.cached_bytes_per_routed_slot > H * 2


def test_task_arguments_are_checked(layer):
    gate, up, down, lora = layer
    sft = engine()
    with pytest.raises(ValueError, match="physical_to_logical_map.* out of range"):
        sft.load_weights_task(gate, up, down, torch.tensor([0, 1, 2, 3, 4, 6]))
    with pytest.raises(ValueError, match="gate must be bfloat16"):
        sft.load_weights_task(gate.float(), up, down, torch.arange(E))
    with pytest.raises(ValueError, match=r"k \(3\) must equal experts_per_token"):
        sft.forward_sft_task(1, 3, torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, 3), torch.zeros(1, H).bfloat16(),
                             torch.zeros(1, H).bfloat16(), False)
    with pytest.raises(RuntimeError, match="Weights not loaded"):
        sft.warm_up_task()


def test_engine_refuses_a_pool_of_another_shape():
    config = _native.MOESFTConfig(expert_num=E, hidden_size=H, intermediate_size=I, experts_per_token=K, tp_size=2,
                                  method="AMXBF16_SFT")
    with pytest.raises(ValueError, match="tp_size"):
        _native.TP_MOE_SFT(config, _native.WorkerPool(2, 1))


def test_concurrent_calls_give_the_same_results(layer):
    gate, up, down, lora = layer
    sft = engine()
    sft.load_weights_task(gate, up, down, torch.arange(E))
    sft.update_lora_weights_task(*lora)
    ids, weights = random_routing(8, E, K)
    x = torch.randn(8, H).bfloat16()
    expected = torch.empty(8, H, dtype=torch.bfloat16)
    sft.forward_sft_task(8, K, ids, weights, x, expected, False)
    outputs = [torch.empty(8, H, dtype=torch.bfloat16) for _ in range(4)]

    def work(out):
        for _ in range(20):
            sft.forward_sft_task(8, K, ids, weights, x, out, False)

    threads = [threading.Thread(target=work, args=(out,)) for out in outputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in outputs:
        assert torch.equal(out, expected)
