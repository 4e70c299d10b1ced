"""INT4 with a scale per group of G consecutive inputs of a row, asymmetric (a zero point per group)
or symmetric: the one INT4 quantizer. int4_group16 (AMXINT4, AMXINT4_SFT) is G = 16 asymmetric;
int4_kgroup (AMXINT4_KGroup_SFT) is G in {32, 64, 128} either way.

For W [N, K] (N output channels, K inputs, the Hugging Face [out, in] layout), with Kp = K rounded
up to a multiple of G and g = Kp / G groups per row:
    codes uint8   [N, Kp / 2]: two 4-bit codes per byte, low nibble = even k, high nibble = odd k
    scale float16 [N, g]
    zero  uint8   [N, g]: the zero point in sixteenths of a code, z = zero / 16 in [0, 15.9375]
                  (asymmetric only; symmetric groups have the fixed zero point z = 8)
    W[n, k] ~= (code[n, k] - z[n, k // G]) * scale[n, k // G]
The dequantized value is exact in fp32: code - z is a multiple of 1/16 in [-16, 15] and an fp16
scale has 11 significant bits, so every kernel and dequantize_int4 agree to the bit.

Padding: when K is not a multiple of G, W is padded with zero columns up to Kp before it is
quantized; every output (and the dequantized matrix) has Kp columns, and a padded column need not
dequantize to exactly 0 (a fractional zero point is not a code): callers multiply the padding by
zero inputs or take [..., :K].

Quantizing one group x (G values, fp32 arithmetic, rounding half to even), for each clipping ratio
r of CLIP_RATIOS (1.0, 0.92, 0.84):
    start   asymmetric: lo = min(min(x), 0), hi = max(max(x), 0), s = r * (hi - lo) / 15 and z the
            zero point that puts (lo + hi) / 2 at code 7.5; symmetric: s = r * 2 max|x| / 15, z = 8
    refine  FIT_ROUNDS times: c = clamp(round(x / s + z), 0, 15), then the least-squares fit of
            x ~ s (c - z) for these codes: asymmetric s = cov(c, x) / var(c) and z = mean(c) -
            mean(x) / s, clamped to [0, 255 / 16]; symmetric s = sum(x (c - 8)) / sum((c - 8)^2)
            (a fit that is not positive keeps the previous s, z)
    store   scale = fp16(s) (rounded to nearest), zero = round(16 z) (asymmetric), and the codes
            c = clamp(round(x / scale + zero / 16), 0, 15) of the STORED scale and zero point
    error   sum((scale (c - zero / 16) - x)^2)
The group keeps the ratio with the smallest error (the first on a tie). Clipping trades error at
the extremes for finer steps elsewhere; the fitted fractional zero point centres the grid on the
group's values. A group that is all zero, or whose stored scale would round to 0 in fp16, stores
scale 0, zero 0 and codes 0 (exactly 0 after dequantization); one whose scale would overflow fp16
is a ValueError. A leading expert dimension [E, N, K] is quantized row by row the same way, so a
stack gives the same bytes as its matrices one by one.

Every step is one fp32 operation rounded once (no fused multiply-add), and every sum over a group
(means, variances, covariances, errors) adds its G terms in k order, starting from zero.

quantize_int4 runs the native quantizer (the C++ of native/formats/int4_groups/integer_quantizer.cpp,
rows split across torch.get_num_threads() threads); quantize_int4_torch is its torch twin, the
reference the tests hold it to, byte for byte.

Relative L2 error against N(0, 1) weights (2048 inputs): G = 16 0.058, 32 0.072, 64 0.081, 128
0.093; an expert MLP (gate, up, down) roughly 1.7 times that.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from kt_moe import _native
from kt_moe.quant.common import check_matrices, row_blocks, rows_per_block
from kt_moe.tensor_checks import check_finite, check_tensor

CODE_MAX = 15
SYMMETRIC_ZERO = 8  # the zero point of every symmetric group
ZERO_STEPS = 16  # stored zero points count sixteenths of a code
ZERO_MAX = 255 / ZERO_STEPS
CLIP_RATIOS = (1.0, 0.92, 0.84)
FIT_ROUNDS = 2
FP16_MAX = float(torch.finfo(torch.float16).max)


def padded_k(k: int, group_size: int) -> int:
    """The number of columns K takes once padded to whole groups."""
    return -(-k // group_size) * group_size


def _group_sum(t: torch.Tensor) -> torch.Tensor:
    """t [G, ...] -> the sum over G in order, from zero (torch's own reductions may pair terms)."""
    total = torch.zeros_like(t[0])
    for term in t:
        total += term
    return total


class _GroupQuantizer:
    """Quantizes blocks of up to `rows` rows of `groups` groups. The work runs on the block
    transposed to [G, rows, g], so that a group's sums are G - 1 vector additions across whole rows
    of groups (reductions over a last dimension of 16 are many times slower), in buffers allocated
    once: a fresh tensor per operation would cost more in page faults than the arithmetic does."""

    def __init__(self, rows: int, groups: int, group_size: int, zero_point: bool):
        self.zero_point = zero_point
        self.x = torch.zeros(rows, groups, group_size)  # [rows, g, G]: the weights, zero-padded
        self.xt, self.c, self.d, self.best_codes = (torch.empty(group_size, rows, groups) for _ in range(4))

    def _codes(self, x: torch.Tensor, scale: torch.Tensor, zero) -> torch.Tensor:
        """c = clamp(round(x / scale + zero), 0, 15) into self.c; x [G, rows, g], scale and zero
        [rows, g] (zero may be a number)."""
        c = self.c[:, :x.shape[1]]
        torch.div(x, scale, out=c)
        c.add_(zero)
        return torch.round(c, out=c).clamp_(0, CODE_MAX)

    def _fit(self, x: torch.Tensor, mean_x: torch.Tensor, scale: torch.Tensor, zero) -> Tuple[torch.Tensor, torch.Tensor]:
        """One least-squares round (module docstring): the codes of (scale, zero), then the scale
        and zero point that fit x (whose group means are mean_x) best for them."""
        c = self._codes(x, scale, zero)
        d = self.d[:, :x.shape[1]]
        if self.zero_point:
            mean_c = _group_sum(c) / c.shape[0]
            torch.sub(c, mean_c, out=d)  # centred codes
            var = _group_sum(d.square())
            cov = _group_sum(d.mul_(x))  # sum (c - mean c) x = sum (c - mean c)(x - mean x)
            fitted = cov / var
            ok = (var > 0) & (fitted > 0)
            scale = torch.where(ok, fitted, scale)
            zero = torch.where(ok, mean_c - mean_x / scale, zero).clamp_(0, ZERO_MAX)
            return scale, zero
        torch.sub(c, SYMMETRIC_ZERO, out=d)
        dd = _group_sum(d.square())
        fitted = _group_sum(d.mul_(x)) / dd
        return torch.where((dd > 0) & (fitted > 0), fitted, scale), zero

    def quantize(self, rows: int) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The first `rows` rows of self.x -> (codes fp32 [rows, g, G] holding 0..15, scale fp16
        [rows, g], zero uint8 [rows, g] or None) as the module docstring defines them; the codes are
        a view of a buffer."""
        x = self.xt[:, :rows]
        x.copy_(self.x[:rows].permute(2, 0, 1))  # [G, rows, g]
        if self.zero_point:
            lo = x.amin(dim=0).clamp_(max=0)  # [rows, g]
            hi = x.amax(dim=0).clamp_(min=0)
            span = hi - lo
        else:
            span = 2 * x.abs().amax(dim=0)
        check_finite(span, "w")
        live = span > 0
        span = torch.where(live, span, 1.0)
        best_error = torch.full_like(span, float("inf"))
        best_scale = torch.zeros(span.shape, dtype=torch.float16)
        best_zero = torch.zeros_like(span)
        best_codes = self.best_codes[:, :rows]
        mean_x = _group_sum(x) / x.shape[0] if self.zero_point else None
        for ratio in CLIP_RATIOS:
            scale = span * (ratio / CODE_MAX)
            zero = 7.5 - (hi + lo) / (2 * scale) if self.zero_point else SYMMETRIC_ZERO
            for _ in range(FIT_ROUNDS):
                scale, zero = self._fit(x, mean_x, scale, zero)
            if bool((scale > FP16_MAX).any()):
                raise ValueError("w has a group of weights too wide for a float16 scale (values beyond about "
                                 f"{FP16_MAX * 7.5:.0e}); the INT4 schemes store float16 scales")
            stored_scale = scale.to(torch.float16)
            s = stored_scale.float()
            z = torch.round(zero * ZERO_STEPS) / ZERO_STEPS if self.zero_point else zero
            c = self._codes(x, torch.where(s > 0, s, 1.0), z)
            error = _group_sum(torch.sub(c, z, out=self.d[:, :rows]).mul_(s).sub_(x).square_())
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_scale = torch.where(better, stored_scale, best_scale)
            if self.zero_point:
                best_zero = torch.where(better, z, best_zero)
            best_codes.copy_(torch.where(better, c, best_codes))
        keep = live & (best_scale != 0)
        best_scale = torch.where(keep, best_scale, torch.zeros((), dtype=torch.float16))
        codes = best_codes.mul_(keep).permute(1, 2, 0)  # [rows, g, G]
        if not self.zero_point:
            return codes, best_scale, None
        return codes, best_scale, torch.where(keep, best_zero * ZERO_STEPS, 0.0).to(torch.uint8)


def quantize_int4(w: torch.Tensor, group_size: int, zero_point: bool) -> Tuple[torch.Tensor, ...]:
    """w bf16/fp16/fp32 [N, K] or [E, N, K] -> (codes uint8 [..., N, Kp / 2], scale fp16 [..., N, g],
    zero uint8 [..., N, g] in sixteenths) with zero_point, (codes, scale) without; Kp =
    padded_k(K, group_size), g = Kp / group_size. Native, on torch.get_num_threads() threads."""
    check_matrices(w, "w")
    *lead, K = w.shape
    Kp = padded_k(K, group_size)
    groups = Kp // group_size
    rows = w.reshape(-1, K)
    R = rows.shape[0]
    if rows.stride(-1) != 1 or (R > 1 and rows.stride(0) < K):  # the native code reads strided rows
        rows = rows.contiguous()
    codes = torch.empty(R, Kp // 2, dtype=torch.uint8)
    scale = torch.empty(R, groups, dtype=torch.float16)
    zero = torch.empty(R, groups, dtype=torch.uint8) if zero_point else None
    _native.quantize_int4_groups(rows, group_size, zero_point, codes, scale, zero, torch.get_num_threads(),
                                 _native.active_isa())
    parts = (codes.reshape(*lead, Kp // 2), scale.reshape(*lead, groups))
    return parts + (zero.reshape(*lead, groups),) if zero_point else parts


def quantize_int4_torch(w: torch.Tensor, group_size: int, zero_point: bool) -> Tuple[torch.Tensor, ...]:
    """quantize_int4 in torch operations: the reference twin of the native quantizer (the same
    bytes; many times slower)."""
    check_matrices(w, "w")
    *lead, K = w.shape
    G = group_size
    Kp = padded_k(K, G)
    groups = Kp // G
    rows = w.reshape(-1, K)  # [R, K], R = E * N
    R = rows.shape[0]
    codes = torch.empty(R, Kp // 2, dtype=torch.uint8)
    scale = torch.empty(R, groups, dtype=torch.float16)
    zero = torch.empty(R, groups, dtype=torch.uint8)
    quantizer = _GroupQuantizer(min(R, rows_per_block(Kp)), groups, G, zero_point)
    for block in row_blocks(R, Kp):
        r = block.stop - block.start
        quantizer.x[:r].view(r, Kp)[:, :K] = rows[block]
        c, s, z = quantizer.quantize(r)
        c = c.to(torch.uint8).reshape(r, Kp // 2, 2)  # [r, Kp / 2, (even k, odd k)]
        codes[block] = c[..., 0] | (c[..., 1] << 4)
        scale[block] = s
        if zero_point:
            zero[block] = z
    parts = (codes.reshape(*lead, Kp // 2), scale.reshape(*lead, groups), zero.reshape(*lead, groups))
    return parts if zero_point else parts[:2]


def dequantize_int4(codes: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor] = None, *,
                    group_size: int) -> torch.Tensor:
    """(codes uint8 [..., N, Kp / 2], scale fp16 [..., N, g], zero uint8 [..., N, g] in sixteenths or
    None for symmetric groups) with Kp = group_size * g -> W fp32 [..., N, Kp] = (code - zero / 16)
    * scale, exact."""
    check_matrices(codes, "codes", (torch.uint8,))
    *lead, half = codes.shape
    if half % (group_size // 2):
        raise ValueError(f"codes must have a multiple of {group_size // 2} bytes per row "
                         f"(two codes a byte, groups of {group_size}), got shape {tuple(codes.shape)}")
    groups = (*lead, half * 2 // group_size)
    check_tensor(scale, "scale", groups, (torch.float16,))
    unpacked = torch.stack((codes & 0xF, codes >> 4), dim=-1)  # [..., N, Kp / 2, 2]: even k, odd k
    x = unpacked.view(*groups, group_size).float()  # [..., N, g, G]
    if zero is None:
        x -= SYMMETRIC_ZERO
    else:
        check_tensor(zero, "zero", groups, (torch.uint8,))
        x -= zero[..., None].float() / ZERO_STEPS
    return (x * scale[..., None].float()).view(*lead, half * 2)
