"""submit_forward / sync_forward: submit returns while the pool is still busy, sync waits with the
GIL released, the call-order RuntimeErrors (and the wrapper staying usable after them), wrappers
sharing one pool, errors of other pool users not leaking into a forward, and a wrapper deleted with
a forward pending."""

import gc
import threading
import time

import pytest
import torch

from inference_helpers import MAIN, TINY, assert_close, build

PAUSE_US = 150_000  # how long the blocking task holds each of its indices


def block_pool(wrapper, n=2):
    """Queue a task that occupies the wrapper's pool for about PAUSE_US (n indices, 2 threads)."""
    counts = torch.zeros(n, dtype=torch.int64)
    wrapper.pool.submit_selftest(counts, pause_us=PAUSE_US)
    return counts


def test_submit_returns_at_once_and_sync_waits():
    wrapper, layer = build(MAIN, top_k=6, seed=1)
    batch = layer.batch(8, 6, seed=1)
    counts = block_pool(wrapper)
    start = time.perf_counter()
    wrapper.submit_forward(*batch, None)
    assert time.perf_counter() - start < PAUSE_US * 1e-6 / 2  # queued behind the blocking task
    assert wrapper.engine.pending == 1
    out = wrapper.sync_forward(batch.x, None)
    assert torch.equal(counts, torch.ones(2, dtype=torch.int64))  # the task queued first has run
    assert wrapper.engine.pending == 0
    assert_close(out, layer.reference(*batch))
    wrapper.pool.sync()


def test_forward_runs_behind_the_work_queued_on_the_pool():
    """forward() runs on the calling thread only when the pool is idle; otherwise it waits its turn."""
    wrapper, layer = build(MAIN, top_k=6, seed=1)
    batch = layer.batch(8, 6, seed=1)
    counts = block_pool(wrapper)
    out = wrapper.forward(*batch)
    assert torch.equal(counts, torch.ones(2, dtype=torch.int64))  # the task queued first has run
    assert wrapper.engine.pending == 0
    assert_close(out, layer.reference(*batch))
    assert torch.equal(wrapper.forward(*batch), out)  # on an idle pool: run by this thread, same result
    wrapper.pool.sync()


def test_sync_releases_the_gil():
    wrapper, layer = build(TINY, top_k=2, seed=2)
    batch = layer.batch(4, 2, seed=2)
    block_pool(wrapper)
    wrapper.submit_forward(*batch)
    ticks, done = [0], threading.Event()

    def spin():
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        wrapper.sync_forward(batch.x)
    finally:
        done.set()
        thread.join()
    assert ticks[0] > 10  # the other Python thread ran while sync waited
    wrapper.pool.sync()


def test_call_order_errors_leave_the_wrapper_usable():
    wrapper, layer = build(TINY, top_k=2, seed=3)
    batch = layer.batch(5, 2, seed=3)
    with pytest.raises(RuntimeError, match=r"^sync_forward\(\) called without a pending forward"):
        wrapper.sync_forward(batch.x)
    with pytest.raises(RuntimeError, match=r"^sync_deferred_forward\(\) called without deferred experts"):
        wrapper.sync_deferred_forward()
    wrapper.submit_forward(*batch)
    with pytest.raises(RuntimeError, match=r"^submit_forward\(\) called while a forward is pending"):
        wrapper.submit_forward(*batch)
    with pytest.raises(RuntimeError, match=r"^submit_forward\(\) called while a forward is pending"):
        wrapper.forward(*batch)
    first = wrapper.sync_forward(batch.x)
    assert_close(first, layer.reference(*batch))
    assert torch.equal(wrapper.forward(*batch), first)


def test_unfetched_deferred_output_blocks_the_next_submit():
    wrapper, layer = build(TINY, top_k=2, seed=4, max_deferred=1)
    x, ids, weights = layer.batch(5, 2, seed=4)
    immediate, deferred = wrapper.select_deferred_experts(ids, weights, protected_k=1)
    wrapper.forward(x, immediate, weights, deferred_ids=deferred)
    with pytest.raises(RuntimeError, match=r"deferred experts were not fetched: call sync_deferred_forward"):
        wrapper.submit_forward(x, ids, weights)
    wrapper.sync_deferred_forward()
    assert_close(wrapper.forward(x, ids, weights), layer.reference(x, ids, weights))


def test_a_refused_submit_leaves_nothing_pending():
    wrapper, layer = build(TINY, top_k=2, seed=5, max_deferred=1)
    x, ids, weights = layer.batch(5, 2, seed=5)
    bad = ids.clone()
    bad[2, 1] = TINY.num_experts
    with pytest.raises(ValueError, match=r"expert_ids\[2, 1\] = 6 is out of range"):
        wrapper.submit_forward(x, bad, weights)
    immediate, deferred = wrapper.select_deferred_experts(ids, weights, protected_k=1)
    deferred[deferred != -1] = 99  # refused after the immediate part was queued: that part is dropped
    with pytest.raises(ValueError, match="= 99 is out of range"):
        wrapper.submit_forward(x, immediate, weights, deferred_ids=deferred)
    assert wrapper.engine.pending == 0
    assert_close(wrapper.forward(x, ids, weights), layer.reference(x, ids, weights))


def test_wrappers_sharing_a_pool_interleave():
    a, layer_a = build(MAIN, top_k=6, seed=6, layer_idx=0)
    b, layer_b = build(MAIN, top_k=6, seed=7, layer_idx=1)
    assert a.pool is b.pool
    batch_a, batch_b = layer_a.batch(9, 6, seed=6), layer_b.batch(3, 6, seed=7)
    a.submit_forward(*batch_a)
    b.submit_forward(*batch_b)
    assert_close(b.sync_forward(batch_b.x), layer_b.reference(*batch_b))
    assert_close(a.sync_forward(batch_a.x), layer_a.reference(*batch_a))


def test_other_pool_errors_do_not_reach_a_forward():
    wrapper, layer = build(TINY, top_k=2, seed=8)
    batch = layer.batch(3, 2, seed=8)
    wrapper.pool.submit_selftest(torch.zeros(4, dtype=torch.int64), fail_at=1, message="not ours")
    assert_close(wrapper.forward(*batch), layer.reference(*batch))
    with pytest.raises(RuntimeError, match="^not ours$"):
        wrapper.pool.sync()  # still reported to the pool's own sync


def test_deleting_a_wrapper_with_a_pending_forward_waits_for_it():
    wrapper, layer = build(MAIN, top_k=6, seed=9)
    pool = wrapper.pool
    batch = layer.batch(16, 6, seed=9)
    block_pool(wrapper)
    wrapper.submit_forward(*batch)
    del wrapper
    gc.collect()  # the engine waits for its queued forward before its memory goes
    pool.sync()
