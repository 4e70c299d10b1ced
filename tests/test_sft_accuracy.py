"""AMXBF16_SFT forward and backward against the fp32 reference (kt_moe.reference.lora_moe_backward):
relative L2 <= 1e-2 for the output, grad_input, the six LoRA gradients and the routing-weight
gradient.

Coverage design (keeps the SFT files within minutes on 2 cores):
  - the full grid q in {1, 7, 128} x k in {1, 2, 6, 8} x threadpool_count in {1, 2} at the level the
    process starts with (the host's best), shape MAIN (E=10, H=200, I=120, r=8: no dimension, nor
    I/2, a multiple of 16); q=1 and q=7 leave most experts without a token;
  - a reduced grid (q=1 k=1, q=7 k=6 tp=2, q=128 k=8 tp=2) at every other selectable level, with
    shape SMALL (E=8, H=56, I=36, r=6) at the slow amx_emulated level;
  - the accepted input dtypes (fp32/fp16 hidden states, int32 ids, fp32 grad_output, fp32 LoRA);
  - other ranks; more logical experts than physical slots;
  - threadpool_count 1 vs 2 and cpuinfer_threads 1 vs 2 compared with each other.
"""

import pytest
import torch

import kt_moe
from sft_helpers import (MAIN, SMALL, START_ISA, TOL, Result, Shape, assert_close, build,
                         check_layout, make_batch, step)

GRID_Q = (1, 7, 128)
GRID_K = (1, 2, 6, 8)
REDUCED = [  # (q, k, threadpool_count)
    (1, 1, 1),
    (7, 6, 2),
    (128, 8, 2),
]


def run_case(shape, q, k, tp, seed, **kwargs):
    wrapper, layer = build(shape, top_k=k, seed=seed, tp=tp, **kwargs)
    batch = layer.batch(q, k, seed=seed)
    result = step(wrapper, batch)
    check_layout(result, batch, layer.lora)
    assert_close(result, layer.reference(batch))


@pytest.mark.parametrize("tp", (1, 2))
@pytest.mark.parametrize("k", GRID_K)
@pytest.mark.parametrize("q", GRID_Q)
def test_matches_reference_grid(q, k, tp):
    run_case(MAIN, q, k, tp, seed=100 * q + 10 * k + tp)


# Every level this host can run except the one the full grid already covers.
OTHER_LEVELS = [level for level in kt_moe.cpu_info()["selectable"] if level != START_ISA]


@pytest.mark.parametrize("q,k,tp", REDUCED)
@pytest.mark.parametrize("isa_level", OTHER_LEVELS, indirect=True)
def test_matches_reference_at_each_isa_level(isa_level, q, k, tp):
    assert kt_moe.cpu_info()["active"] == isa_level
    shape = SMALL if isa_level == "amx_emulated" else MAIN
    run_case(shape, q, k, tp, seed=100 * q + 10 * k + tp + 7)


@pytest.mark.parametrize("x_dtype", (torch.float32, torch.float16))
def test_accepted_input_dtypes(x_dtype):
    """fp32 / fp16 hidden states, int32 expert ids and fp32 grad_output are accepted; the reference
    gets the very same values."""
    shape, k, seed = MAIN, 6, 21
    wrapper, layer = build(shape, top_k=k, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    batch = make_batch(shape, 7, k, seed=seed)._replace(
        x=torch.randn(7, shape.hidden, generator=gen).to(x_dtype),
        grad_output=torch.randn(7, shape.hidden, generator=gen))
    out = wrapper.forward_sft(batch.x, batch.expert_ids.to(torch.int32), batch.weights, save_for_backward=True)
    grad_input, grads = wrapper.backward(batch.grad_output)
    result = Result(out, grad_input, grads)
    check_layout(result, batch, layer.lora)
    assert_close(result, layer.reference(batch))


def test_fp32_lora_tensors():
    """fp32 LoRA tensors are accepted; their gradients come back in fp32."""
    wrapper, layer = build(MAIN, top_k=2, seed=3, lora_dtype=torch.float32)
    batch = layer.batch(33, 2, seed=3)
    result = step(wrapper, batch)
    check_layout(result, batch, layer.lora)
    for name in layer.lora._fields:
        assert result.grads[name].dtype == torch.float32
    assert_close(result, layer.reference(batch))


@pytest.mark.parametrize("rank,alpha", [(1, 4.0), (5, 7.5), (16, 32.0)])
def test_other_ranks(rank, alpha):
    shape = Shape(rank=rank, alpha=alpha)
    run_case(shape, 7, 6, tp=2, seed=rank)


def test_more_logical_experts_than_slots():
    """The map may pick any logical experts (repeats allowed) out of a larger stack of weights."""
    shape = MAIN
    physical_map = torch.tensor([13, 2, 2, 0, 9, 11, 5, 13, 7, 1])
    wrapper, layer = build(shape, top_k=6, seed=5, physical_map=physical_map, num_logical=14)
    batch = layer.batch(33, 6, seed=5)
    assert_close(step(wrapper, batch), layer.reference(batch))


@pytest.mark.parametrize("threads,tp", [(2, 1), (2, 2)])
def test_threads_do_not_change_results(threads, tp):
    """cpuinfer_threads 1 vs 2 and threadpool_count 1 vs 2 agree within bf16 rounding."""
    shape, k = MAIN, 6
    batch = make_batch(shape, 128, k, seed=11)
    baseline = step(build(shape, top_k=k, seed=11, threads=1, tp=1)[0], batch)
    other = step(build(shape, top_k=k, seed=11, threads=threads, tp=tp)[0], batch)
    assert_close(other, baseline, TOL)


@pytest.mark.parametrize("tp", (1, 2))
def test_fp32_outputs_round_to_the_bf16_ones(tp):
    """output_dtype / grad_input_dtype torch.float32 give the engine's sums unrounded: rounded to
    bf16 they are exactly the default outputs, and the gradients do not change."""
    shape, k, seed = MAIN, 6, 12
    wrapper, layer = build(shape, top_k=k, seed=seed, tp=tp)
    batch = layer.batch(33, k, seed=seed)
    rounded = step(wrapper, batch)
    out = wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=True,
                              output_dtype=torch.float32)
    grad_input, grads = wrapper.backward(batch.grad_output, grad_input_dtype=torch.float32)
    assert out.dtype == grad_input.dtype == torch.float32
    assert torch.equal(out.to(torch.bfloat16), rounded.out)
    assert torch.equal(grad_input.to(torch.bfloat16), rounded.grad_input)
    for name, grad in grads.items():
        assert torch.equal(grad, rounded.grads[name]), name
    assert_close(Result(out, grad_input, grads), layer.reference(batch))
