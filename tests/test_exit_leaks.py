"""Clean lifetimes at interpreter exit: nanobind reports native objects still alive then
("nanobind: leaked N instances!"). Objects left alive at exit in common patterns, and cycles through
the tensors an engine holds (a tensor whose attributes lead back to the wrapper), must all be freed:
the engines show the tensors they hold to Python's cycle collector."""

import gc
import weakref
from pathlib import Path

import pytest
import torch

import inference_helpers

TESTS = str(Path(__file__).parent)

COMMON = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import inference_helpers as ih, sft_helpers as sh
wrapper, layer = ih.build()
output = wrapper.forward(*layer.batch(3, 2))                # an output alive, its wrapper deleted
del wrapper
kept, kept_layer = ih.build(seed=1)                         # a wrapper alive, a forward pending
kept.submit_forward(*kept_layer.batch(3, 2))
sft, sft_layer = sh.build(lora_dtype=torch.float32, requires_grad=True)
result = sh.step(sft, sft_layer.batch(3, 2))                # SFT outputs and grads alive, wrapper too
other, other_layer = sh.build(seed=2)
grads = sh.step(other, other_layer.batch(3, 2)).grads       # grads alive, their wrapper deleted
del other
pool = kept.pool
print("ok")
"""

CYCLES = r"""
import sys
sys.path.insert(0, sys.argv[1])
import inference_helpers as ih, sft_helpers as sh
wrapper, layer = ih.build()
wrapper.submit_forward(*layer.batch(3, 2))
wrapper._pending.output.owner = wrapper                     # pending output -> wrapper -> engine -> output
del wrapper
sft, _ = sh.build()
sft._lora_bf16[0].owner = sft                               # LoRA tensor -> wrapper -> engine -> LoRA tensor
del sft
print("ok")
"""


@pytest.mark.parametrize("script", [COMMON, CYCLES], ids=["common", "cycles"])
def test_nothing_leaks_at_exit(run_python, script):
    out = run_python("-c", script, TESTS)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "nanobind" not in out.stderr, out.stderr


def test_collecting_a_cycle_through_a_pending_forward_waits_for_it():
    """The collector breaks the cycle at the engine, which first waits for the pending forward
    (queued behind a pausing task) and only then drops the tensors it writes."""
    wrapper, layer = inference_helpers.build(inference_helpers.TINY, seed=3)
    pool = wrapper.pool
    before = torch.zeros(2, dtype=torch.int64)
    pool.submit_selftest(before, pause_us=100_000)
    wrapper.submit_forward(*layer.batch(3, 2, seed=3))
    output = weakref.ref(wrapper._pending.output)
    output().owner = wrapper
    del wrapper
    assert output() is not None  # only the uncollected cycle holds it
    gc.collect()
    assert output() is None
    assert torch.equal(before, torch.ones(2, dtype=torch.int64))  # the task before the forward has run
    pool.sync()
