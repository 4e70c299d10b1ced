"""FP8 (float8_e4m3fn, largest finite value 448) expert weights in the two layouts big MoE
checkpoints ship: the pure-torch definitions the engines' FP8 methods are checked against.

fp8_block: DeepSeek-V3/R1, Qwen3-*-FP8, MiniMax-M2 (config.json quantization_config
{"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [b, b]}, b = 128). For W [N, K]:
    weight           float8_e4m3fn [N, K]
    weight_scale_inv float32       [ceil(N / b), ceil(K / b)]: one value per b x b block, the last
                                   block row and column partial when b does not divide N or K
    W[n, k] = float(weight[n, k]) * weight_scale_inv[n // b, k // b]
weight_scale_inv is the dequantization MULTIPLIER despite its name (the reciprocal of the factor
the weights were multiplied by when quantized): DeepSeek-V3's inference/kernel.py weight_dequant
computes x * s per 128 x 128 tile (masking partial tiles) and transformers'
integrations/finegrained_fp8.py (Fp8Dequantize, _dequantize_fp8_weight) multiplies likewise.
quantize_fp8_block follows the quantizer transformers applies when it loads a bf16 model with
FineGrainedFP8Config (Fp8Quantize; checked bit for bit in the tests), extended to partial blocks,
all in fp32:
    amax       = max |W| over the block (W rounded to fp32 first)
    multiplier = 448 * (1 / amax), each step rounded to fp32: what torch computes for
                 transformers' `448 / amax` (Tensor.__rtruediv__ multiplies by the reciprocal),
                 which is not always the correctly rounded quotient; 1 when amax is 0
                 (transformers' rule for an all-zero block) or the result overflows (amax below
                 ~1.3e-36, where transformers would store NaN; such a block dequantizes to zeros)
    weight_scale_inv = 1 / multiplier (one fp32 rounding)
    weight     = fp8(clamp(W * multiplier, -448, 448)), rounding to nearest even
(DeepSeek's own act_quant divides by amax / 448 instead, which differs from 1 / (448 / amax) in
the last bit of about a third of the scales.) dequantize_fp8_block also takes bf16 scales: the
compressed-tensors block strategy ("float-quantized", strategy "block") stores the same grid of
multipliers as `weight_scale` in the model's dtype.

fp8_channel: GLM-4.x-FP8 (compressed-tensors "float-quantized", weights strategy "channel"). For W
[N, K]:
    weight       float8_e4m3fn [N, K]
    weight_scale bfloat16      [N, 1] (compressed-tensors keeps the scale in the weight's dtype;
                               dequantize_fp8_channel also takes fp16 or fp32, [N, 1] or [N])
    W[n, k] = float(weight[n, k]) * weight_scale[n]
quantize_fp8_channel reproduces what compressed-tensors 0.20 (quantization/utils/helpers.py
calculate_qparams with the min-max statistics llm-compressor's observer feeds it, then
quantization/lifecycle/forward.py quantize) does to a bf16 weight, step for step
(kt_moe.quant.bf16_symmetric):
    x      = W rounded to bf16
    scale  = bf16(max_k |x[n, k]| / 448); a scale of 0 becomes bf16's eps 2^-7 (the library's guard
             against dividing by zero), so an all-zero row stores 2^-7 and zeros
    weight = fp8(clamp(bf16(x / scale), -448, 448)): the quotient is rounded to bf16 before the
             round to nearest even into fp8, as the library's bf16 arithmetic does

Both dequantizers return fp32 products, exact for bf16 and fp16 scales (4 x 8 or 11 significant
bits) and rounded once for fp32 ones (the libraries return the same products rounded to the model's
dtype). A leading expert dimension [E, N, K] gets a leading E on every part, each matrix quantized
on its own. The input is read in row blocks, so the fp32 working copy stays small.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from kt_moe.quant.bf16_symmetric import bf16_quotients, symmetric_scale
from kt_moe.quant.common import check_matrices, check_positive_int, row_blocks
from kt_moe.tensor_checks import WEIGHT_DTYPES, check_finite, check_tensor

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
BLOCK_SCALE_DTYPES = (torch.float32, torch.bfloat16)
CHANNEL_SCALE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _check_block(block) -> int:
    return check_positive_int(block, "block", "the side of the square scale blocks")


def fp8_block_grid(n: int, k: int, block: int) -> Tuple[int, int]:
    """The shape of the scale grid of W [n, k] in blocks of block x block: (ceil(n / b), ceil(k / b))."""
    _check_block(block)
    return -(-n // block), -(-k // block)


def _grid_rows(matrices: int, n: int, block: int) -> torch.Tensor:
    """For each row r of a stack flattened to [matrices * n, K], the row of the flattened scale grid
    [matrices * ceil(n / b), ...] that holds its scales."""
    r = torch.arange(matrices * n)
    return (r // n) * -(-n // block) + (r % n) // block


def quantize_fp8_block(w: torch.Tensor, block: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """w bf16/fp16/fp32/fp64 [N, K] or [E, N, K] -> (weight float8_e4m3fn [..., N, K],
    weight_scale_inv fp32 [..., ceil(N / b), ceil(K / b)]), b = block (module docstring)."""
    check_matrices(w, "w", WEIGHT_DTYPES)
    _check_block(block)
    *lead, N, K = w.shape
    nb, kb = fp8_block_grid(N, K, block)
    rows = w.reshape(-1, K)  # [R, K], R = E * N
    R = rows.shape[0]
    grid_row = _grid_rows(R // N, N, block)  # [R]
    amax = torch.zeros(R // N * nb, kb)  # [E * nb, kb]
    for rs in row_blocks(R, K):
        x = F.pad(rows[rs].float().abs(), (0, kb * block - K))  # [r, kb * b], zero columns do not raise a max
        row_max = x.view(-1, kb, block).amax(dim=2)  # [r, kb]
        check_finite(row_max, "w")
        amax.scatter_reduce_(0, grid_row[rs, None].expand(-1, kb), row_max, "amax")
    multiplier = amax.reciprocal().mul_(FP8_MAX)  # what torch makes of transformers' 448 / amax
    multiplier = torch.where((amax > 0) & torch.isfinite(multiplier), multiplier, 1.0)
    weight = torch.empty(R, K, dtype=FP8)
    for rs in row_blocks(R, K):
        x = F.pad(rows[rs].float(), (0, kb * block - K)).view(-1, kb, block)  # [r, kb, b]
        scaled = (x * multiplier[grid_row[rs]].unsqueeze(2)).view(-1, kb * block)[:, :K]  # [r, K]
        weight[rs] = scaled.clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return weight.reshape(*lead, N, K), multiplier.reciprocal().reshape(*lead, nb, kb)


def dequantize_fp8_block(weight: torch.Tensor, weight_scale_inv: torch.Tensor, block: int) -> torch.Tensor:
    """(weight float8_e4m3fn [..., N, K], weight_scale_inv fp32 or bf16 [..., ceil(N / b), ceil(K / b)])
    -> W fp32 [..., N, K] = weight * weight_scale_inv of its block."""
    check_matrices(weight, "weight", (FP8,))
    *lead, N, K = weight.shape
    nb, kb = fp8_block_grid(N, K, block)
    check_tensor(weight_scale_inv, "weight_scale_inv", (*lead, nb, kb), BLOCK_SCALE_DTYPES)
    rows = weight.reshape(-1, K)  # [R, K]
    scale = weight_scale_inv.float().reshape(-1, kb)  # [E * nb, kb]
    grid_row = _grid_rows(rows.shape[0] // N, N, block)
    col = torch.arange(K) // block
    out = torch.empty(rows.shape)
    for rs in row_blocks(*rows.shape):
        torch.mul(rows[rs].float(), scale[grid_row[rs]][:, col], out=out[rs])
    return out.reshape(*lead, N, K)


def quantize_fp8_channel(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """w bf16/fp16/fp32/fp64 [N, K] or [E, N, K] -> (weight float8_e4m3fn [..., N, K], weight_scale
    bf16 [..., N, 1]) as compressed-tensors quantizes the bf16 weight (module docstring)."""
    check_matrices(w, "w", WEIGHT_DTYPES)
    *lead, K = w.shape
    rows = w.reshape(-1, K)  # [R, K]
    weight = torch.empty(rows.shape, dtype=FP8)
    scale = torch.empty(rows.shape[0], 1, dtype=torch.bfloat16)
    for rs in row_blocks(*rows.shape):
        x = rows[rs].to(torch.bfloat16)  # [r, K]: the bf16 weight
        amax = x.float().abs_().amax(dim=1, keepdim=True)  # [r, 1]
        check_finite(amax, "w")
        s = symmetric_scale(amax, FP8_MAX)
        weight[rs] = bf16_quotients(x, s).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
        scale[rs] = s
    return weight.reshape(*lead, K), scale.reshape(*lead, 1)


def dequantize_fp8_channel(weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """(weight float8_e4m3fn [..., N, K], weight_scale bf16/fp16/fp32 [..., N, 1] or [..., N]) -> W
    fp32 [..., N, K] = weight * weight_scale[n] (exact unless the scales are fp32)."""
    check_matrices(weight, "weight", (FP8,))
    rows = tuple(weight.shape[:-1])
    if isinstance(weight_scale, torch.Tensor) and weight_scale.dim() == len(rows):
        weight_scale = check_tensor(weight_scale, "weight_scale", rows, CHANNEL_SCALE_DTYPES)[..., None]
    else:
        check_tensor(weight_scale, "weight_scale", (*rows, 1), CHANNEL_SCALE_DTYPES)
    return weight.float().mul_(weight_scale.float())
