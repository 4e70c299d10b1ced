"""The dequantizers of the SFT engine's quantized bases (native/kernels/dequant_bf16.hpp, through the
test hook kt_moe._native.dequant_bf16_test) at every level the host runs plus amx_emulated, against
torch: int8_channel gives q exactly as bf16 (its row scale is applied by the products); int4 gives
bf16((code - zero) * scale) per group of 32, 64 or 128, with or without zero points, for any row
range, any column range (partial 32-column steps at both ends) and a slice whose first column sits
inside a group (col0)."""

import pytest
import torch

import kt_moe
from kt_moe import _native

LEVELS = kt_moe.cpu_info()["selectable"]


def stored_int4(rows, groups, group, zero_point, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (rows, groups * group // 2), dtype=torch.uint8, generator=gen)
    scale = torch.randn(rows, groups, generator=gen) * 0.01
    zero = torch.randint(0, 16, (rows, groups), dtype=torch.uint8, generator=gen) if zero_point else None
    return codes, scale, zero


def expected_int4(codes, scale, zero, group, col0, r0, r1, c0, c1):
    """What the dequantizer must write: logical column c is stored column col0 + c."""
    unpacked = torch.stack((codes & 0xF, codes >> 4), dim=-1).flatten(1).to(torch.int32)  # [rows, stored cols]
    j = torch.arange(c0, c1) + col0
    z = 8 if zero is None else zero[r0:r1][:, j // group].to(torch.int32)
    return ((unpacked[r0:r1][:, j] - z).float() * scale[r0:r1][:, j // group]).to(torch.bfloat16)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("group,zero_point", [(32, True), (32, False), (64, True), (128, False)])
@pytest.mark.parametrize("col0,cols,r0,r1,c0,c1", [
    (0, 200, 0, 5, 0, 200),     # whole rows; the last step partial
    (0, 256, 2, 6, 32, 224),    # whole steps only
    (7, 120, 0, 3, 0, 120),     # a slice starting inside a group
    (20, 100, 1, 4, 13, 61),    # partial steps at both ends
    (3, 90, 0, 2, 40, 45),      # inside one step
    (0, 64, 0, 3, 10, 10),      # nothing
])
def test_int4_matches_torch(level, group, zero_point, col0, cols, r0, r1, c0, c1):
    groups = -(-(col0 + cols) // group)
    codes, scale, zero = stored_int4(6, groups, group, zero_point, seed=col0 + cols + group)
    out = torch.full((r1 - r0, c1 - c0), 7.0, dtype=torch.bfloat16)
    _native.dequant_bf16_test(level, codes, scale, zero, group, col0, cols, r0, r1, c0, c1, out)
    assert torch.equal(out, expected_int4(codes, scale, zero, group, col0, r0, r1, c0, c1))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("cols,c0,c1", [(200, 0, 200), (64, 0, 64), (100, 17, 83), (40, 3, 4)])
def test_int8_gives_q_exactly(level, cols, c0, c1):
    gen = torch.Generator().manual_seed(cols)
    q = torch.randint(-127, 128, (5, cols), dtype=torch.int8, generator=gen)
    scale = torch.rand(5, generator=gen)
    out = torch.empty(3, c1 - c0, dtype=torch.bfloat16)
    _native.dequant_bf16_test(level, q, scale, None, 0, 0, cols, 1, 4, c0, c1, out)
    assert torch.equal(out, q[1:4, c0:c1].to(torch.bfloat16))


def test_bad_arguments_are_value_errors():
    codes, scale, zero = stored_int4(2, 2, 32, True, seed=0)
    out = torch.empty(2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="need 0 <= r0 <= r1 <= rows"):
        _native.dequant_bf16_test("generic", codes, scale, zero, 32, 0, 64, 0, 3, 0, 64, out)
    with pytest.raises(ValueError, match="scale shape mismatch"):
        _native.dequant_bf16_test("generic", codes, scale[:, :1].contiguous(), zero, 32, 0, 64, 0, 2, 0, 64, out)
    with pytest.raises(ValueError, match="bad group or col0"):
        _native.dequant_bf16_test("generic", codes, scale, zero, 48, 0, 64, 0, 2, 0, 64, out)
