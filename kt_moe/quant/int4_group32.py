"""INT4 with a scale and a zero point per group of 32 inputs ("int4_group32", methods AMXINT4 and
AMXINT4_SFT): the canonical format the INT4 kernels read. It is kt_moe.quant.int4_groups with
G = 32 and zero points, whose docstring defines the format and the quantizer:

    codes uint8 [N, Kp / 2] (low nibble = even k), scale fp32 [N, Kp / 32], zero uint8 [N, Kp / 32]
    W[n, k] ~= (code[n, k] - zero[n, k // 32]) * scale[n, k // 32],   K padded to Kp (a multiple of 32)
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from kt_moe.quant import int4_groups

GROUP_SIZE = 32


def padded_k(k: int) -> int:
    """The number of columns K takes once padded to whole groups of 32."""
    return int4_groups.padded_k(k, GROUP_SIZE)


def quantize_int4_group32(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w bf16/fp16/fp32 [N, K] or [E, N, K] -> (codes uint8 [..., N, Kp / 2], scale fp32 [..., N, G],
    zero uint8 [..., N, G]), Kp = padded_k(K), G = Kp / 32."""
    return int4_groups.quantize_int4(w, GROUP_SIZE, zero_point=True)


def int4_group32_parts(n: int, k: int) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """What quantize_int4_group32 returns for W [n, k]: part name -> (shape, dtype)."""
    return int4_groups.int4_parts(n, k, GROUP_SIZE, zero_point=True)


def dequantize_int4_group32(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(codes uint8 [..., N, Kp / 2], scale fp32 [..., N, G], zero uint8 [..., N, G]) with Kp = 32 G
    -> W fp32 [..., N, Kp] = (code - zero) * scale."""
    return int4_groups.dequantize_int4(codes, scale, zero, group_size=GROUP_SIZE)
