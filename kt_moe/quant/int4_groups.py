"""INT4 with a scale per group of G consecutive inputs of a row, asymmetric (a zero point per group)
or symmetric: the one INT4 quantizer. int4_group32 (AMXINT4, AMXINT4_SFT) is G = 32 asymmetric;
int4_kgroup (AMXINT4_KGroup_SFT) is G in {32, 64, 128} either way.

For W [N, K] (N output channels, K inputs, the Hugging Face [out, in] layout), with Kp = K rounded
up to a multiple of G and g = Kp / G groups per row:
    codes uint8 [N, Kp / 2]: two 4-bit codes per byte, low nibble = even k, high nibble = odd k
    scale fp32  [N, g]
    zero  uint8 [N, g], in 0..15 (asymmetric only; symmetric groups have the fixed zero point 8)
    W[n, k] ~= (code[n, k] - zero[n, k // G]) * scale[n, k // G]

Padding: when K is not a multiple of G, W is padded with zero columns up to Kp before it is
quantized, and every output (and the dequantized matrix) has Kp columns. Zero is always exactly
representable (see below), so the padded columns dequantize to exactly 0; callers that need the
original width take [..., :K].

Quantizing one group x (G values, fp32 arithmetic, rounding half to even):
    asymmetric: lo = min(min(x), 0), hi = max(max(x), 0)     the range always contains 0
    symmetric:  hi = max(|x|), lo = -hi
    u = (hi - lo) / 15                                          the unclipped step
    z = round(-lo / u) (asymmetric, 0..15) or 8 (symmetric)    the zero point
    for each clipping ratio r of CLIP_RATIOS (1.0, 0.98, ..., 0.70), with v = 1 / r:
        p = (x / u) * v + z,  c = clamp(round(p), 0, 15)
        error(r) = r^2 * sum((c - p)^2)   (the group's squared error is u^2 times this)
    scale = u * r for the r with the smallest error (the first on a tie), codes = that r's c.
Clipping keeps z and shrinks the step, trading error at the extremes for finer steps elsewhere.
An all-zero group (or one too small for a nonzero fp32 step) stores scale 1 and codes equal to its
zero point (0 asymmetric, 8 symmetric). A leading expert dimension [E, N, K] is quantized row by row
the same way, so a stack gives the same bytes as its matrices one by one.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from kt_moe.quant.common import check_finite, check_matrices, row_blocks, rows_per_block
from kt_moe.tensor_checks import check_tensor

CODE_MAX = 15
SYMMETRIC_ZERO = 8  # the zero point of every symmetric group
CLIP_RATIOS = torch.tensor([1.0 - 0.02 * i for i in range(16)], dtype=torch.float32)  # 1.0 down to 0.70
INVERSE_RATIOS = 1.0 / CLIP_RATIOS


def padded_k(k: int, group_size: int) -> int:
    """The number of columns K takes once padded to whole groups."""
    return -(-k // group_size) * group_size


class _GroupQuantizer:
    """Quantizes blocks of up to `rows` rows of `groups` groups in buffers allocated once: a fresh
    tensor per operation would cost more in page faults than the arithmetic does."""

    def __init__(self, rows: int, groups: int, group_size: int, zero_point: bool):
        self.zero_point = zero_point
        self.x = torch.zeros(rows, groups, group_size)  # [rows, g, G]: the weights, zero-padded
        self.y, self.p, self.c = (torch.empty_like(self.x) for _ in range(3))
        self.errors = torch.empty(len(CLIP_RATIOS), rows, groups)  # [ratios, rows, g]

    def quantize(self, rows: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first `rows` rows of self.x -> (codes fp32 [rows, g, G] holding 0..15, scale fp32
        [rows, g], zero fp32 [rows, g]) as the module docstring defines them; the codes are a view of
        a buffer. ||x - (c - z) * u * r||^2 = u^2 * r^2 * ||c - p||^2, so comparing r^2 * ||c - p||^2
        between ratios compares the groups' errors."""
        x, y, p, c, errors = self.x[:rows], self.y[:rows], self.p[:rows], self.c[:rows], self.errors[:, :rows]
        if self.zero_point:
            lo = x.amin(dim=2).clamp_(max=0)  # [rows, g]
            hi = x.amax(dim=2).clamp_(min=0)
        else:
            hi = x.abs().amax(dim=2)
            lo = -hi
        unit = (hi - lo) / CODE_MAX  # u, the step at ratio 1
        check_finite(unit, "w")
        unit = torch.where(unit > 0, unit, 1.0)
        zero = torch.round(-lo / unit) if self.zero_point else torch.full_like(unit, SYMMETRIC_ZERO)  # z
        torch.div(x, unit[..., None], out=y)

        def codes(inverse_ratio) -> None:
            """p and c for a ratio's fp32 inverse: a float, or a tensor [rows, g, 1] of them."""
            torch.mul(y, inverse_ratio, out=p).add_(zero[..., None])
            torch.round(p, out=c).clamp_(0, CODE_MAX)

        for i, inverse in enumerate(INVERSE_RATIOS.tolist()):
            codes(inverse)
            torch.sum(c.sub_(p).square_(), dim=2, out=errors[i])  # (torch's vector_norm is far slower here)
        best = errors.mul_(CLIP_RATIOS.square()[:, None, None]).min(dim=0).indices  # [rows, g]: the first smallest
        codes(INVERSE_RATIOS[best][..., None])
        return c, unit * CLIP_RATIOS[best], zero


