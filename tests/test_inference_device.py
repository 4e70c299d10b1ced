"""The device handling of inference batches (kt_moe/device_transfer.py) without a GPU: CPU batches
never touch torch.cuda; for CUDA batches (CPU tensors made to look like CUDA ones, torch.cuda
replaced by a recorder) every copy is ordered on the caller's stream, inputs land in pinned memory
before the engine reads them, the result goes back on the stream, or stays on the CPU with
cpu_save; and how a cuda_stream argument becomes a stream."""

import contextlib

import pytest
import torch

from inference_helpers import MAIN, assert_close, build
from kt_moe import device_transfer
from kt_moe.device_transfer import CudaOps

GPU = torch.device("cuda", 0)


class RecordingCuda:
    """Stands in for CudaOps: records each call, does the work on the CPU."""

    def __init__(self):
        self.calls = []
        self.current = None  # the stream entered with on_stream

    def stream(self, cuda_stream, device):
        self.calls.append(("stream", cuda_stream, device))
        return f"stream {cuda_stream}"

    @contextlib.contextmanager
    def on_stream(self, stream):
        previous, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = previous

    def pinned_empty(self, shape, dtype):
        self.calls.append(("pinned_empty", tuple(shape), dtype, self.current))
        return torch.empty(tuple(shape), dtype=dtype)

    def pinned_copy(self, source):
        self.calls.append(("pinned_copy", tuple(source.shape), source.dtype, self.current))
        return source.clone()

    def wait_for(self, stream):
        self.calls.append(("wait_for", stream))

    def to_device(self, host, device):
        self.calls.append(("to_device", device, self.current))
        return host.clone()

    def names(self):
        return [call[0] for call in self.calls]


class Forbidden:
    def __getattr__(self, name):
        raise AssertionError(f"torch.cuda used for CPU tensors ({name})")


@pytest.fixture
def fake_gpu(monkeypatch):
    """Returns `on_gpu(*tensors)`: those tensors count as CUDA tensors from then on."""
    recorder, on_gpu = RecordingCuda(), set()
    monkeypatch.setattr(device_transfer, "cuda", recorder)
    monkeypatch.setattr(device_transfer, "device_of", lambda t: GPU if id(t) in on_gpu else t.device)

    def mark(*tensors):
        on_gpu.update(id(t) for t in tensors)
        return tensors

    mark.recorder = recorder
    return mark


def test_cpu_batches_never_touch_cuda(monkeypatch):
    monkeypatch.setattr(device_transfer, "cuda", Forbidden())
    wrapper, layer = build(MAIN, top_k=6, seed=1)
    batch = layer.batch(5, 6, seed=1)
    for cuda_stream in (None, 0, 12345):  # ignored for CPU tensors
        assert_close(wrapper.forward(*batch, cuda_stream), layer.reference(*batch))


def test_cpu_inputs_are_read_in_place():
    x = torch.randn(3, 4).to(torch.bfloat16)
    transfer = device_transfer.plan(x, [], None)
    assert transfer == device_transfer.Transfer(torch.device("cpu"), None)
    assert device_transfer.to_host(x, torch.bfloat16, transfer).data_ptr() == x.data_ptr()  # no copy
    assert device_transfer.to_host(x.float(), torch.bfloat16, transfer).dtype == torch.bfloat16


def test_engine_ready_tensors_are_only_what_to_host_would_rewrap(fake_gpu):
    x = torch.randn(4, 8).to(torch.bfloat16)
    assert device_transfer.engine_ready(x, torch.bfloat16)
    assert not device_transfer.engine_ready(x, torch.float32)  # to_host would convert it
    assert not device_transfer.engine_ready(x.t(), torch.bfloat16)  # ... or copy it
    assert not device_transfer.engine_ready(x.clone().requires_grad_(), torch.bfloat16)
    assert not device_transfer.engine_ready(torch.nn.Parameter(x, requires_grad=False), torch.bfloat16)
    assert not device_transfer.engine_ready(x.to_sparse(), torch.bfloat16)
    assert not device_transfer.engine_ready(torch.empty(4, 8, dtype=torch.bfloat16, device="meta"), torch.bfloat16)
    (on_gpu,) = fake_gpu(x.clone())
    assert not device_transfer.engine_ready(on_gpu, torch.bfloat16)


