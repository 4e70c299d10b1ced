"""Engines sharing one worker pool: every submission has its own ticket, so a failure reaches only
the call that made it (the SFT engine's calls included), and loads running on the pool while
another thread submits see a consistent loaded count."""

import sys
import threading
from pathlib import Path

import pytest
import torch

import inference_helpers
import sft_helpers

TESTS = str(Path(__file__).parent)

# Two SFT wrappers on one pool, B stepping in a thread while A's forwards fail inside their pool
# work: the address space is limited just above what the process maps, so that A's per-call
# buffers (X [R, H] bf16 is 32 MiB, each slice's y [R, H] fp32 64 MiB) cannot all be allocated.
TWO_ENGINES = r"""
import resource, sys, threading, torch
sys.path.insert(0, sys.argv[1])
import sft_helpers as sh
torch.set_num_threads(1)
BIG = sh.Shape(num_experts=8, hidden=512, intermediate=32, rank=4, alpha=8.0)
a, _ = sh.build(BIG, top_k=8, chunk=4096)
b, layer = sh.build(sh.TINY, top_k=2)
assert a.pool is b.pool
big = sh.make_batch(BIG, 4096, 8)
small = layer.batch(5, 2)
expected = layer.reference(small)
sh.assert_close(sh.step(b, small), expected)  # B's buffers exist before the limit
b_failures = []
started, limited = threading.Event(), threading.Event()

def step_b():
    for i in range(30):
        try:
            sh.assert_close(sh.step(b, small), expected)
        except BaseException as e:
            b_failures.append(repr(e))
        if i == 0:  # this thread's stack and malloc arena exist: let the main thread set the limit
            started.set()
            limited.wait()

thread = threading.Thread(target=step_b)
thread.start()
started.wait()
with open("/proc/self/status") as f:
    mapped = next(int(line.split()[1]) for line in f if line.startswith("VmSize")) * 1024
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (mapped + (80 << 20), hard))  # A's output and X fit, y does not
limited.set()
a_raised = 0
for _ in range(10):
    try:
        a.forward_sft(big.x, big.expert_ids, big.weights, save_for_backward=False)
    except (MemoryError, RuntimeError) as e:
        a_raised += "bad_alloc" in str(e)
thread.join()
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
print("a_raised", a_raised, "b_failures", b_failures, "b_cache", b.engine.cache_depth)
"""


def test_two_sft_engines_on_one_pool_one_failing_natively(run_python):
    out = run_python("-c", TWO_ENGINES, TESTS, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["a_raised", "10", "b_failures", "[]", "b_cache", "0"], out.stdout


def test_sft_calls_do_not_see_other_pool_users_errors():
    wrapper, layer = sft_helpers.build(sft_helpers.TINY, top_k=2, seed=3)
    batch = layer.batch(4, 2, seed=3)
    wrapper.pool.submit_selftest(torch.zeros(4, dtype=torch.int64), fail_at=1, message="not ours")
    sft_helpers.assert_close(sft_helpers.step(wrapper, batch), layer.reference(batch))
    assert wrapper.engine.cache_depth == 0
    with pytest.raises(RuntimeError, match="^not ours$"):
        wrapper.pool.sync()  # still reported to the pool's own sync


def test_sft_and_inference_engines_share_a_pool_with_a_failing_user():
    sft, sft_layer = sft_helpers.build(sft_helpers.TINY, top_k=2, seed=4)
    inference, inference_layer = inference_helpers.build(inference_helpers.TINY, seed=4)
    assert sft.pool is inference.pool
    sft_batch, inference_batch = sft_layer.batch(3, 2, seed=4), inference_layer.batch(3, 2, seed=4)
    inference.pool.submit_selftest(torch.zeros(4, dtype=torch.int64), fail_at=0, message="third user")
    inference.submit_forward(*inference_batch)
    sft_helpers.assert_close(sft_helpers.step(sft, sft_batch), sft_layer.reference(sft_batch))
    inference_helpers.assert_close(inference.sync_forward(inference_batch.x), inference_layer.reference(*inference_batch))
    with pytest.raises(RuntimeError, match="^third user$"):
        inference.pool.sync()


def test_loads_on_the_pool_while_another_thread_submits():
    """The loaded count is written by the loads on the pool and read by submit on the caller's
    thread: a forward is refused until every expert is loaded and committed, then runs."""
    wrapper = inference_helpers.make_wrapper(inference_helpers.TINY)
    layer = inference_helpers.make_layer(inference_helpers.TINY, seed=5)
    gate, up, down = (t[layer.physical_map].to(torch.bfloat16).contiguous() for t in (layer.gate, layer.up, layer.down))
    batch = layer.batch(3, 2, seed=5)

    def load_all():  # what load_weights_from_tensors does: stage every slot, then put them in place
        wrapper.engine.begin_load()
        for p in range(inference_helpers.TINY.num_experts):
            wrapper.engine.load_expert_task(p, gate[p], up[p], down[p])
        wrapper.engine.commit_load()

    loader = threading.Thread(target=load_all)
    loader.start()
    refused = 0
    while not wrapper.engine.weights_loaded:
        try:
            wrapper.forward(*batch)
        except RuntimeError as e:
            assert str(e).startswith("Weights not loaded"), e
            refused += 1
            continue
        break  # the last load finished between the check and the forward
    loader.join()
    assert wrapper.engine.pending == 0
    inference_helpers.assert_close(wrapper.forward(*batch), layer.reference(*batch))