def quantize_int4(w: torch.Tensor, group_size: int, zero_point: bool) -> Tuple[torch.Tensor, ...]:
    """w bf16/fp16/fp32 [N, K] or [E, N, K] -> (codes uint8 [..., N, Kp / 2], scale fp32 [..., N, g],
    zero uint8 [..., N, g]) with zero_point, (codes, scale) without; Kp = padded_k(K, group_size),
    g = Kp / group_size."""
    check_matrices(w, "w")
    *lead, K = w.shape
    G = group_size
    Kp = padded_k(K, G)
    groups = Kp // G
    rows = w.reshape(-1, K)  # [R, K], R = E * N
    R = rows.shape[0]
    codes = torch.empty(R, Kp // 2, dtype=torch.uint8)
    scale = torch.empty(R, groups, dtype=torch.float32)
    zero = torch.empty(R, groups, dtype=torch.uint8)
    quantizer = _GroupQuantizer(min(R, rows_per_block(Kp)), groups, G, zero_point)
    for block in row_blocks(R, Kp):
        r = block.stop - block.start
        quantizer.x[:r].view(r, Kp)[:, :K] = rows[block]
        c, s, z = quantizer.quantize(r)
        c = c.to(torch.uint8).view(r, Kp // 2, 2)  # [r, Kp / 2, (even k, odd k)]
        codes[block] = c[..., 0] | (c[..., 1] << 4)
        scale[block], zero[block] = s, z
    parts = (codes.reshape(*lead, Kp // 2), scale.reshape(*lead, groups), zero.reshape(*lead, groups))
    return parts if zero_point else parts[:2]


def int4_parts(n: int, k: int, group_size: int, zero_point: bool) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """What quantize_int4 returns for W [n, k]: part name -> (shape, dtype)."""
    groups = padded_k(k, group_size) // group_size
    parts = {"codes": ((n, groups * group_size // 2), torch.uint8), "scale": ((n, groups), torch.float32),
             "zero": ((n, groups), torch.uint8)}
    if not zero_point:
        del parts["zero"]
    return parts


def dequantize_int4(codes: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor] = None, *,
                    group_size: int) -> torch.Tensor:
    """(codes uint8 [..., N, Kp / 2], scale fp32 [..., N, g], zero uint8 [..., N, g] or None for
    symmetric groups) with Kp = group_size * g -> W fp32 [..., N, Kp] = (code - zero) * scale."""
    check_matrices(codes, "codes", (torch.uint8,))
    *lead, half = codes.shape
    if half % (group_size // 2):
        raise ValueError(f"codes must have a multiple of {group_size // 2} bytes per row "
                         f"(two codes a byte, groups of {group_size}), got shape {tuple(codes.shape)}")
    groups = (*lead, half * 2 // group_size)
    check_tensor(scale, "scale", groups, (torch.float32,))
    unpacked = torch.stack((codes & 0xF, codes >> 4), dim=-1)  # [..., N, Kp / 2, 2]: even k, odd k
    x = unpacked.view(*groups, group_size).float()  # [..., N, g, G]
    if zero is None:
        x -= SYMMETRIC_ZERO
    else:
        check_tensor(zero, "zero", groups, (torch.uint8,))
        x -= zero[..., None].float()
    return (x * scale[..., None]).view(*lead, half * 2)
