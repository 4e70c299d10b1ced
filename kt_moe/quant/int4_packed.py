"""INT4 in compressed-tensors' "pack-quantized" format, symmetric groups, as Kimi-K2-Thinking and
Kimi-K2.5 ship their routed experts (group size 32): the pure-torch definition the engines' RAWINT4
method is checked against. The facts below were read from compressed-tensors 0.20.1
(compressors/pack_quantized/helpers.py pack_to_int32 / unpack_from_int32,
compressors/pack_quantized/base.py PackedQuantizationCompressor, quantization/utils/helpers.py
calculate_qparams, quantization/lifecycle/forward.py quantize / dequantize) and checked against the
library in the tests.

For W [N, K] and group size g (K must be a multiple of g: the library's group quantizer refuses
anything else), G = K / g groups per row:
    weight_packed int32    [N, ceil(K / 8)]
    weight_scale  bfloat16 [N, G] (the library keeps the scale in the weight's dtype; a model in
                                   fp16 or fp32 would store those, which dequantize also takes)
    weight_shape  int64    [2] = (N, K) (the library stores it; only needed to recover K when it is
                                   not a multiple of 8, which the scale's G * g gives here anyway)
    W[n, k] = q[n, k] * weight_scale[n, k // g],   q in [-8, 7]

Packing: q[n, k] is stored as the unsigned nibble q + 8 (offset binary, not two's complement) in
bits 4 (k % 8) .. 4 (k % 8) + 3 of word k // 8 of row n: the lowest nibble is the first of eight
consecutive inputs. The word is that 32-bit pattern read as a signed int32 (nibble 7 >= 8 makes it
negative). When 8 does not divide K, the last word's unused nibbles are 0. Unpacking reads each
nibble back and subtracts 8.

Quantizing (what the library does to a bf16 weight, with the min-max statistics llm-compressor's
observer feeds it; kt_moe.quant.bf16_symmetric), per group x of g values of W rounded to bf16:
    scale = bf16(max |x| / 7.5)   (7.5 = (7 - (-8)) / 2); a scale of 0 becomes bf16's eps 2^-7,
            so an all-zero group stores 2^-7 and q = 0 (nibble 8)
    q     = round_half_even(clamp(bf16(x / scale), -8, 7)): the quotient is rounded to bf16 first,
            as the library's bf16 arithmetic does
The negative extreme of a group lands on -8 when it is the group's largest magnitude (-7.5 rounds
to -8) and the positive one is clamped to 7.

dequantize_int4_packed returns the fp32 product, exact for bf16 and fp16 scales (4 x 8 or 11
significant bits); the library returns it rounded to the scale's dtype. A leading expert dimension
[E, N, K] gets a leading E on every part (weight_shape [E, 2]), each matrix quantized on its own.
"""

from __future__ import annotations

import sys
from typing import Optional, Tuple

import torch

from kt_moe.quant.bf16_symmetric import bf16_quotients, symmetric_scale
from kt_moe.quant.common import check_matrices, check_positive_int, row_blocks
from kt_moe.tensor_checks import WEIGHT_DTYPES, check_finite, check_tensor

QMIN, QMAX = -8, 7
OFFSET = 8  # stored nibble = q + OFFSET
PER_WORD = 8  # 4-bit values per int32 word
HALF_RANGE = (QMAX - QMIN) / 2  # 7.5: scale = max |x| / HALF_RANGE
SCALE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SHAPE_DTYPES = (torch.int64, torch.int32)
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)  # bit offset of the nibble of k % 8 = 0 .. 7


def packed_words(k: int) -> int:
    """int32 words per row of K values: ceil(K / 8)."""
    return -(-k // PER_WORD)


def _groups(k: int, group_size: int) -> int:
    check_positive_int(group_size, "group_size")
    if k % group_size:
        raise ValueError(f"K = {k} inputs is not a multiple of group_size {group_size}: compressed-tensors' "
                         "pack-quantized groups are whole (its quantizer refuses a partial last group)")
    return k // group_size


def _check_rows(value, name: str, dtype: torch.dtype) -> torch.Tensor:
    """`value` when it is a CPU tensor of `dtype` with at least one value along its last dimension."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[-1] == 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a tensor [..., n] with n >= 1, got {shape}")
    return check_tensor(value, name, (-1,) * value.dim(), (dtype,))


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q int8 [..., K] of values in [-8, 7] -> int32 [..., ceil(K / 8)] (module docstring: nibble q + 8,
    lowest nibble first, unused nibbles 0)."""
    _check_rows(q, "q", torch.int8)
    low, high = torch.aminmax(q)
    if int(low) < QMIN or int(high) > QMAX:
        raise ValueError(f"q must hold 4-bit values in [{QMIN}, {QMAX}], got values in [{int(low)}, {int(high)}]")
    return _pack_nibbles(q)


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """pack_int4 of q int8 [..., K] that holds values in [-8, 7] only (not checked)."""
    *lead, K = q.shape
    words = packed_words(K)
    nibbles = q.view(torch.uint8) + OFFSET  # q + 8 in [0, 15] (int8 bits read unsigned, plus 8, mod 256)
    if K % PER_WORD:  # the last word's unused nibbles are 0
        nibbles = torch.cat([nibbles, nibbles.new_zeros(*lead, words * PER_WORD - K)], dim=-1)
    octets = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)  # [..., 4 words]: byte j of a word holds k = 2j, 2j + 1
    if sys.byteorder == "big":  # a word's bytes in memory run from its most significant one there
        octets = octets.view(*lead, words, 4).flip(-1).reshape(*lead, words * 4)
    return octets.view(torch.int32)


