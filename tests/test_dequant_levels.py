"""The bf16 dequantizers of fp8 (scale blocks and a scale per row) and of the int4 groups with bf16
scales (int4_packed), through the test hook kt_moe._native.dequant_bf16_test(format=...), at every
level the host runs plus amx_emulated: the same bits as the generic level, for every e4m3 code (the
NaN codes included), scales whose products overflow, are denormal, zero, negative, infinite or NaN,
and column ranges that start and end inside vector steps and blocks (test_sft_dequant_kernels.py
covers int8_channel and the int4 groups with fp16 scales the same way)."""

import pytest
import torch

import kt_moe
from kt_moe import _native

LEVELS = kt_moe.cpu_info()["selectable"]
RANGES = [  # col0, cols, r0, r1, c0, c1
    (0, 256, 0, 6, 0, 256),     # whole steps
    (0, 200, 1, 5, 0, 200),     # the last step partial
    (5, 300, 0, 6, 3, 291),     # partial steps at both ends, a slice starting inside a block
    (0, 40, 2, 3, 17, 18),      # one column
    (0, 64, 0, 6, 10, 10),      # nothing
]
SPECIAL_SCALES = [1.0, -0.5, 3e36, 1e-38, 1e-44, 0.0, -0.0, float("inf"), float("nan"), 2.0 ** -120]


def run(level, values, scale, group, col0, cols, r0, r1, c0, c1, fmt, zero=None):
    out = torch.full((r1 - r0, c1 - c0), 7.0, dtype=torch.bfloat16)
    _native.dequant_bf16_test(level, values, scale, zero, group, col0, cols, r0, r1, c0, c1, out, format=fmt)
    return out.view(torch.int16)


def fp8_matrix(rows, cols, block, seed):
    """Every byte value in the rows, random fp32 scales with the special ones mixed in."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 256, (rows, cols), dtype=torch.uint8, generator=gen)
    values[0, :256 if cols >= 256 else cols] = torch.arange(256, dtype=torch.uint8)[:min(cols, 256)]
    shape = (rows,) if block == 0 else (-(-rows // block), -(-(cols + block) // block))
    scale = torch.rand(shape, generator=gen) * 0.01
    flat = scale.view(-1)
    flat[:len(SPECIAL_SCALES)] = torch.tensor(SPECIAL_SCALES)[:flat.numel()]
    return values, scale


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("block", [0, 16, 24, 128])
@pytest.mark.parametrize("col0,cols,r0,r1,c0,c1", RANGES)
def test_fp8_matches_the_generic_level(level, block, col0, cols, r0, r1, c0, c1):
    col0 = col0 % block if block else 0
    rows = 40 if block == 0 else 6
    values, scale = fp8_matrix(rows, cols, block, seed=block + cols)
    r1 = min(r1, rows)
    args = (values, scale, block, col0, cols, r0, r1, c0, c1, "fp8")
    assert torch.equal(run(level, *args), run("generic", *args))


@pytest.mark.parametrize("level", LEVELS)
def test_fp8_block_scales_of_every_size(level):
    """Blocks of 8: a scale per 8 columns and rows, the specials among them."""
    values, scale = fp8_matrix(64, 300, 8, seed=1)
    scale.view(-1)[:len(SPECIAL_SCALES) * 4] = torch.tensor(SPECIAL_SCALES).repeat(4)
    args = (values, scale, 8, 3, 300, 0, 64, 0, 300, "fp8")
    assert torch.equal(run(level, *args), run("generic", *args))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("group", [16, 32, 128])
@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("col0,cols,r0,r1,c0,c1", RANGES)
def test_int4_bf16_scales_match_the_generic_level(level, group, zero_point, col0, cols, r0, r1, c0, c1):
    """Random bf16 scale bits (denormal, huge, Inf and NaN included) and every zero point."""
    col0 %= group
    groups = -(-(col0 + cols) // group)
    gen = torch.Generator().manual_seed(group + cols)
    codes = torch.randint(0, 256, (6, groups * group // 2), dtype=torch.uint8, generator=gen)
    scale = torch.randint(-(1 << 15), 1 << 15, (6, groups), dtype=torch.int32, generator=gen)
    scale = scale.to(torch.int16).view(torch.bfloat16)
    zero = torch.randint(0, 256, (6, groups), dtype=torch.uint8, generator=gen) if zero_point else None
    args = (codes, scale, group, col0, cols, r0, r1, c0, c1, "int4_packed")
    assert torch.equal(run(level, *args, zero=zero), run("generic", *args, zero=zero))


def test_bad_format_is_a_value_error():
    with pytest.raises(ValueError, match="format"):
        run("generic", torch.zeros(2, 4, dtype=torch.uint8), torch.ones(2), 0, 0, 4, 0, 2, 0, 4, "int3")
