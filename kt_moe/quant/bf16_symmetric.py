"""The arithmetic compressed-tensors (0.20, quantization/utils/helpers.py calculate_qparams and
quantization/lifecycle/forward.py quantize) applies to a bf16 weight with symmetric scales, shared
by the formats that reproduce it bit for bit (fp8_channel, int4_packed): every step is a bf16
operation, which torch evaluates in fp32 and rounds to bf16 once; here the scale is an fp32
division rounded explicitly and the quotient torch's own bf16 division.

    scale    = bf16(amax / half_range)   (half_range: 448 for FP8, 7.5 for INT4); a scale of 0
               becomes bf16's eps 2^-7, the library's guard against dividing by zero
    quotient = bf16(x / scale)           then clamped and rounded into the format's values
"""

from __future__ import annotations

import torch

ZERO_SCALE = torch.finfo(torch.bfloat16).eps  # 2^-7


def symmetric_scale(amax: torch.Tensor, half_range: float) -> torch.Tensor:
    """amax fp32 (maxima of |x| over bf16 values) -> the bf16 scales bf16(amax / half_range), 2^-7
    where that is 0."""
    scale = (amax / half_range).to(torch.bfloat16)
    return torch.where(scale == 0, ZERO_SCALE, scale)


def bf16_quotients(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x bf16, scale bf16 broadcastable to x -> bf16(x / scale), bf16 (the fp32 quotient rounded once,
    as torch divides bf16 tensors)."""
    return torch.div(x, scale)
