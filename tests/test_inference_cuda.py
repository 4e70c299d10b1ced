"""Inference batches on a real CUDA device (kt_moe/device_transfer.py with torch.cuda itself): the
result equals the CPU batch's, lands on the caller's device (or the CPU with cpu_save), and every
copy is ordered on the caller's stream, also when the inputs are still being written by GPU work
queued on that stream. Runs only where torch sees a CUDA device; test_inference_device.py checks
the same logic with a recorder on every machine."""

import pytest
import torch

from inference_helpers import MAIN, assert_close, build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GPU = torch.device("cuda", 0)


def cuda_stream_argument(kind: str, stream: torch.cuda.Stream):
    """The forms a caller may pass as cuda_stream for `stream`."""
    return {"handle": stream.cuda_stream, "stream": stream, "current": None}[kind]


@pytest.mark.parametrize("kind", ("handle", "stream", "current"))
@pytest.mark.parametrize("cpu_save", (False, True))
def test_cuda_forward_matches_the_cpu_forward(kind, cpu_save):
    wrapper, layer = build(MAIN, top_k=6, seed=3, cpu_save=cpu_save)
    batch = layer.batch(33, 6, seed=4)
    expected = wrapper.forward(batch.x, batch.ids, batch.weights)
    stream = torch.cuda.Stream(GPU)
    with torch.cuda.stream(stream):
        x, ids, weights = (t.to(GPU, non_blocking=True) for t in batch)
        out = wrapper.forward(x, ids, weights, cuda_stream_argument(kind, stream))
        assert out.device == (torch.device("cpu") if cpu_save else x.device)
        result = out.float().cpu()  # queued on the stream after the copy back
    stream.synchronize()
    assert torch.equal(result, expected.float())
    assert_close(result, layer.reference(batch.x, batch.ids, batch.weights))


def test_inputs_written_by_queued_gpu_work_are_read_after_it():
    """hidden_states written by GPU work still queued on the stream (behind a kernel that spins for
    about a second): the engine must read them only after that work, not the zeros before it."""
    wrapper, layer = build(MAIN, top_k=6, seed=5)
    batch = layer.batch(64, 6, seed=6)
    source, ids, weights = (t.to(GPU) for t in batch)  # before the spin: a pageable copy would wait for it
    torch.cuda.synchronize()
    stream = torch.cuda.Stream(GPU)
    with torch.cuda.stream(stream):
        x = torch.zeros_like(source)
        torch.cuda._sleep(2_000_000_000)
        x.copy_(source)
        wrapper.submit_forward(x, ids, weights, stream.cuda_stream)
        out = wrapper.sync_forward(x, stream.cuda_stream)
        result = out.float().cpu()
    stream.synchronize()
    assert_close(result, layer.reference(batch.x, batch.ids, batch.weights))


def test_large_cuda_activations_stay_finite():
    wrapper, layer = build(MAIN, top_k=6, seed=7)
    batch = layer.batch(16, 6, seed=8)
    x = (batch.x.float() * 1e3).to(torch.bfloat16)
    out = wrapper.forward(x.to(GPU), batch.ids.to(GPU), batch.weights.to(GPU)).float().cpu()
    assert torch.isfinite(out).all()
    assert_close(out, layer.reference(x, batch.ids, batch.weights))
