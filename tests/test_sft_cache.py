"""The bounded forward cache: forward_sft(save_for_backward=True) pushes one entry, backward pops the
most recent one (LIFO); a push beyond max_cache_depth is refused with "Forward cache full" and
overwrites nothing; backward on an empty cache raises "No forward cache available";
save_for_backward=False pushes nothing."""

import pytest
import torch

from kt_moe.reference import relative_l2
from sft_helpers import MAIN, TOL, Result, assert_close, build, make_wrapper, step

SHAPE = MAIN
K = 4


def batches(layer, sizes, seed=0):
    return [layer.batch(q, K, seed=seed + i) for i, q in enumerate(sizes)]


def forward(wrapper, batch, save=True):
    return wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=save)


def test_backward_with_empty_cache():
    wrapper, layer = build(SHAPE, top_k=K)
    with pytest.raises(RuntimeError, match="No forward cache available"):
        wrapper.backward(layer.batch(3, K).grad_output)


def test_backward_before_anything_is_loaded():
    wrapper = make_wrapper(SHAPE, top_k=K)
    with pytest.raises(RuntimeError, match="No forward cache available"):
        wrapper.backward(torch.zeros(3, SHAPE.hidden, dtype=torch.bfloat16))


def test_backward_pops_its_entry():
    wrapper, layer = build(SHAPE, top_k=K)
    batch = layer.batch(3, K)
    step(wrapper, batch)
    with pytest.raises(RuntimeError, match="No forward cache available"):
        wrapper.backward(batch.grad_output)


def test_default_saves_for_backward():
    wrapper, layer = build(SHAPE, top_k=K)
    batch = layer.batch(5, K)
    out = wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights)
    grad_input, grads = wrapper.backward(batch.grad_output)
    assert_close(Result(out, grad_input, grads), layer.reference(batch))


@pytest.mark.parametrize("depth", [1, 3])
def test_full_cache_refuses_and_overwrites_nothing(depth):
    wrapper, layer = build(SHAPE, top_k=K, depth=depth)
    saved = batches(layer, [3, 5, 8][:depth])
    outs = [forward(wrapper, b) for b in saved]
    extra = layer.batch(4, K, seed=99)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="Forward cache full"):
            forward(wrapper, extra)
    for batch, out in reversed(list(zip(saved, outs))):  # LIFO: the last saved comes back first
        grad_input, grads = wrapper.backward(batch.grad_output)
        assert_close(Result(out, grad_input, grads), layer.reference(batch))
    with pytest.raises(RuntimeError, match="No forward cache available"):
        wrapper.backward(extra.grad_output)
    step(wrapper, extra)  # room again


def test_save_false_pushes_nothing():
    wrapper, layer = build(SHAPE, top_k=K, depth=1)
    saved, other = batches(layer, [3, 6])
    out = forward(wrapper, saved)
    for _ in range(3):  # the cache (depth 1) is full, yet these run
        other_out = forward(wrapper, other, save=False)
        assert relative_l2(other_out, layer.reference(other).out) <= TOL
    grad_input, grads = wrapper.backward(saved.grad_output)  # the saved forward, not the later ones
    assert_close(Result(out, grad_input, grads), layer.reference(saved))
    forward(wrapper, other, save=False)
    with pytest.raises(RuntimeError, match="No forward cache available"):
        wrapper.backward(other.grad_output)


def test_micro_batches_in_reverse_order_match_one_at_a_time():
    """Forward 3 micro-batches of different sizes, backward them in reverse order: the same outputs
    and gradients as forward+backward of each alone."""
    sizes = [3, 7, 12]
    stacked, layer = build(SHAPE, top_k=K, depth=len(sizes), seed=4)
    single, _ = build(SHAPE, top_k=K, depth=1, seed=4)
    micro = batches(layer, sizes, seed=40)
    outs = [forward(stacked, b) for b in micro]
    results = {}
    for i in reversed(range(len(micro))):
        results[i] = Result(outs[i], *stacked.backward(micro[i].grad_output))
    for i, batch in enumerate(micro):
        alone = step(single, batch)
        assert_close(results[i], alone)
        assert_close(results[i], layer.reference(batch))


def test_depth_two_interleaved():
    """push A, push B, pop B, push C, pop C, pop A."""
    wrapper, layer = build(SHAPE, top_k=K, depth=2, seed=5)
    a, b, c = batches(layer, [2, 5, 9], seed=50)
    out_a, out_b = forward(wrapper, a), forward(wrapper, b)
    assert_close(Result(out_b, *wrapper.backward(b.grad_output)), layer.reference(b))
    out_c = forward(wrapper, c)
    assert_close(Result(out_c, *wrapper.backward(c.grad_output)), layer.reference(c))
    assert_close(Result(out_a, *wrapper.backward(a.grad_output)), layer.reference(a))
    with pytest.raises(RuntimeError, match="No forward cache available"):
        wrapper.backward(a.grad_output)


def test_same_size_entries_are_told_apart():
    """Two saved forwards of the same q: backward uses the most recent one's inputs."""
    wrapper, layer = build(SHAPE, top_k=K, depth=2, seed=6)
    a, b = batches(layer, [6, 6], seed=60)
    assert not torch.equal(a.x, b.x)
    forward(wrapper, a)
    forward(wrapper, b)
    _, grads_b = wrapper.backward(b.grad_output)
    ref_b = layer.reference(b)
    assert relative_l2(grads_b["down_lora_b"], ref_b.grads["down_lora_b"]) <= TOL
    assert relative_l2(grads_b["routing_weights"], ref_b.grads["routing_weights"]) <= TOL