def unpack_int4(weight_packed: torch.Tensor, k: int) -> torch.Tensor:
    """weight_packed int32 [..., ceil(k / 8)] -> the k values int8 [..., k] in [-8, 7] (nibble - 8)."""
    _check_rows(weight_packed, "weight_packed", torch.int32)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or weight_packed.shape[-1] != packed_words(k):
        raise ValueError(f"weight_packed must have ceil(k / 8) words per row for k = {k!r}, "
                         f"got shape {tuple(weight_packed.shape)}")
    *lead, words = weight_packed.shape
    nibbles = (weight_packed[..., None] >> _SHIFTS) & 0xF  # [..., words, 8]: arithmetic shift, then mask
    return (nibbles.view(*lead, words * PER_WORD)[..., :k] - OFFSET).to(torch.int8)


def quantize_int4_packed(w: torch.Tensor, group_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w bf16/fp16/fp32/fp64 [N, K] or [E, N, K], K a multiple of group_size -> (weight_packed int32
    [..., N, ceil(K / 8)], weight_scale bf16 [..., N, K / group_size], weight_shape int64 [..., 2]) as
    compressed-tensors quantizes the bf16 weight (module docstring)."""
    check_matrices(w, "w", WEIGHT_DTYPES)
    *lead, N, K = w.shape
    G = _groups(K, group_size)
    rows = w.reshape(-1, K)  # [R, K], R = E * N
    packed = torch.empty(rows.shape[0], packed_words(K), dtype=torch.int32)
    scale = torch.empty(rows.shape[0], G, dtype=torch.bfloat16)
    for rs in row_blocks(*rows.shape):
        x = rows[rs].to(torch.bfloat16).view(-1, G, group_size)  # [r, G, g]: the bf16 weight
        amax = x.float().abs_().amax(dim=2)  # [r, G]
        check_finite(amax, "w")
        s = symmetric_scale(amax, HALF_RANGE)
        q = bf16_quotients(x, s[..., None]).clamp_(QMIN, QMAX).round_()  # bf16 integers in [-8, 7], exact
        packed[rs] = _pack_nibbles(q.to(torch.int8).view(-1, K))
        scale[rs] = s
    shape = torch.tensor([N, K]).repeat(*lead, 1)  # [..., 2]
    return packed.reshape(*lead, N, -1), scale.reshape(*lead, N, G), shape


def dequantize_int4_packed(weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                           weight_shape: Optional[torch.Tensor] = None, *, group_size: int) -> torch.Tensor:
    """(weight_packed int32 [..., N, ceil(K / 8)], weight_scale bf16/fp16/fp32 [..., N, G], weight_shape
    int64/int32 [..., 2] = (N, K) or None) with K = G * group_size -> W fp32 [..., N, K] = q * scale of
    its group (exact unless the scales are fp32)."""
    check_matrices(weight_packed, "weight_packed", (torch.int32,))
    check_positive_int(group_size, "group_size")
    *lead, N, words = weight_packed.shape
    check_tensor(weight_scale, "weight_scale", (*lead, N, -1), SCALE_DTYPES)
    G = weight_scale.shape[-1]
    K = G * group_size
    if G == 0 or words != packed_words(K):
        raise ValueError(f"weight_packed must have ceil(K / 8) = {packed_words(K)} words per row for K = "
                         f"{G} groups x {group_size} (weight_scale shape {tuple(weight_scale.shape)}), "
                         f"got shape {tuple(weight_packed.shape)}")
    if weight_shape is not None:
        check_tensor(weight_shape, "weight_shape", (*lead, 2), SHAPE_DTYPES)
        if bool((weight_shape[..., 0] != N).any() | (weight_shape[..., 1] != K).any()):
            raise ValueError(f"weight_shape must hold (N, K) = ({N}, {K}) for every matrix, "
                             f"got {weight_shape.tolist()}")
    rows = weight_packed.reshape(-1, words)  # [R, words]
    scale = weight_scale.reshape(-1, G, 1).float()  # [R, G, 1]
    out = torch.empty(rows.shape[0], K)
    for rs in row_blocks(rows.shape[0], K):
        q = unpack_int4(rows[rs], K).float().view(-1, G, group_size)  # [r, G, g]
        torch.mul(q, scale[rs], out=out[rs].view(-1, G, group_size))
    return out.reshape(*lead, N, K)
