"""The one fp32 -> bf16 rounding (native/kernels/bf16.hpp and its AVX-512 form bf16_avx512.hpp:
round to nearest even, overflow to +-Inf as that rounding gives, Inf kept, NaN kept NaN) at every
level the host runs plus amx_emulated, through the kernels that round:
  - the SwiGLU kernels (generic: the scalar function; the AVX-512 levels: the vector one), with a
    gate of 2^24 (sigmoid exactly 1, so z = 2^24 u exactly) rounding chosen fp32 values;
  - the int4 dequantizers (generic: scalar; avx512: the vector one; avx512_bf16: vcvtne2ps2bf16)
    with fp16 scales of +-Inf, NaN and the largest finite value.
Ties, the largest finite bf16 and the values just above it that round to Inf, and NaNs whose
payload sits only in the low half or sets every bit (which an unguarded "add 0x7fff" turns into Inf
or 0) are all included."""

import pytest
import torch

import kt_moe
from kt_moe import _native
from kt_moe.quant.int4_groups import dequantize_int4

LEVELS = kt_moe.cpu_info()["selectable"]

# fp32 bit patterns -> expected bf16 bit pattern (None: any NaN).
CASES = {
    0x3F808000: 0x3F80,  # tie, even below: stays
    0x3F818000: 0x3F82,  # tie, odd below: up
    0xBF808000: 0xBF80,  # negative tie
    0xBF818000: 0xBF82,
    0x3F808001: 0x3F81,  # just above a tie
    0x3F807FFF: 0x3F80,  # just below a tie
    0x00000000: 0x0000,
    0x80000000: 0x8000,
    0x7F7F0000: 0x7F7F,  # the largest finite bf16
    0x7F7F7FFF: 0x7F7F,  # just below half a step above it: stays finite
    0x7F7F8000: 0x7F80,  # half a step above it (a tie, odd below): Inf
    0x7F7FFFFF: 0x7F80,  # the largest finite fp32: Inf
    0xFF7F8000: 0xFF80,
    0xFF7FFFFF: 0xFF80,
    0x7F800000: 0x7F80,  # +Inf
    0xFF800000: 0xFF80,  # -Inf
    0x7FC00000: None,    # NaNs
    0xFFC00000: None,
    0x7FFFFFFF: None,
    0xFFFFFFFF: None,
    0x7FC00001: None,
    0xFFC0FFFF: None,
}


def fp32(bit_patterns):
    return torch.tensor(bit_patterns, dtype=torch.int64).to(torch.int32).view(torch.float32)


def check(actual, expected_bits, what):
    """actual: bf16 tensor; expected_bits: list of int or None (NaN)."""
    got = actual.view(torch.int16).to(torch.int64) & 0xFFFF
    for i, want in enumerate(expected_bits):
        if want is None:
            assert actual[i].isnan(), f"{what}[{i}]: expected NaN, got {got[i].item():#06x}"
        else:
            assert got[i].item() == want, f"{what}[{i}]: expected {want:#06x}, got {got[i].item():#06x}"


@pytest.mark.parametrize("level", LEVELS)
def test_swiglu_rounding(level):
    values = fp32(list(CASES))
    finite = values.isfinite()
    u = torch.where(finite, values * 2.0 ** -24, values)  # exact: every finite case is a normal >= 1
    u = torch.where(values == 0, values, u)
    g = torch.full_like(u, 2.0 ** 24)
    z = torch.empty(len(u), dtype=torch.bfloat16)
    _native.swiglu_forward_test(level, g, u, z)
    check(z, list(CASES.values()), "z")


@pytest.mark.parametrize("level", LEVELS)
def test_swiglu_rounding_of_random_values_matches_torch(level):
    """torch's fp32 -> bf16 conversion is round to nearest even: 2000 values over a wide range."""
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(2000, generator=gen) * torch.exp2(torch.randint(-60, 100, (2000,), generator=gen).float())
    z = torch.empty(2000, dtype=torch.bfloat16)
    _native.swiglu_forward_test(level, torch.full_like(v, 2.0 ** 24), v * 2.0 ** -24, z)
    assert torch.equal(z.view(torch.int16), v.to(torch.bfloat16).view(torch.int16))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("zero_point", [True, False])
def test_dequant_with_non_finite_scales(level, zero_point):
    """Groups of 16 with scales +Inf, -Inf, NaN, 65504 and 1 in each row (the tables of the AVX-512
    levels, both their fused and unfused forms): the exact products (code - z) s rounded, bit for
    bit where not NaN (0 * Inf is NaN)."""
    rows, group, groups = 3, 16, 10
    gen = torch.Generator().manual_seed(5)
    codes = torch.randint(0, 256, (rows, groups * group // 2), dtype=torch.uint8, generator=gen)
    specials = [float("inf"), float("-inf"), float("nan"), 65504.0, 1.0]
    scale = torch.tensor([specials * 2] * rows, dtype=torch.float16)
    scale[1] = scale[1].roll(1)
    scale[2] = torch.tensor([65504.0] * 5 + [float("inf")] * 5)  # only positive scales: the fused tables
    zero = torch.randint(0, 256, (rows, groups), dtype=torch.uint8, generator=gen) if zero_point else None
    cols = groups * group
    out = torch.empty(rows, cols, dtype=torch.bfloat16)
    _native.dequant_bf16_test(level, codes, scale, zero, group, 0, cols, 0, rows, 0, cols, out)
    expected = dequantize_int4(codes, scale, zero, group_size=group).to(torch.bfloat16)
    assert torch.equal(out.isnan(), expected.isnan())
    keep = ~expected.isnan()
    assert torch.equal(out[keep].view(torch.int16), expected[keep].view(torch.int16))