def test_ready_cpu_batches_skip_the_conversions_with_the_same_results(monkeypatch):
    """A batch of bf16 / int64 / fp32 CPU tensors goes to the engine as it is (the short way of
    submit_forward); other batches of the same values give bit-identical outputs."""
    wrapper, layer = build(MAIN, top_k=6, seed=4)
    x, ids, weights = layer.batch(5, 6, seed=4)
    ready = wrapper.forward(x, ids, weights)
    monkeypatch.setattr(device_transfer, "to_host", lambda *args: pytest.fail("the checked path ran"))
    assert torch.equal(wrapper.forward(x, ids, weights), ready)
    monkeypatch.undo()
    assert torch.equal(wrapper.forward(x.float(), ids.to(torch.int32), weights), ready)  # converted first
    strided = torch.cat([x, x], dim=1)[:, :x.shape[1]]  # the same values, not contiguous: copied first
    assert torch.equal(wrapper.forward(strided, ids, weights), ready)
    with pytest.raises(ValueError, match="topk_ids shape mismatch"):
        wrapper.forward(x, ids[:, :5], weights)


@pytest.mark.parametrize("cpu_save", (False, True))
def test_cuda_batch_copies_on_the_callers_stream(fake_gpu, cpu_save):
    wrapper, layer = build(MAIN, top_k=6, seed=2, cpu_save=cpu_save)
    x, ids, weights = layer.batch(7, 6, seed=2)
    x = x.float()  # converted on the device, before the copy
    fake_gpu(x, ids, weights)
    rec = fake_gpu.recorder
    wrapper.submit_forward(x, ids, weights, 0xBEEF)
    stream = "stream 48879"
    assert rec.calls[0] == ("stream", 0xBEEF, GPU)
    assert rec.calls[1:4] == [("pinned_copy", (7, MAIN.hidden), torch.bfloat16, stream),
                              ("pinned_copy", (7, 6), torch.int64, stream),
                              ("pinned_copy", (7, 6), torch.float32, stream)]
    assert rec.calls[4] == ("wait_for", stream)  # before the engine reads the copies
    assert rec.calls[5] == ("pinned_empty", (7, MAIN.hidden), torch.bfloat16, None)
    out = wrapper.sync_forward(x)
    if cpu_save:
        assert "to_device" not in rec.names()  # the result stays in (pinned) CPU memory
    else:
        assert rec.calls[-1] == ("to_device", GPU, stream)  # back on the submit's stream
    assert out.dtype == torch.bfloat16
    assert_close(out, layer.reference(x.to(torch.bfloat16), ids, weights))


def test_sync_stream_argument_orders_the_copy_back(fake_gpu):
    wrapper, layer = build(MAIN, top_k=6, seed=3)
    batch = fake_gpu(*layer.batch(2, 6, seed=3))
    wrapper.submit_forward(*batch, 7)
    wrapper.sync_forward(batch[0], 9)
    rec = fake_gpu.recorder
    assert rec.calls[-2:] == [("stream", 9, GPU), ("to_device", GPU, "stream 9")]


def test_cpu_hidden_states_with_cuda_ids(fake_gpu):
    """Only the ids live on the GPU: they are copied on the stream, the result stays on the CPU."""
    wrapper, layer = build(MAIN, top_k=6, seed=4)
    x, ids, weights = layer.batch(3, 6, seed=4)
    fake_gpu(ids)
    out = wrapper.forward(x, ids, weights, None)
    rec = fake_gpu.recorder
    assert rec.names() == ["stream", "pinned_copy", "wait_for", "pinned_empty"]
    assert out.device.type == "cpu"
    assert_close(out, layer.reference(x, ids, weights))


def test_deferred_output_goes_back_like_the_immediate_one(fake_gpu):
    wrapper, layer = build(MAIN, top_k=6, seed=5, max_deferred=2)
    x, ids, weights = layer.batch(4, 6, seed=5)
    immediate, deferred = wrapper.select_deferred_experts(ids, weights, protected_k=3)
    fake_gpu(x, immediate, weights, deferred)
    now = wrapper.forward(x, immediate, weights, 5, deferred_ids=deferred)
    later = wrapper.sync_deferred_forward()
    rec = fake_gpu.recorder
    assert [c for c in rec.calls if c[0] == "to_device"] == [("to_device", GPU, "stream 5")] * 2
    assert_close(now.float() + later.float(), layer.reference(x, ids, weights))


def test_cuda_stream_argument_to_stream(monkeypatch):
    """None: the current stream; 0: the legacy default stream; an int: that cudaStream_t; a
    torch.cuda.Stream: itself."""
    calls = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: calls.append(("current", device)) or "cur")
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device: calls.append(("default", device)) or "def")
    monkeypatch.setattr(torch.cuda, "ExternalStream",
                        lambda handle, device: calls.append(("external", handle, device)) or "ext")
    assert CudaOps.stream(None, GPU) == "cur"
    assert CudaOps.stream(0, GPU) == "def"
    assert CudaOps.stream(140000, GPU) == "ext"
    assert calls == [("current", GPU), ("default", GPU), ("external", 140000, GPU)]
    monkeypatch.setattr(torch.cuda, "Stream", type("Stream", (), {}))
    stream = torch.cuda.Stream()
    assert CudaOps.stream(stream, GPU) is stream
