"""Checks of the tensors callers hand to the wrappers: shape, dtype, device and layout, each
failure a ValueError naming the argument and what was expected."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
WEIGHT_DTYPES = FLOAT_DTYPES + (torch.float64,)  # expert weights handed to load_weights_from_tensors
INDEX_DTYPES = (torch.int64, torch.int32)


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def _check_dense(value, name: str) -> None:
    """`value` is a dense torch.Tensor: strided layout, not nested (sparse, mkldnn and nested
    tensors are refused before any of their data is touched)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.layout != torch.strided or value.is_nested:
        layout = "nested" if value.is_nested else str(value.layout).replace("torch.", "").lstrip("_")
        hint = "" if value.is_nested else " (.to_dense() converts it)"
        raise ValueError(f"{name} must be a dense (strided) tensor, got a {layout} tensor{hint}")


def check_tensor(value, name: str, shape: Tuple[int, ...], dtypes: Sequence[torch.dtype],
                 devices: Sequence[str] = ("cpu",)) -> torch.Tensor:
    """`value` itself when it is a dense tensor of one of `dtypes` with exactly `shape` (-1: any size)
    on a device of one of the types `devices` (default: the CPU only)."""
    _check_dense(value, name)
    if value.device.type not in devices:
        where = "on the CPU" if tuple(devices) == ("cpu",) else f"on a {' or '.join(devices)} device"
        raise ValueError(f"{name} must be {where}, got device {value.device}")
    if value.dtype not in dtypes:
        raise ValueError(f"{name} must be {_dtype_names(dtypes)}, got {str(value.dtype).replace('torch.', '')}")
    if value.dim() != len(shape) or any(want not in (-1, got) for want, got in zip(shape, value.shape)):
        raise ValueError(f"{name} shape mismatch: expected {tuple(shape)}, got {tuple(value.shape)}")
    return value


def non_finite_message(name: str) -> str:
    """The error of check_finite (and of the native INT4 quantizer, for name "w")."""
    return f"{name} contains NaN or infinite values; only finite values can be loaded or quantized"


def check_finite(values: torch.Tensor, name: str) -> None:
    """ValueError naming `name` unless every value is finite: the one check of weights and scales for
    NaN and infinity. Reduced values (per-row or per-group maxima or minima) stand for the values they
    were reduced from, since NaN and infinity propagate into them. One pass of torch.aminmax (which
    propagates NaN too), about 60 ms per GB of bf16; torch.isfinite would take about 40 times that."""
    if values.numel() == 0:
        return
    low, high = torch.aminmax(values)
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise ValueError(non_finite_message(name))


def as_contiguous(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`value` in `dtype`, C-contiguous: the tensor itself when it already is (no copy)."""
    return value.to(dtype).contiguous()


def check_expert_map(value, num_experts: int, num_logical: int) -> torch.Tensor:
    """physical_to_logical_map: dense int64 [num_experts] with entries in [0, num_logical)."""
    _check_dense(value, "physical_to_logical_map")
    if value.dtype != torch.int64:
        raise ValueError(f"physical_to_logical_map must be int64, got {str(value.dtype).replace('torch.', '')}")
    if value.dim() != 1 or value.shape[0] != num_experts:
        raise ValueError(f"physical_to_logical_map must have shape ({num_experts},), got {tuple(value.shape)}")
    value = value.cpu().contiguous()
    bad = ((value < 0) | (value >= num_logical)).nonzero()
    if bad.numel():
        p = int(bad[0, 0])
        raise ValueError(f"physical_to_logical_map[{p}] = {int(value[p])} is out of range [0, {num_logical})")
    return value
