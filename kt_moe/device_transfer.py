"""Moving an inference batch between the caller's device and the CPU engine: the only module of
kt-moe that touches CUDA, and only when a tensor it is given lives on a CUDA device, so the package
imports and runs with a CPU-only torch.

CPU tensors go to the engine as they are (converted to the engine's dtype and made contiguous only
when they are not already). When any input is on a CUDA device, every copy is ordered on the
caller's stream (`cuda_stream`: a raw cudaStream_t handle as an int, a torch.cuda.Stream, 0 for the
legacy default stream, or None for the current stream of the device): inputs are converted on the
GPU, copied into pinned host buffers, and the CPU waits for those copies only (an event recorded
after them) before the engine reads them; the result is copied back on the same stream without
blocking the CPU. The calls into torch.cuda are gathered in `CudaOps`, which tests replace.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch


class CudaOps:
    """Every torch.cuda call kt-moe makes."""

    @staticmethod
    def stream(cuda_stream, device: torch.device):
        if isinstance(cuda_stream, torch.cuda.Stream):
            return cuda_stream
        if cuda_stream is None:
            return torch.cuda.current_stream(device)
        if int(cuda_stream) == 0:
            return torch.cuda.default_stream(device)
        return torch.cuda.ExternalStream(int(cuda_stream), device=device)

    @staticmethod
    def on_stream(stream):
        return torch.cuda.stream(stream)

    @staticmethod
    def pinned_empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=dtype, pin_memory=True)

    @classmethod
    def pinned_copy(cls, source: torch.Tensor) -> torch.Tensor:
        """A pinned host copy of the CUDA tensor `source`, queued on the current stream."""
        host = cls.pinned_empty(source.shape, source.dtype)
        host.copy_(source, non_blocking=True)
        return host

    @staticmethod
    def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A copy of the pinned `host` on `device`, queued on the current stream."""
        return host.to(device, non_blocking=True)

    @staticmethod
    def wait_for(stream) -> None:
        """Block the CPU until the work queued on `stream` so far (our copies) has finished."""
        event = torch.cuda.Event()
        event.record(stream)
        event.synchronize()


cuda = CudaOps()  # replaced by tests


class Transfer(NamedTuple):
    """Where a batch came from and how its result goes back."""

    device: torch.device  # of hidden_states: where the result is returned unless cpu_save
    stream: Optional[object]  # the CUDA stream copies are ordered on; None when no tensor is on CUDA


def device_of(tensor: torch.Tensor) -> torch.device:
    """Where `tensor` lives (the one place that asks; tests make CPU tensors look like CUDA ones)."""
    return tensor.device


def on_cuda_device(device: torch.device) -> bool:
    return device.type == "cuda"


def on_cuda(tensor: torch.Tensor) -> bool:
    return on_cuda_device(device_of(tensor))


CPU = Transfer(torch.device("cpu"), None)  # the transfer of a batch whose tensors are all CPU tensors


def engine_ready(tensor: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether `tensor` goes to the engine as it is: a dense, contiguous CPU tensor of `dtype` without
    autograd, which to_host would only rewrap."""
    return (type(tensor) is torch.Tensor and tensor.dtype is dtype and tensor.layout is torch.strided
            and not tensor.is_nested and not tensor.requires_grad and device_of(tensor).type == "cpu"
            and tensor.is_contiguous())


def plan(hidden_states: torch.Tensor, others: Sequence[torch.Tensor], cuda_stream) -> Transfer:
    """The transfer of a batch: CUDA copies (on the caller's stream) only when a tensor is on CUDA;
    cuda_stream is ignored otherwise."""
    cuda_tensors = [t for t in (hidden_states, *others) if on_cuda(t)]
    if not cuda_tensors:
        return Transfer(device_of(hidden_states), None)
    return Transfer(device_of(hidden_states), cuda.stream(cuda_stream, device_of(cuda_tensors[0])))


def with_stream(transfer: Transfer, cuda_stream) -> Transfer:
    """`transfer` with the copy of the result ordered on cuda_stream instead, when the result goes to
    a CUDA device and a stream is given."""
    if not on_cuda_device(transfer.device) or cuda_stream is None:
        return transfer
    return transfer._replace(stream=cuda.stream(cuda_stream, transfer.device))


def to_host(tensor: torch.Tensor, dtype: torch.dtype, transfer: Transfer) -> torch.Tensor:
    """`tensor` as a contiguous CPU tensor of `dtype` (a view of its memory, without a copy, when it
    already is one). A CUDA tensor
    is converted on its device and copied into pinned memory on the transfer's stream, without
    waiting: call host_ready() before reading the result."""
    if not on_cuda(tensor):
        return tensor.detach().to(dtype).contiguous()
    with cuda.on_stream(transfer.stream):
        return cuda.pinned_copy(tensor.detach().to(dtype).contiguous())


def host_ready(transfer: Transfer) -> None:
    """Wait until the copies to_host() queued have landed in host memory (no-op without CUDA)."""
    if transfer.stream is not None:
        cuda.wait_for(transfer.stream)


def host_output(shape: Sequence[int], transfer: Transfer) -> torch.Tensor:
    """A bf16 CPU buffer for the engine's result: pinned when it may be copied to a CUDA device."""
    if transfer.stream is not None:
        return cuda.pinned_empty(shape, torch.bfloat16)
    return torch.empty(tuple(shape), dtype=torch.bfloat16)


def to_caller(result: torch.Tensor, transfer: Transfer, cpu_save: bool) -> torch.Tensor:
    """The engine's CPU result as the caller gets it: itself when the batch came from the CPU or
    with cpu_save; otherwise a copy on the device of hidden_states queued on the transfer's stream
    (the CPU does not wait for it)."""
    if cpu_save or not on_cuda_device(transfer.device):
        return result
    with cuda.on_stream(transfer.stream):
        return cuda.to_device(result, transfer.device)
