"""Training with the SFT wrapper as the spec's loop uses it (spec 3.2): gradients accumulate into the
.grad of LoRA tensors that require grad, as autograd would; update_lora_weights makes the engine see
tensors changed in place; micro-batches accumulate like one batch; AdamW fits a LoRA target; base
weights and inputs are never modified. The last two run for every SFT method (the quantized ones
against their dequantized base, the base the engine trains on)."""

import pytest
import torch
import torch.nn.functional as F

from kt_moe.quant import scheme_for_method
from kt_moe.reference import lora_moe_forward, random_lora, relative_l2
from sft_helpers import (LORA_NAMES, MAIN, TINY, TOL, assert_close, build, cat_batches, make_batch, make_layer,
                         make_wrapper, step)


def clone_all(tensors):
    return [t.detach().clone() for t in tensors]


METHODS = [  # (method, KTMoEWrapper options)
    ("AMXBF16_SFT", {}),
    ("AMXINT8_SFT", {}),
    ("AMXINT4_SFT", {}),
    ("AMXINT4_KGroup_SFT", {}),
    ("AMXINT4_KGroup_SFT", dict(group_size=32, zero_point=False)),
    ("AMXFP8_SFT", {}),
]


def method_id(value):
    return ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None


def trained_base(layer, method, options):
    """The layer as the engine of `method` holds its base: itself, or its dequantized version."""
    return layer if method == "AMXBF16_SFT" else layer.dequantized(scheme_for_method(method, **options))


def assert_rel(actual, expected, what, tol=TOL):
    err = relative_l2(actual, expected)
    assert err <= tol, f"{what}: relative L2 {err:.3g} > {tol}"


def test_gradients_accumulate_into_grad_like_autograd():
    """None -> set, existing -> added; tensors that do not require grad keep .grad None."""
    shape, k = MAIN, 4
    layer = make_layer(shape, seed=7)
    tracked = ("gate_lora_a", "up_lora_b", "down_lora_a", "down_lora_b")
    for name in tracked:
        getattr(layer.lora, name).requires_grad_()
    preset = torch.full(shape.lora_shapes()["up_lora_b"], 0.25, dtype=torch.bfloat16)
    layer.lora.up_lora_b.grad = preset.clone()
    wrapper = make_wrapper(shape, top_k=k)
    layer.load(wrapper)

    first, second = layer.batch(7, k, seed=70), layer.batch(12, k, seed=71)
    g1 = {name: g.clone() for name, g in step(wrapper, first).grads.items()}
    for name in LORA_NAMES:
        tensor = getattr(layer.lora, name)
        if name not in tracked:
            assert tensor.grad is None, name
            continue
        assert tensor.grad.shape == tensor.shape and tensor.grad.dtype == tensor.dtype, name
        expected = g1[name].float() + (preset.float() if name == "up_lora_b" else 0)
        assert_rel(tensor.grad, expected, f"{name}.grad after one backward")

    result = step(wrapper, second)
    assert_close(result, layer.reference(second))
    for name in tracked:
        expected = g1[name].float() + result.grads[name].float() + (preset.float() if name == "up_lora_b" else 0)
        assert_rel(getattr(layer.lora, name).grad, expected, f"{name}.grad after two backwards")


@pytest.mark.parametrize("requires_grad", [False, True])
def test_update_lora_weights_after_in_place_change(requires_grad):
    shape, k = MAIN, 4
    wrapper, layer = build(shape, top_k=k, seed=8, requires_grad=requires_grad)
    batch = layer.batch(9, k, seed=80)
    before = layer.reference(batch)
    assert_close(step(wrapper, batch), before)
    gen = torch.Generator().manual_seed(81)
    with torch.no_grad():
        for t in layer.lora:
            t.add_(torch.randn(t.shape, generator=gen).to(t.dtype) * t.float().std())
    wrapper.update_lora_weights()
    after = layer.reference(batch)
    assert relative_l2(after.out, before.out) > 10 * TOL  # the change matters
    assert_close(step(wrapper, batch), after)


