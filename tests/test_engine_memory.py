"""Per-call buffers of the engines (engine.scratch_bytes): calls of a steady size reuse them, and
after a call every buffer above both what the call needed and engine.scratch_keep_bytes is freed
(the next call allocates what it needs), so one large call does not keep its memory for the
wrapper's life."""

import pytest

import inference_helpers
import sft_helpers

DEFAULT_KEEP = 256 << 20


def inference_scratch(shape, rows):
    """Bytes of the BF16 forward's buffers for `rows` routed rows with one slice: x [R, H] bf16,
    z [R, I] bf16, y [R, H] fp32."""
    return rows * (2 * shape.hidden + 2 * shape.intermediate + 4 * shape.hidden)


def test_inference_buffers_shrink_after_a_smaller_call():
    shape = inference_helpers.TINY
    wrapper, layer = inference_helpers.build(shape, seed=21, chunk=256)
    engine = wrapper.engine
    assert engine.scratch_keep_bytes == DEFAULT_KEEP and engine.scratch_bytes == 0
    engine.scratch_keep_bytes = 0
    large, small = layer.batch(120, 2, seed=21), layer.batch(1, 2, seed=22)
    for _ in range(2):  # a steady size keeps its buffers
        inference_helpers.assert_close(wrapper.forward(*large), layer.reference(*large))
        assert engine.scratch_bytes == inference_scratch(shape, 240)
    inference_helpers.assert_close(wrapper.forward(*small), layer.reference(*small))
    assert engine.scratch_bytes == 0  # freed after the call
    inference_helpers.assert_close(wrapper.forward(*small), layer.reference(*small))
    assert engine.scratch_bytes == inference_scratch(shape, 2)
    inference_helpers.assert_close(wrapper.forward(*large), layer.reference(*large))  # grows again
    assert engine.scratch_bytes == inference_scratch(shape, 240)


def test_inference_buffers_under_the_keep_threshold_stay():
    wrapper, layer = inference_helpers.build(inference_helpers.TINY, seed=23, chunk=256)
    wrapper.forward(*layer.batch(120, 2, seed=23))
    kept = wrapper.engine.scratch_bytes
    wrapper.forward(*layer.batch(1, 2, seed=24))
    assert wrapper.engine.scratch_bytes == kept < DEFAULT_KEEP


@pytest.mark.parametrize("save", [True, False])
def test_sft_buffers_shrink_after_a_smaller_call(save):
    wrapper, layer = sft_helpers.build(sft_helpers.TINY, top_k=2, seed=25, chunk=256, tp=2)
    engine = wrapper.engine
    assert engine.scratch_keep_bytes == DEFAULT_KEEP
    engine.scratch_keep_bytes = 0
    large, small = layer.batch(120, 2, seed=25), layer.batch(2, 2, seed=26)

    def call(batch):
        if save:
            sft_helpers.assert_close(sft_helpers.step(wrapper, batch), layer.reference(batch))
        else:
            out = wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=False)
            sft_helpers.assert_close(sft_helpers.Result(out, None, {}), layer.reference(batch), names=("out",))

    call(large)
    large_bytes = engine.scratch_bytes
    call(large)
    assert engine.scratch_bytes == large_bytes
    call(small)
    assert engine.scratch_bytes < large_bytes / 10
    call(large)
    assert engine.scratch_bytes == large_bytes


def test_sft_buffers_under_the_keep_threshold_stay():
    wrapper, layer = sft_helpers.build(sft_helpers.TINY, top_k=2, seed=27, chunk=256)
    sft_helpers.step(wrapper, layer.batch(120, 2, seed=27))
    kept = wrapper.engine.scratch_bytes
    sft_helpers.step(wrapper, layer.batch(2, 2, seed=28))
    assert wrapper.engine.scratch_bytes == kept < DEFAULT_KEEP
