"""Every documented error of the BF16 inference wrapper and of its native engine: the spec's
RuntimeErrors, ValueErrors naming the parameter for bad shapes, dtypes and values, and the checks of
TP_MOE used directly."""

import pytest
import torch

from inference_helpers import TINY, build, make_layer, make_wrapper
from kt_moe import _native

K = 2
E, H, I = TINY.num_experts, TINY.hidden, TINY.intermediate


@pytest.fixture(scope="module")
def loaded():
    wrapper, layer = build(TINY, top_k=K, seed=1, max_deferred=1)
    return wrapper, layer.batch(4, K, seed=1)


def test_weights_not_loaded():
    wrapper = make_wrapper(TINY, top_k=K)
    x, ids, weights = make_layer(TINY).batch(3, K)
    with pytest.raises(RuntimeError, match=r"^Weights not loaded: call load_weights\(\) .*\(0 of 6 experts loaded\)"):
        wrapper.forward(x, ids, weights)
    assert wrapper.engine.pending == 0 and not wrapper.engine.weights_loaded


@pytest.mark.parametrize("name", ["forward_sft", "backward", "init_lora_weights", "update_lora_weights"])
def test_sft_methods_raise_the_spec_message(loaded, name):
    wrapper, _ = loaded
    with pytest.raises(RuntimeError, match=rf"^{name}\(\) not available in inference mode$"):
        getattr(wrapper, name)(None)


BAD_FORWARD = [  # (argument index, replacement, message)
    (0, torch.zeros(4, H + 1, dtype=torch.bfloat16), r"^hidden_states shape mismatch: expected \(-1, 40\), got \(4, 41\)"),
    (0, torch.zeros(4, H, dtype=torch.int32), "^hidden_states must be bfloat16 or float16 or float32, got int32"),
    (0, torch.zeros(0, H), "^hidden_states must hold at least one token"),
    (0, [[0.0] * H], "^hidden_states must be a torch.Tensor, got list"),
    (1, torch.zeros(4, K + 1, dtype=torch.int64), r"^topk_ids shape mismatch: expected \(4, 2\), got \(4, 3\)"),
    (1, torch.zeros(4, K), "^topk_ids must be int64 or int32, got float32"),
    (1, torch.full((4, K), E), r"^expert_ids\[0, 0\] = 6 is out of range: expected -1 or an id in \[0, 6\)"),
    (1, torch.full((4, K), -2), r"^expert_ids\[0, 0\] = -2 is out of range"),
    (2, torch.ones(3, K), r"^topk_weights shape mismatch: expected \(4, 2\), got \(3, 2\)"),
    (2, torch.ones(4, K, dtype=torch.int64), "^topk_weights must be bfloat16 or float16 or float32, got int64"),
]


@pytest.mark.parametrize("index,value,message", BAD_FORWARD)
def test_bad_forward_arguments(loaded, index, value, message):
    wrapper, batch = loaded
    args = list(batch)
    args[index] = value
    with pytest.raises(ValueError, match=message):
        wrapper.forward(*args)
    assert wrapper.engine.pending == 0


def test_bad_deferred_ids(loaded):
    wrapper, (x, ids, weights) = loaded
    immediate = ids.clone()
    immediate[:, 1] = -1
    with pytest.raises(ValueError, match=r"^deferred_ids shape mismatch"):
        wrapper.forward(x, immediate, weights, deferred_ids=ids[:, :1])
    with pytest.raises(ValueError, match=r"^deferred_ids holds 2 experts for token 0, more than "
                                         r"max_deferred_experts_per_token \(1\)"):
        wrapper.forward(x, torch.full_like(ids, -1), weights, deferred_ids=ids)
    with pytest.raises(ValueError, match=r"^topk_ids and deferred_ids both hold an expert in slot \[0, 0\]"):
        wrapper.forward(x, immediate, weights, deferred_ids=torch.where(immediate == -1, -1, ids))
    assert wrapper.engine.pending == 0


def test_deferred_ids_need_max_deferred_experts_per_token():
    wrapper, layer = build(TINY, top_k=K)
    x, ids, weights = layer.batch(2, K)
    deferred = torch.full_like(ids, -1)
    deferred[0, 1], ids[0, 1] = ids[0, 1], -1
    with pytest.raises(ValueError, match=r"more than max_deferred_experts_per_token \(0\)"):
        wrapper.forward(x, ids, weights, deferred_ids=deferred)


def test_sync_forward_checks_hidden_states(loaded):
    wrapper, batch = loaded
    wrapper.submit_forward(*batch)
    with pytest.raises(ValueError, match=r"^hidden_states shape mismatch: expected \(4, 40\), got \(3, 40\)"):
        wrapper.sync_forward(batch.x[:3])
    wrapper.sync_forward(batch.x)  # still pending after the refusal


@pytest.mark.parametrize("protected_k", [-1, K + 1, 1.0, True, "1"])
def test_select_deferred_experts_protected_k(loaded, protected_k):
    wrapper, (_, ids, weights) = loaded
    with pytest.raises(ValueError, match=r"^protected_k must be an integer in \[0, 2\]"):
        wrapper.select_deferred_experts(ids, weights, protected_k)


def test_select_deferred_experts_shapes(loaded):
    wrapper, (_, ids, weights) = loaded
    with pytest.raises(ValueError, match=r"^expert_ids shape mismatch: expected \(-1, 2\)"):
        wrapper.select_deferred_experts(ids[:, :1], weights, 1)
    with pytest.raises(ValueError, match=r"^scores shape mismatch: expected \(4, 2\), got \(3, 2\)"):
        wrapper.select_deferred_experts(ids, weights[:3], 1)