@pytest.mark.parametrize("method,options", METHODS, ids=method_id)
def test_micro_batches_accumulate_like_one_batch(method, options):
    """max_cache_depth=2: forward A, forward B, backward B, backward A accumulates the same .grad as
    one batch holding A and B."""
    shape, k = MAIN, 6
    layer = make_layer(shape, seed=9, requires_grad=True)
    wrapper = make_wrapper(shape, top_k=k, depth=2, method=method, **options)
    layer.load(wrapper)
    a, b = layer.batch(5, k, seed=90), layer.batch(11, k, seed=91)
    wrapper.forward_sft(a.x, a.expert_ids, a.weights, save_for_backward=True)
    wrapper.forward_sft(b.x, b.expert_ids, b.weights, save_for_backward=True)
    grad_in_b, grads_b = wrapper.backward(b.grad_output)
    grad_in_a, grads_a = wrapper.backward(a.grad_output)
    accumulated = clone_all(t.grad for t in layer.lora)

    for t in layer.lora:
        t.grad = None
    both = cat_batches([a, b])
    whole = step(wrapper, both)
    reference = trained_base(layer, method, options).reference(both)
    for name, acc, t in zip(LORA_NAMES, accumulated, layer.lora):
        assert_rel(acc, t.grad, f"{name}.grad, micro-batches vs one batch")
        assert_rel(acc, reference.grads[name], f"{name}.grad, micro-batches vs reference")
    assert_rel(torch.cat([grad_in_a, grad_in_b]), whole.grad_input, "grad_input")
    assert_rel(torch.cat([grads_a["routing_weights"], grads_b["routing_weights"]]),
               whole.grads["routing_weights"], "routing_weights")


@pytest.mark.parametrize("lora_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("method,options", METHODS, ids=method_id)
def test_adamw_fits_a_lora_target(method, options, lora_dtype):
    """50 AdamW steps from zero-initialised B drive the MSE to a teacher's output (same base as the
    engine trains on, a LoRA with other A and nonzero B, so a LoRA can fit it exactly) down at least
    10x. Base weights, map and inputs stay bit-identical."""
    shape, q, k, steps = TINY, 32, 2, 50
    layer = make_layer(shape, seed=3, zero_b=True, lora_dtype=lora_dtype, requires_grad=True)
    teacher = random_lora(shape.num_experts, shape.hidden, shape.intermediate, shape.rank, seed=40)
    batch = make_batch(shape, q, k, seed=5)
    target = lora_moe_forward(batch.x, batch.expert_ids, batch.weights, *trained_base(layer, method, options).physical(),
                              teacher, shape.scale)
    base_before = clone_all([layer.gate, layer.up, layer.down, layer.physical_map])
    batch_before = clone_all(batch)
    b_before = clone_all(layer.lora[1::2])

    wrapper = make_wrapper(shape, top_k=k, method=method, **options)
    layer.load(wrapper)
    optimizer = torch.optim.AdamW(layer.lora, lr=1e-2)

    def loss_of(out):
        return F.mse_loss(out.float(), target)

    first = loss_of(wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=False)).item()
    for _ in range(steps):
        out = wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=True)
        out = out.detach().requires_grad_()
        loss_of(out).backward()  # out.grad = dloss/dout
        wrapper.backward(out.grad)  # accumulates into each LoRA tensor's .grad
        optimizer.step()
        optimizer.zero_grad()
        wrapper.update_lora_weights()
    last = loss_of(wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=False)).item()

    assert first > 0 and last <= first / 10, f"loss {first:.3g} -> {last:.3g}"
    for name, before, after in zip(("gate", "up", "down", "physical_to_logical_map"), base_before,
                                   [layer.gate, layer.up, layer.down, layer.physical_map]):
        assert torch.equal(before, after), f"{name} was modified"
    for before, after in zip(batch_before, batch):
        assert torch.equal(before, after), "an input tensor was modified"
    for before, after in zip(b_before, layer.lora[1::2]):
        assert not torch.equal(before, after.detach()), "B did not move"
