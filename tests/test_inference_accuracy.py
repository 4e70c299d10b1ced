"""BF16 inference forward against the fp32 reference (kt_moe.reference.moe_forward of the same bf16
weights and inputs): relative L2 <= 5e-3.

Coverage design (the inference files stay well under a minute on 2 cores):
  - the full grid q in {1, 3, 16, 128, 600} x k in {1, 6, 8} x threadpool_count in {1, 2} at the
    level the process starts with (the host's best), shape MAIN (E=10, H=200, I=120: no dimension,
    nor I/2, a multiple of 16); q=600 runs with chunked_prefill_size 256 (three chunks, the last
    partial); q=1 and q=3 leave most experts without a token and split each expert over threads;
  - a reduced grid at every other selectable level plus amx_emulated (shape SMALL there);
  - fp16 / fp32 hidden states, int32 ids, fp16 weights; one thread; more logical experts than slots.
"""

import pytest
import torch

import kt_moe
from inference_helpers import MAIN, SMALL, START_ISA, assert_close, build

GRID_Q = (1, 3, 16, 128, 600)
GRID_K = (1, 6, 8)
CHUNK = 256
REDUCED = [  # (q, k, threadpool_count)
    (1, 6, 1),
    (3, 8, 2),
    (128, 6, 2),
    (600, 1, 1),
]


def run_case(shape, q, k, tp, seed, threads=2):
    wrapper, layer = build(shape, top_k=k, seed=seed, tp=tp, threads=threads, chunk=CHUNK)
    batch = layer.batch(q, k, seed=seed)
    out = wrapper.forward(batch.x, batch.ids, batch.weights)
    assert out.dtype == torch.bfloat16 and out.device.type == "cpu"
    assert_close(out, layer.reference(*batch))


@pytest.mark.parametrize("tp", (1, 2))
@pytest.mark.parametrize("k", GRID_K)
@pytest.mark.parametrize("q", GRID_Q)
def test_matches_reference_grid(q, k, tp):
    run_case(MAIN, q, k, tp, seed=100 * q + 10 * k + tp)


OTHER_LEVELS = [level for level in kt_moe.cpu_info()["selectable"] if level != START_ISA]


@pytest.mark.parametrize("q,k,tp", REDUCED)
@pytest.mark.parametrize("isa_level", OTHER_LEVELS, indirect=True)
def test_matches_reference_at_each_isa_level(isa_level, q, k, tp):
    assert kt_moe.cpu_info()["active"] == isa_level
    run_case(SMALL if isa_level == "amx_emulated" else MAIN, q, k, tp, seed=100 * q + 10 * k + tp + 7)


def test_one_thread():
    run_case(MAIN, 16, 6, 1, seed=5, threads=1)


@pytest.mark.parametrize("x_dtype,ids_dtype,w_dtype", [
    (torch.float32, torch.int32, torch.float32),
    (torch.float16, torch.int64, torch.float16),
])
def test_accepted_input_dtypes(x_dtype, ids_dtype, w_dtype):
    """fp32 / fp16 hidden states, int32 ids and fp16 weights are accepted; the reference sees the
    values the engine computes with (x rounded to bf16)."""
    wrapper, layer = build(MAIN, top_k=6, seed=3)
    batch = layer.batch(7, 6, seed=3)
    x = torch.randn(7, MAIN.hidden, generator=torch.Generator().manual_seed(3)).to(x_dtype)
    out = wrapper.forward(x, batch.ids.to(ids_dtype), batch.weights.to(w_dtype))
    assert out.dtype == torch.bfloat16
    assert_close(out, layer.reference(x.to(torch.bfloat16), batch.ids, batch.weights.to(w_dtype).float()))


def test_more_logical_experts_than_slots():
    wrapper, layer = build(MAIN, top_k=6, seed=4, num_logical=25)
    batch = layer.batch(9, 6, seed=4)
    assert_close(wrapper.forward(*batch), layer.reference(*batch))


def test_results_do_not_depend_on_threads_or_subpools():
    """Same bf16 inputs, different thread layouts: equal up to fp32 summation order."""
    outs = []
    for threads, tp in ((1, 1), (2, 1), (2, 2)):
        wrapper, layer = build(MAIN, top_k=6, seed=9, threads=threads, tp=tp)
        outs.append(wrapper.forward(*layer.batch(33, 6, seed=9)).float())
    for out in outs[1:]:
        assert_close(out, outs[0], tol=1e-2 * 0.25)
