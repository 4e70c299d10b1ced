"""INT4 with a float16 scale and a fractional zero point per group of 16 inputs ("int4_group16",
methods AMXINT4 and AMXINT4_SFT): the canonical format the INT4 kernels read. It is
kt_moe.quant.int4_groups with G = 16 and zero points, whose docstring defines the format and the
quantizer:

    codes uint8 [N, Kp / 2] (low nibble = even k), scale fp16 [N, Kp / 16], zero uint8 [N, Kp / 16]
    W[n, k] ~= (code[n, k] - zero[n, k // 16] / 16) * scale[n, k // 16],   K padded to Kp (a multiple of 16)

Why groups of 16: the methods' bar is a relative L2 error of 0.15 on the layer output for any batch,
a single token through a single expert included. Against N(0, 1) weights an expert MLP comes out at
about 0.10 (single tokens up to ~0.125) with these groups; groups of 32 give 0.126 (single tokens up
to ~0.16). The cost: 0.6875 bytes per weight (34% of bf16) against 0.625 for groups of 32.
"""

from __future__ import annotations

from typing import Tuple

import torch

from kt_moe.quant import int4_groups

GROUP_SIZE = 16


def padded_k(k: int) -> int:
    """The number of columns K takes once padded to whole groups of 16."""
    return int4_groups.padded_k(k, GROUP_SIZE)


def quantize_int4_group16(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w bf16/fp16/fp32 [N, K] or [E, N, K] -> (codes uint8 [..., N, Kp / 2], scale fp16 [..., N, G],
    zero uint8 [..., N, G]), Kp = padded_k(K), G = Kp / 16."""
    return int4_groups.quantize_int4(w, GROUP_SIZE, zero_point=True)


def dequantize_int4_group16(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(codes uint8 [..., N, Kp / 2], scale fp16 [..., N, G], zero uint8 [..., N, G]) with Kp = 16 G
    -> W fp32 [..., N, Kp] = (code - zero / 16) * scale, exact."""
    return int4_groups.dequantize_int4(codes, scale, zero, group_size=GROUP_SIZE)