@pytest.mark.parametrize("bad", [E, E + 100, -2])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_select_deferred_experts_rejects_ids_out_of_range(loaded, bad, dtype):
    wrapper, (_, ids, weights) = loaded
    ids = ids.clone().to(dtype)
    ids[2, 1] = bad
    with pytest.raises(ValueError, match=rf"^expert_ids must be in \[-1, 6\) .*got {bad} at \[2, 1\]"):
        wrapper.select_deferred_experts(ids, weights, 1)


@pytest.mark.parametrize("mask,message", [
    (torch.zeros(E + 1, dtype=torch.bool), r"^gpu_experts_mask shape mismatch: expected \(6,\), got \(7,\)"),
    (torch.zeros(E, dtype=torch.int64), "^gpu_experts_mask must be bool, got int64"),
    ([False] * E, "^gpu_experts_mask must be a torch.Tensor, got list"),
])
def test_bad_gpu_experts_mask(loaded, mask, message):
    wrapper, _ = loaded
    with pytest.raises(ValueError, match=message):
        wrapper.set_gpu_experts_mask(mask)


def test_bad_weights():
    wrapper = make_wrapper(TINY, top_k=K)
    layer = make_layer(TINY)
    with pytest.raises(ValueError, match=r"^gate shape mismatch: expected \(-1, 24, 40\), got \(6, 40, 24\)"):
        wrapper.load_weights_from_tensors(layer.gate.transpose(1, 2), layer.up, layer.down, layer.physical_map)
    with pytest.raises(ValueError, match=r"^down shape mismatch: expected \(6, 40, 24\)"):
        wrapper.load_weights_from_tensors(layer.gate, layer.up, layer.up, layer.physical_map)
    with pytest.raises(ValueError, match=r"^physical_to_logical_map\[2\] = 6 is out of range \[0, 6\)"):
        wrapper.load_weights_from_tensors(layer.gate, layer.up, layer.down, torch.tensor([0, 1, 6, 2, 3, 4]))
    with pytest.raises(ValueError, match="^physical_to_logical_map must be int64, got int32"):
        wrapper.load_weights_from_tensors(layer.gate, layer.up, layer.down, layer.physical_map.int())
    with pytest.raises(ValueError, match=r"^weight_path is empty: load_weights\(\) reads the Hugging Face checkpoint"):
        wrapper.load_weights(layer.physical_map)
    assert not wrapper.engine.weights_loaded


# ---- TP_MOE used directly ------------------------------------------------------------------------

def native_config(**overrides):
    fields = dict(expert_num=E, hidden_size=H, intermediate_size=I, experts_per_token=K, tp_size=1,
                  chunked_prefill_size=8, method="BF16")
    fields.update(overrides)
    return _native.MOEConfig(**fields)


@pytest.mark.parametrize("overrides,pool,message", [
    (dict(tp_size=2), (2, 1), r"tp_size \(2\) must equal the pool's subpool count \(1\)"),
    (dict(chunked_prefill_size=0), (2, 1), "must be positive"),
    (dict(intermediate_size=25, tp_size=2), (2, 2), "intermediate_size must be divisible by tp_size"),
    (dict(num_gpu_experts=E + 1), (2, 1), r"num_gpu_experts must be in \[0, expert_num\]"),
    (dict(method="AMXBF16_SFT"), (2, 1), "no weight format for method 'AMXBF16_SFT'"),
    (dict(method="LLAMAFILE"), (2, 1),
     r"LLAMAFILE needs the formats of gate, up and down \(MOEConfig.matrix_formats\), got 0"),
    (dict(method="AMXINT4", intermediate_size=40, tp_size=2), (2, 2),
     r"int4_group16 weights are split across subpools at whole groups of 16 inputs: moe_intermediate_size / "
     r"threadpool_count \(20\) must be a multiple of 16 when threadpool_count > 1"),
])
def test_native_engine_config_checks(overrides, pool, message):
    with pytest.raises(ValueError, match=message):
        _native.TP_MOE(native_config(**overrides), _native.WorkerPool(*pool))


def test_native_engine_argument_checks():
    engine = _native.TP_MOE(native_config(), _native.WorkerPool(2, 1))
    layer = make_layer(TINY)
    with pytest.raises(ValueError, match=r"expert slot 6 out of range \[0, 6\)"):
        engine.load_expert_task(E, layer.gate[0], layer.up[0], layer.down[0])
    with pytest.raises(ValueError, match="gate must be bfloat16"):
        engine.load_expert_task(0, layer.gate[0].float(), layer.up[0], layer.down[0])
    for slot in range(E):
        engine.load_expert_task(slot, layer.gate[slot], layer.up[slot], layer.down[slot])
    engine.commit_load()
    x, ids, weights = layer.batch(3, K)
    out = torch.empty(3, H, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"k \(3\) must equal experts_per_token \(2\)"):
        engine.submit_forward_task(3, 3, ids, weights, x, out)
    with pytest.raises(ValueError, match="qlen must be positive"):
        engine.submit_forward_task(0, K, ids, weights, x, out)
    with pytest.raises(ValueError, match=r"output shape mismatch: expected \(3, 40\)"):
        engine.submit_forward_task(3, K, ids, weights, x, out[:2])
    with pytest.raises(ValueError, match="no queued work with ticket 12345"):
        engine.sync_forward_task(12345)
    with pytest.raises(ValueError, match="gpu_experts_mask must have 6 entries"):
        engine.set_gpu_experts([True])
    ticket = engine.submit_forward_task(3, K, ids, weights, x, out)
    engine.sync_forward_task(ticket)
    with pytest.raises(ValueError, match=f"no queued work with ticket {ticket}"):
        engine.sync_forward_task(ticket)  # each ticket is waited for once
