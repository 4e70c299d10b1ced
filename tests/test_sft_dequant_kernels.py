"""The dequantizers of the SFT engine's quantized bases (native/kernels/dequant_bf16.hpp, through the
test hook kt_moe._native.dequant_bf16_test) at every level the host runs plus amx_emulated, against
torch: int8_channel gives q exactly as bf16 (its row scale is applied by the products); int4 (fp16
scales, zero points in sixteenths of a code or none) gives the exact dequantization of
kt_moe.quant.int4_groups.dequantize_int4 rounded to bf16, bit for bit, per group of 16, 32, 64 or
128, with or without zero points, for any row range, any column range (partial 32-column steps at
both ends, rows longer than the kernels' 4096-column segments) and a slice whose first column sits
inside a group (col0); fp16 subnormal and extreme scales and every zero point included."""

import pytest
import torch

import kt_moe
from kt_moe import _native
from kt_moe.quant.int4_groups import dequantize_int4, quantize_int4

LEVELS = kt_moe.cpu_info()["selectable"]
GROUPS = [(16, True), (16, False), (32, True), (32, False), (64, True), (64, False), (128, True), (128, False)]


def random_fp16(shape, gen):
    """fp16 scales over the whole finite range, either sign: random bit patterns (subnormals, tiny,
    huge and zero included), NaN and infinity excluded."""
    bits = torch.randint(0, 1 << 15, shape, dtype=torch.int32, generator=gen)
    bits = torch.where(bits >= 0x7C00, bits - 0x7C00, bits)  # exponent 31 (inf, NaN) -> a finite pattern
    sign = torch.randint(0, 2, shape, dtype=torch.int32, generator=gen) << 15
    return (bits | sign).to(torch.int16).view(torch.float16)


