"""LoRA training of whole transformers models with kt-moe experts (offload_experts with an SFT
method): loss.backward() fills the experts' LoRA parameters' .grad as a pure-torch model with the
same LoRA (PEFT target_parameters, fp32) does, and the gradient flows on to the routers and the
layers below; AdamW lowers the loss; micro-batches, gradient checkpointing, forwards without a
backward and a PEFT LoRA on the attention next to kt-moe's experts LoRA all work, and the orders
the engine's forward cache cannot serve are clear errors."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from kt_moe.integrations.transformers import expert_lora_parameters, offload_experts
from kt_moe.reference import relative_l2
from transformers_models import ARCHITECTURES, tiny_model, tokens

RANK, ALPHA = 4, 8.0
EXPERT_TARGETS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def sft_model(base, method="AMXBF16_SFT", **kwargs):
    return offload_experts(copy.deepcopy(base), method=method, lora_rank=RANK, lora_alpha=ALPHA, cpuinfer_threads=2,
                           **kwargs)


def experts_modules(model):
    return [module for _, module in model.named_modules() if hasattr(module, "kt_moe")]


def randomize_lora(model, seed=1):
    """Non-zero B (PEFT starts it at zero, which would leave A's gradient zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in expert_lora_parameters(model):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def peft_twin(base, model):
    """The same model in pure torch with PEFT's LoRA on the experts, holding model's LoRA values."""
    twin = get_peft_model(copy.deepcopy(base), LoraConfig(r=RANK, lora_alpha=ALPHA, target_parameters=EXPERT_TARGETS))
    layers = twin.base_model.model.model.layers
    with torch.no_grad():
        for module in experts_modules(model):
            peft_experts = layers[module.kt_moe.wrapper.config.layer_idx].mlp.experts
            for part, wrapped in (("gate_up", peft_experts.base_layer), ("down", peft_experts)):
                A, B = getattr(module, f"lora_{part}_A"), getattr(module, f"lora_{part}_B")
                wrapped.lora_A["default"].weight.copy_(A.reshape(-1, A.shape[-1]))
                wrapped.lora_B["default"].weight.copy_(B.permute(1, 2, 0).reshape(B.shape[1], -1))
    for name, param in twin.named_parameters():  # the router and attention gradients are compared too
        if name.endswith(("mlp.gate.weight", "q_proj.weight")):
            param.requires_grad_(True)
    return twin


def peft_grads(twin, layer_idx):
    experts = twin.base_model.model.model.layers[layer_idx].mlp.experts
    out = {}
    for part, wrapped in (("gate_up", experts.base_layer), ("down", experts)):
        A, B = wrapped.lora_A["default"].weight.grad, wrapped.lora_B["default"].weight.grad
        out[f"lora_{part}_A"] = A.reshape(-1, RANK, A.shape[-1])
        out[f"lora_{part}_B"] = B.reshape(B.shape[0], RANK, -1).permute(2, 0, 1)
    return out


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gradients_match_peft(architecture):
    base = tiny_model(architecture, torch.float32)
    model = sft_model(base)
    randomize_lora(model)
    twin = peft_twin(base, model)
    ids = tokens(2, 16, seed=5)
    model(ids, labels=ids).loss.backward()
    twin(ids, labels=ids).loss.backward()
    for module in experts_modules(model):
        layer_idx = module.kt_moe.wrapper.config.layer_idx
        for name, expected in peft_grads(twin, layer_idx).items():
            assert relative_l2(getattr(module, name).grad, expected) <= 2e-2, (layer_idx, name)
        router = twin.base_model.model.model.layers[layer_idx].mlp.gate.weight.grad
        assert relative_l2(model.model.layers[layer_idx].mlp.gate.weight.grad, router) <= 2e-2
    q_proj = twin.base_model.model.model.layers[0].self_attn.q_proj.weight.grad
    assert relative_l2(model.model.layers[0].self_attn.q_proj.weight.grad, q_proj) <= 2e-2


@pytest.mark.parametrize("method", ["AMXBF16_SFT", "AMXINT8_SFT"])
def test_adamw_lowers_the_loss(method):
    model = sft_model(tiny_model("qwen3_moe", torch.float32), method)
    for param in model.parameters():
        param.requires_grad_(False)
    params = [param.requires_grad_(True) for _, param in expert_lora_parameters(model)]
    optimizer = torch.optim.AdamW(params, lr=5e-3)
    ids = tokens(4, 16, seed=7)
    losses = []
    for _ in range(30):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_micro_batches_accumulate_the_batch_gradient():
    base = tiny_model("deepseek_v3", torch.float32)
    whole, split = sft_model(base), sft_model(base)
    randomize_lora(whole)
    randomize_lora(split)
    ids = tokens(4, 12, seed=2)
    (whole(ids, labels=ids).loss * 2).backward()
    for half in (ids[:2], ids[2:]):
        split(half, labels=half).loss.backward()
    for (name, a), (_, b) in zip(expert_lora_parameters(whole), expert_lora_parameters(split)):
        assert relative_l2(b.grad, a.grad) <= 2e-2, name


def test_micro_batches_in_flight_backward_in_reverse_order():
    model = sft_model(tiny_model("qwen3_moe", torch.float32), max_cache_depth=2)
    randomize_lora(model)
    ids = tokens(4, 12, seed=2)
    first, second = model(ids[:2], labels=ids[:2]).loss, model(ids[2:], labels=ids[2:]).loss
    assert all(module.kt_moe.wrapper.engine.cache_depth == 2 for module in experts_modules(model))
    second.backward()
    first.backward()
    assert all(module.kt_moe.wrapper.engine.cache_depth == 0 for module in experts_modules(model))


def test_backward_in_forward_order_is_refused():
    model = sft_model(tiny_model("qwen3_moe", torch.float32), max_cache_depth=2)
    ids = tokens(4, 12, seed=2)
    first, second = model(ids[:2], labels=ids[:2]).loss, model(ids[2:], labels=ids[2:]).loss
    with pytest.raises(RuntimeError, match="reverse of the forwards"):
        first.backward()


def test_more_micro_batches_than_the_cache_depth_are_refused():
    model = sft_model(tiny_model("qwen3_moe", torch.float32), max_cache_depth=1)
    ids = tokens(2, 8)
    kept = model(ids, labels=ids).loss
    with pytest.raises(RuntimeError, match="max_cache_depth=1 given to offload_experts"):
        model(ids, labels=ids)
    kept.backward()


def test_forward_without_backward_is_forgotten():
    """An evaluation forward run with gradients enabled and dropped does not block training."""
    model = sft_model(tiny_model("mixtral", torch.float32), max_cache_depth=1)
    ids = tokens(2, 8)
    model(ids, labels=ids).loss.item()  # graph dropped without backward
    model(ids, labels=ids).loss.backward()
    assert all(module.kt_moe.wrapper.engine.cache_depth == 0 for module in experts_modules(model))


def test_no_grad_forward_and_generate_save_nothing():
    model = sft_model(tiny_model("qwen2_moe", torch.float32))
    with torch.no_grad():
        model(tokens())
    model.generate(tokens(1, 4), max_new_tokens=4, do_sample=False)
    assert all(module.kt_moe.wrapper.engine.cache_depth == 0 for module in experts_modules(model))


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing(use_reentrant):
    base = tiny_model("qwen3_moe", torch.float32)
    plain, checkpointed = sft_model(base), sft_model(base)
    randomize_lora(plain)
    randomize_lora(checkpointed)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    checkpointed.train()
    plain.train()
    ids = tokens(2, 12, seed=4)
    plain(ids, labels=ids).loss.backward()
    checkpointed(ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(expert_lora_parameters(plain), expert_lora_parameters(checkpointed)):
        assert relative_l2(b.grad, a.grad) <= 1e-2, name
    assert all(module.kt_moe.wrapper.engine.cache_depth == 0 for module in experts_modules(checkpointed))


def test_peft_lora_on_attention_next_to_the_experts_lora():
    model = sft_model(tiny_model("deepseek_v2", torch.float32))
    randomize_lora(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"]))
    # PEFT freezes every parameter that is not one of its own adapters: train the experts' LoRA too
    for _, param in expert_lora_parameters(peft_model):
        param.requires_grad_(True)
    trainable = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    assert any("q_proj.lora_A" in name for name in trainable)
    assert any(name.endswith("experts.lora_gate_up_A") for name in trainable)
    ids = tokens(2, 8)
    peft_model(ids, labels=ids).loss.backward()
    for name, param in peft_model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_bf16_lora_parameters():
    model = sft_model(tiny_model("qwen3_moe", torch.bfloat16), lora_dtype=torch.bfloat16)
    randomize_lora(model)
    ids = tokens(2, 8)
    model(ids, labels=ids).loss.backward()
    for name, param in expert_lora_parameters(model):
        assert param.dtype == torch.bfloat16 and param.grad.dtype == torch.bfloat16, name
