"""INT8 per output channel ("int8_channel", method AMXINT8): the canonical format the INT8 kernels
read.

For W [N, K] (N output channels, K inputs, the Hugging Face [out, in] layout):
    scale[n] = max_k |W[n, k]| / 127            fp32 [N]
    q[n, k]  = round(W[n, k] / scale[n])         int8 [N, K], in [-127, 127] (round half to even)
    W[n, k] ~= q[n, k] * scale[n]
Symmetric, so -128 is never used. An all-zero row (or one too small for a nonzero fp32 scale)
stores scale 1 and q 0, dequantizing to zeros. A leading expert dimension [E, N, K] is quantized
row by row the same way.
"""

from __future__ import annotations

from typing import Tuple

import torch

from kt_moe.quant.common import check_matrices, row_blocks
from kt_moe.tensor_checks import check_finite, check_tensor

QMAX = 127


def quantize_int8_channel(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """w bf16/fp16/fp32 [N, K] or [E, N, K] -> (q int8 [..., N, K], scale fp32 [..., N])."""
    check_matrices(w, "w")
    *lead, K = w.shape
    rows = w.reshape(-1, K)  # [R, K], R = E * N
    q = torch.empty(rows.shape, dtype=torch.int8)
    scale = torch.empty(rows.shape[0], dtype=torch.float32)
    for block in row_blocks(*rows.shape):
        x = rows[block].float()  # [r, K]
        absmax = x.abs().amax(dim=1)  # [r]
        check_finite(absmax, "w")
        s = absmax / QMAX
        s = torch.where(s > 0, s, 1.0)
        q[block] = torch.round(x / s[:, None]).clamp_(-QMAX, QMAX)
        scale[block] = s
    return q.reshape(*lead, K), scale.reshape(lead)


def dequantize_int8_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(q int8 [..., N, K], scale fp32 [..., N]) -> W fp32 [..., N, K] = q * scale[n]."""
    check_matrices(q, "q", (torch.int8,))
    check_tensor(scale, "scale", tuple(q.shape[:-1]), (torch.float32,))
    return q.float() * scale[..., None]
