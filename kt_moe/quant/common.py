"""What the quantization schemes share: the checks of their tensor arguments and the row blocks
that keep the fp32 working copy small (one block is quantized at a time, so memory stays near the
input's size and the work stays in cache)."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from kt_moe.tensor_checks import FLOAT_DTYPES, check_tensor

BLOCK_ELEMENTS = 1 << 18  # fp32 values per block (1 MiB): large enough to split across threads, small enough for L2/L3


def check_matrices(value, name: str, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> torch.Tensor:
    """`value` when it is a non-empty CPU tensor [N, K] or [E, N, K] of one of `dtypes`."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() not in (2, 3) or value.numel() == 0:
        raise ValueError(f"{name} must be a non-empty [N, K] or [E, N, K] tensor, got shape {tuple(value.shape)}")
    return check_tensor(value, name, (-1,) * value.dim(), dtypes)


def check_positive_int(value, name: str, what: str = "") -> int:
    """`value` when it is a positive int (not a bool); otherwise a ValueError naming `name` (`what`
    says what the number is, in parentheses)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{f' ({what})' if what else ''}, got {value!r}")
    return value


def rows_per_block(cols: int) -> int:
    """How many rows of `cols` values make a block of about BLOCK_ELEMENTS values (at least one)."""
    return max(1, BLOCK_ELEMENTS // cols)


def row_blocks(rows: int, cols: int) -> Iterator[slice]:
    """Consecutive slices of `rows` rows, rows_per_block(cols) at a time. A row is always quantized
    whole and on its own, so the result never depends on the blocking."""
    step = rows_per_block(cols)
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))