def stored_int4(rows, groups, group, zero_point, seed, scales="typical"):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, (rows, groups * group // 2), dtype=torch.uint8, generator=gen)
    if scales == "typical":
        scale = (torch.rand(rows, groups, generator=gen) * 0.02).to(torch.float16)
    else:
        scale = random_fp16((rows, groups), gen)
    zero = torch.randint(0, 256, (rows, groups), dtype=torch.uint8, generator=gen) if zero_point else None
    return codes, scale, zero


def bits(t):
    return t.view(torch.int16)


def expected_int4(codes, scale, zero, group, col0, r0, r1, c0, c1):
    """What the dequantizer must write: the exact dequantized W rounded to bf16, logical column c
    being stored column col0 + c."""
    w = dequantize_int4(codes, scale, zero, group_size=group)  # fp32 [rows, stored columns], exact
    return w[r0:r1, col0 + c0:col0 + c1].to(torch.bfloat16)


def run(level, codes, scale, zero, group, col0, cols, r0, r1, c0, c1):
    out = torch.full((r1 - r0, c1 - c0), 7.0, dtype=torch.bfloat16)
    _native.dequant_bf16_test(level, codes, scale, zero, group, col0, cols, r0, r1, c0, c1, out)
    return out


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("group,zero_point", GROUPS)
@pytest.mark.parametrize("col0,cols,r0,r1,c0,c1", [
    (0, 200, 0, 5, 0, 200),       # whole rows; the last step partial
    (0, 256, 2, 6, 32, 224),      # whole steps only
    (0, 512, 0, 3, 0, 512),       # whole pairs of groups
    (7, 120, 0, 3, 0, 120),       # a slice starting inside a group
    (20, 100, 1, 4, 13, 61),      # partial steps at both ends
    (3, 90, 0, 2, 40, 45),        # inside one step
    (9, 1, 0, 6, 0, 1),           # one column
    (0, 64, 0, 3, 10, 10),        # nothing
    (5, 455, 1, 6, 0, 455),       # odd shape: rows end inside a group of 16
    (11, 4600, 2, 4, 1, 4599),    # across the 4096-column segment boundary, partial steps there too
    (0, 8192, 0, 2, 96, 8192),    # two whole segments
])
def test_int4_matches_dequantize_int4(level, group, zero_point, col0, cols, r0, r1, c0, c1):
    col0 %= group  # a slice's first stored column lies inside its first group
    groups = -(-(col0 + cols) // group)
    codes, scale, zero = stored_int4(6, groups, group, zero_point, seed=col0 + cols + group)
    out = run(level, codes, scale, zero, group, col0, cols, r0, r1, c0, c1)
    assert torch.equal(bits(out), bits(expected_int4(codes, scale, zero, group, col0, r0, r1, c0, c1)))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("group,zero_point", GROUPS)
@pytest.mark.parametrize("col0,c0,c1", [(0, 0, 700), (13, 5, 611), (1, 30, 34)])
def test_int4_extreme_fp16_scales(level, group, zero_point, col0, c0, c1):
    """Scales from every fp16 binade (subnormals down to 2^-24, up to 65504, negative, zero) and all
    256 zero points: the fp32 values stay exact and none is denormal, so each level rounds alike."""
    cols = 700
    groups = -(-(col0 + cols) // group)
    codes, scale, zero = stored_int4(40, groups, group, zero_point, seed=group + col0, scales="extreme")
    out = run(level, codes, scale, zero, group, col0, cols, 0, 40, c0, c1)
    assert torch.equal(bits(out), bits(expected_int4(codes, scale, zero, group, col0, 0, 40, c0, c1)))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("signed", [False, True])
def test_int4_every_code_zero_and_subnormal_scale(level, signed):
    """Row z holds zero point z (0..255); its groups of 16 hold the codes 0..15 in order, scaled by
    every subnormal fp16 (0x0001..0x03FF) and a few normal scales at both ends of the range; signed:
    also zero and negative scales (the AVX-512 levels take another path for rows with those: the
    signs of zero results, (code - z) * +-0 or (z - z) * s < 0, must stay those of the product)."""
    subnormal = torch.arange(1, 0x400, dtype=torch.int32)
    ends = torch.tensor([0x0400, 0x0401, 0x3C00, 0x7BFF, 0x7BFE] +
                        ([0x8001, 0x83FF, 0xFBFF, 0x0000, 0x8000] if signed else []), dtype=torch.int32)
    scale_bits = torch.cat((subnormal, ends))
    groups = scale_bits.numel() // 16 * 16 + 16
    scale_bits = torch.cat((scale_bits, torch.full((groups - scale_bits.numel(),), 0x3555, dtype=torch.int32)))
    scale = scale_bits.to(torch.int16).view(torch.float16).expand(256, groups).contiguous()
    byte = torch.tensor([c | (c + 1) << 4 for c in range(0, 16, 2)], dtype=torch.uint8)
    codes = byte.repeat(256, groups)  # [256, 8 * groups]: codes 0..15 in every group of 16
    zero = torch.arange(256, dtype=torch.int32).to(torch.uint8)[:, None].expand(256, groups).contiguous()
    cols = 16 * groups
    out = run(level, codes, scale, zero, 16, 0, cols, 0, 256, 0, cols)
    assert torch.equal(bits(out), bits(expected_int4(codes, scale, zero, 16, 0, 0, 256, 0, cols)))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("group,zero_point", GROUPS)
def test_int4_quantizer_output_and_slices(level, group, zero_point):
    """quantize_int4's parts of W [N, K] (K not a multiple of the group: padded), read whole and as
    the tensor-parallel slices of down's inputs the SFT base keeps: the whole groups covering [k0,
    k1), logical column 0 at stored column k0 mod G."""
    gen = torch.Generator().manual_seed(group)
    N, K = 37, 1000
    w = torch.randn(N, K, generator=gen)
    w[5, 256:640] = 0  # whole zero groups: scale 0 (symmetric: (0 - 8) * 0 = -0)
    w[7] = 0
    parts = quantize_int4(w, group, zero_point)
    codes, scale = parts[0], parts[1]
    zero = parts[2] if zero_point else None
    whole = dequantize_int4(codes, scale, zero, group_size=group)[:, :K].to(torch.bfloat16)
    out = run(level, codes, scale, zero, group, 0, K, 0, N, 0, K)
    assert torch.equal(bits(out), bits(whole))
    for k0, k1 in [(0, 333), (333, 666), (666, 1000), (250, 750)]:
        g0, g1 = k0 // group, -(-k1 // group)
        sl_codes = codes[:, g0 * group // 2:g1 * group // 2].contiguous()
        sl_scale = scale[:, g0:g1].contiguous()
        sl_zero = zero[:, g0:g1].contiguous() if zero_point else None
        out = run(level, sl_codes, sl_scale, sl_zero, group, k0 - g0 * group, k1 - k0, 3, N, 0, k1 - k0)
        assert torch.equal(bits(out), bits(whole[3:, k0:k1]))


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
    codes, scale, zero = stored_int4(2, 4, 16, True, seed=0)
    out = torch.empty(2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="need 0 <= r0 <= r1 <= rows"):
        _native.dequant_bf16_test("generic", codes, scale, zero, 16, 0, 64, 0, 3, 0, 64, out)
    with pytest.raises(ValueError, match="scale shape mismatch"):
        _native.dequant_bf16_test("generic", codes, scale[:, :1].contiguous(), zero, 16, 0, 64, 0, 2, 0, 64, out)
    with pytest.raises(ValueError, match="scale must be float16"):
        _native.dequant_bf16_test("generic", codes, scale.float(), zero, 16, 0, 64, 0, 2, 0, 64, out)
    with pytest.raises(ValueError, match="zero must be uint8"):
        _native.dequant_bf16_test("generic", codes, scale, zero.to(torch.int8), 16, 0, 64, 0, 2, 0, 64, out)
    for group, col0 in [(48, 0), (8, 0), (2048, 0), (16, 16), (16, -1)]:
        with pytest.raises(ValueError, match="bad group or col0"):
            _native.dequant_bf16_test("generic", codes, scale, zero, group, col0, 64, 0, 2, 0, 64, out)
    with pytest.raises(ValueError, match="values must hold whole groups"):
        _native.dequant_bf16_test("generic", codes, scale, zero, 16, 1, 64, 0, 2, 0, 64, out)
