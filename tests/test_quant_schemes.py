"""kt_moe.quant: the INT8 per-channel and INT4 group-16 schemes (round-trip error, exact formats,
nibble order, fractional zero points, zero rows, K padding, fp16 range, determinism, batched == per
matrix, input checks), the INT4 K-group scheme (groups of 32, 64, 128, with or without zero points;
the same quantizer as int4_group16) and the method -> scheme table."""

import pytest
import torch

from kt_moe.quant import common
from kt_moe.quant import (KGROUP_SIZES, METHOD_SCHEMES, SCHEMES, dequantize_int4_group16, dequantize_int8_channel,
                          int4_kgroup_scheme, padded_k, quantize_int4_group16, quantize_int8_channel,
                          scheme_for_method)


def normal(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def rel_error(approx, exact):
    return float((approx - exact.float()).norm() / exact.float().norm())


# ---- INT8 per channel ----

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(64, 256), (33, 100), (3, 40, 96)])
def test_int8_round_trip_error(dtype, shape):
    w = normal(*shape, dtype=dtype)
    q, scale = quantize_int8_channel(w)
    assert q.dtype == torch.int8 and tuple(q.shape) == shape
    assert scale.dtype == torch.float32 and tuple(scale.shape) == shape[:-1]
    for e in range(shape[0] if len(shape) == 3 else 1):  # each matrix on its own
        got, want = (dequantize_int8_channel(q, scale), w) if len(shape) == 2 else \
            (dequantize_int8_channel(q[e], scale[e]), w[e])
        assert rel_error(got, want) < 1e-2


def test_int8_format_is_symmetric_absmax():
    w = normal(16, 64)
    q, scale = quantize_int8_channel(w)
    torch.testing.assert_close(scale, w.abs().amax(dim=1) / 127, rtol=0, atol=0)
    assert torch.equal(q, torch.round(w / scale[:, None]).to(torch.int8))
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    assert torch.equal(dequantize_int8_channel(q, scale), q.float() * scale[:, None])


def test_int8_zero_row_dequantizes_to_zeros():
    w = normal(4, 32)
    w[2] = 0
    q, scale = quantize_int8_channel(w)
    assert float(scale[2]) == 1.0 and not q[2].any()
    out = dequantize_int8_channel(q, scale)
    assert torch.isfinite(out).all() and not out[2].any()


# ---- INT4 group 16 ----

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(64, 256), (32, 96), (2, 48, 128)])
def test_int4_round_trip_error(dtype, shape):
    w = normal(*shape, dtype=dtype)
    codes, scale, zero = quantize_int4_group16(w)
    N, K = shape[-2:]
    assert (codes.dtype, tuple(codes.shape)) == (torch.uint8, (*shape[:-1], K // 2))
    assert (scale.dtype, tuple(scale.shape)) == (torch.float16, (*shape[:-1], K // 16))
    assert (zero.dtype, tuple(zero.shape)) == (torch.uint8, (*shape[:-1], K // 16))
    assert rel_error(dequantize_int4_group16(codes, scale, zero), w) < 0.065


def test_int4_dequantization_is_exact_in_fp32():
    """(code - zero / 16) * scale with an fp16 scale needs at most 20 significant bits: the fp64
    product equals the fp32 one."""
    codes, scale, zero = quantize_int4_group16(normal(16, 256, seed=2))
    x = torch.stack((codes & 0xF, codes >> 4), dim=-1).view(16, -1, 16).double()
    exact = ((x - zero[..., None].double() / 16) * scale[..., None].double()).view(16, 256)
    assert torch.equal(dequantize_int4_group16(codes, scale, zero).double(), exact)


def test_int4_nibble_order_low_is_even_k():
    ramp = torch.zeros(2, 32)
    ramp[0, 1::2] = 1.0  # odd k at the top of the range, even k at zero
    ramp[1, 0::2] = 1.0
    codes, scale, zero = quantize_int4_group16(ramp)
    assert torch.all(codes[0] == 0xF0) and torch.all(codes[1] == 0x0F)
    assert not zero.any()
    assert torch.equal(scale, torch.full((2, 2), 1 / 15).half())
    torch.testing.assert_close(dequantize_int4_group16(codes, scale, zero), ramp, rtol=0, atol=1e-3)
    # and reading: byte 0x21 holds code 1 for k = 0 and code 2 for k = 1; zero 8 = half a code
    handmade = torch.full((1, 8), 0x21, dtype=torch.uint8)
    out = dequantize_int4_group16(handmade, torch.ones(1, 1).half(), torch.full((1, 1), 8, dtype=torch.uint8))
    assert out[0, :4].tolist() == [0.5, 1.5, 0.5, 1.5]


def test_int4_zero_points_are_fractional_and_centre_the_grid():
    """Weights spread evenly over [-0.34375, 1.53125]: a plain min / max grid wastes the half step between
    its zero point and the values; the fitted fractional zero point (here 2.75 codes = 44 sixteenths)
    puts the 16 levels on the 16 values."""
    w = ((torch.arange(16.0) - 2.75) * 0.125)[None]
    codes, scale, zero = quantize_int4_group16(w)
    assert int(zero) == 44 and float(scale) == 0.125
    assert torch.equal(dequantize_int4_group16(codes, scale, zero), w)
    assert (quantize_int4_group16(normal(64, 512, seed=5))[2] % 16).any()


def test_int4_zero_rows_and_groups():
    w = normal(3, 48)
    w[1] = 0
    w[2, 16:32] = 0
    codes, scale, zero = quantize_int4_group16(w)
    assert not codes[1].any() and not zero[1].any() and not scale[1].any()
    assert float(scale[2, 1]) == 0.0 and int(zero[2, 1]) == 0
    out = dequantize_int4_group16(codes, scale, zero)
    assert torch.isfinite(out).all() and not out[1].any() and not out[2, 16:32].any()


def test_int4_constant_and_ramp_groups():
    """Exact up to the fp16 rounding of the scale."""
    w = torch.full((2, 16), -0.75)
    w[1] = 2.5
    torch.testing.assert_close(dequantize_int4_group16(*quantize_int4_group16(w)), w, rtol=5e-4, atol=0)
    ramp = torch.arange(16.0)[None]
    assert torch.equal(dequantize_int4_group16(*quantize_int4_group16(ramp)), ramp)


def test_int4_fp16_range():
    """Tiny groups (scale below fp16's range) store zeros; groups too wide for fp16 are refused."""
    w = normal(2, 32)
    w[0, :16] *= 1e-9
    codes, scale, zero = quantize_int4_group16(w)
    assert float(scale[0, 0]) == 0.0 and not dequantize_int4_group16(codes, scale, zero)[0, :16].any()
    w[1, 3] = 1e7
    with pytest.raises(ValueError, match="^w has a group of weights too wide for a float16 scale"):
        quantize_int4_group16(w)


def plain_group_errors(w, G=16):
    """Squared error per group of plain asymmetric min/max (range including 0, integer zero point)
    quantization, computed independently: [N, g]."""
    x = w.float().view(w.shape[0], -1, G)
    lo, hi = x.amin(2).clamp(max=0), x.amax(2).clamp(min=0)
    step = torch.where(hi > lo, (hi - lo) / 15, torch.ones_like(lo))
    z = torch.round(-lo / step)
    c = torch.clamp(torch.round(x / step[..., None]) + z[..., None], 0, 15)
    return ((c - z[..., None]) * step[..., None] - x).square().sum(2)


def test_int4_fitted_search_beats_plain_min_max():
    w = normal(64, 512, seed=3)
    out = dequantize_int4_group16(*quantize_int4_group16(w))
    ours = (out - w).view(64, -1, 16).square().sum(2)
    plain = plain_group_errors(w)
    assert float(ours.sum()) < 0.8 * float(plain.sum())


@pytest.mark.parametrize("K", [1, 15, 40, 100])
def test_int4_pads_k_with_zero_weights(K):
    w = normal(5, K)
    Kp = padded_k(K)
    assert Kp % 16 == 0 and K <= Kp < K + 16
    codes, scale, zero = quantize_int4_group16(w)
    assert tuple(codes.shape) == (5, Kp // 2) and tuple(scale.shape) == tuple(zero.shape) == (5, Kp // 16)
    padded = torch.nn.functional.pad(w, (0, Kp - K))
    assert all(torch.equal(a, b) for a, b in zip((codes, scale, zero), quantize_int4_group16(padded)))
    assert dequantize_int4_group16(codes, scale, zero).shape == (5, Kp)


# ---- both schemes ----

SCHEME_NAMES = list(SCHEMES)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_deterministic(name):
    w = normal(3, 40, 96, seed=7, dtype=torch.bfloat16)
    first, second = SCHEMES[name].quantize(w), SCHEMES[name].quantize(w.clone())
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("block_elements", [None, 1000])
@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_batched_equals_per_matrix(monkeypatch, name, block_elements):
    if block_elements:  # 4 or 5 rows a block: blocks straddle the matrices of the batch
        monkeypatch.setattr(common, "BLOCK_ELEMENTS", block_elements)
    quantize = SCHEMES[name].quantize
    w = normal(4, 72, 200, seed=11)
    batched = quantize(w)
    for e in range(4):
        assert all(torch.equal(b[e], p) for b, p in zip(batched, quantize(w[e])))


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_same_result_with_one_or_two_threads(name):
    w = normal(128, 1024, seed=5)  # 2 blocks, each large enough for torch to split across threads
    one = SCHEMES[name].quantize(w)
    torch.set_num_threads(2)  # conftest's one_torch_thread restores the count
    two = SCHEMES[name].quantize(w)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_bf16_input_equals_its_fp32_upcast(name):
    w = normal(16, 64, dtype=torch.bfloat16)
    quantize = SCHEMES[name].quantize
    assert all(torch.equal(a, b) for a, b in zip(quantize(w), quantize(w.float())))


@pytest.mark.parametrize("name", SCHEME_NAMES)
@pytest.mark.parametrize("bad,message", [
    (torch.zeros(4, 64, dtype=torch.int32), "w must be bfloat16 or float16 or float32, got int32"),
    (torch.zeros(64), "w must be a non-empty [N, K] or [E, N, K] tensor, got shape (64,)"),
    (torch.zeros(2, 2, 4, 64), "w must be a non-empty [N, K] or [E, N, K] tensor, got shape (2, 2, 4, 64)"),
    (torch.zeros(0, 64), "w must be a non-empty [N, K] or [E, N, K] tensor, got shape (0, 64)"),
    ([[1.0]], "w must be a torch.Tensor, got list"),
])
def test_bad_weights_are_refused(name, bad, message):
    with pytest.raises(ValueError) as info:
        SCHEMES[name].quantize(bad)
    assert str(info.value) == message


@pytest.mark.parametrize("name", SCHEME_NAMES)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(name, value):
    w = normal(4, 64)
    w[2, 17] = value
    with pytest.raises(ValueError, match="w contains NaN or infinite values"):
        SCHEMES[name].quantize(w)


def test_dequantize_checks_its_parts():
    q, scale = quantize_int8_channel(normal(4, 64))
    with pytest.raises(ValueError, match=r"scale shape mismatch: expected \(4,\), got \(3,\)"):
        dequantize_int8_channel(q, scale[:3])
    with pytest.raises(ValueError, match="q must be int8, got uint8"):
        dequantize_int8_channel(q.view(torch.uint8), scale)
    codes, scale, zero = quantize_int4_group16(normal(4, 64))
    with pytest.raises(ValueError, match=r"zero shape mismatch: expected \(4, 4\), got \(4, 1\)"):
        dequantize_int4_group16(codes, scale, zero[:, :1])
    with pytest.raises(ValueError, match="codes must have a multiple of 8 bytes per row"):
        dequantize_int4_group16(codes[:, :4], scale[:, :1], zero[:, :1])
    with pytest.raises(ValueError, match="scale must be float16, got float32"):
        dequantize_int4_group16(codes, scale.float(), zero)


# ---- the table ----

def test_method_table():
    assert METHOD_SCHEMES == {"AMXINT8": "int8_channel", "AMXINT4": "int4_group16", "AMXINT8_SFT": "int8_channel",
                              "AMXINT4_SFT": "int4_group16", "AMXINT4_KGroup_SFT": "int4_kgroup", "FP8": "fp8",
                              "RAWINT4": "int4_packed", "AMXFP8_SFT": "fp8", "MOE_INT8": "int8_rows",
                              "MOE_INT4": "int4_rows"}
    int8, int4 = scheme_for_method("AMXINT8"), scheme_for_method("AMXINT4")
    assert (int8.name, int8.group_size, int8.parts) == ("int8_channel", 0, ("q", "scale"))
    assert (int4.name, int4.group_size, int4.parts) == ("int4_group16", 16, ("codes", "scale", "zero"))
    assert scheme_for_method("AMXINT8_SFT") is int8 and scheme_for_method("AMXINT4_SFT") is int4
    kgroup = scheme_for_method("AMXINT4_KGroup_SFT")  # the config's defaults
    assert (kgroup.name, kgroup.group_size, kgroup.zero_point, kgroup.parts) == \
        ("int4_kgroup", 128, True, ("codes", "scale", "zero"))
    symmetric = scheme_for_method("AMXINT4_KGroup_SFT", group_size=64, zero_point=False)
    assert (symmetric.group_size, symmetric.zero_point, symmetric.parts) == (64, False, ("codes", "scale"))
    fp8, fp8_channel = scheme_for_method("FP8"), scheme_for_method("AMXFP8_SFT", group_size=0)
    assert (fp8.name, fp8.group_size, fp8.parts) == ("fp8", 128, ("weight", "weight_scale_inv"))
    assert (fp8_channel.group_size, fp8_channel.parts) == (0, ("weight", "weight_scale"))
    rawint4 = scheme_for_method("RAWINT4")
    assert (rawint4.name, rawint4.group_size, rawint4.parts) == ("int4_packed", 32, ("weight_packed", "weight_scale"))
    with pytest.raises(ValueError) as info:
        scheme_for_method("LLAMAFILE")
    assert str(info.value) == ("method 'LLAMAFILE' has no kt-moe quantization scheme; expected one of AMXINT8, "
                               "AMXINT4, FP8, RAWINT4, MOE_INT8, MOE_INT4, AMXINT8_SFT, AMXINT4_SFT, "
                               "AMXINT4_KGroup_SFT, AMXFP8_SFT")
    with pytest.raises(ValueError, match=r"^group_size and zero_point are options of the INT4 group methods "
                                         r"\(AMXINT4, AMXINT4_KGroup_SFT\); method 'AMXINT8' stores int8_channel"):
        scheme_for_method("AMXINT8", group_size=32)
    with pytest.raises(ValueError, match=r"^AMXINT4 takes group_size in \(16, 64, 128\), got 32"):
        scheme_for_method("AMXINT4", group_size=32)
    with pytest.raises(ValueError, match="^AMXINT4 with groups of 16 has zero points: zero_point=False needs a "
                                         "group_size of 64 or 128"):
        scheme_for_method("AMXINT4", zero_point=False)
    assert scheme_for_method("AMXINT4", 16, True) is scheme_for_method("AMXINT4")
    grouped = scheme_for_method("AMXINT4", group_size=128, zero_point=False)
    assert (grouped.name, grouped.group_size, grouped.zero_point) == ("int4_kgroup", 128, False)
    assert scheme_for_method("AMXINT4", group_size=64).zero_point is True
    with pytest.raises(ValueError, match=r"^int4_kgroup takes group_size in \(32, 64, 128\)"):
        int4_kgroup_scheme(48, True)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_part_specs_describe_what_quantize_returns(name):
    scheme = SCHEMES[name]
    parts = scheme.quantize(normal(24, 72))
    specs = scheme.part_specs(24, 72)
    assert list(specs) == list(scheme.parts)
    assert [(tuple(t.shape), t.dtype) for t in parts] == list(specs.values())
    out = scheme.dequantize(*parts)
    assert out.dtype == torch.float32 and out.shape[0] == 24


# ---- INT4 K-group ----

KGROUP_SCHEMES = [int4_kgroup_scheme(g, z) for g in KGROUP_SIZES for z in (True, False)]


def kgroup_id(scheme):
    return f"g{scheme.group_size}-{'zero' if scheme.zero_point else 'sym'}"


def test_kgroup_is_the_int4_group16_quantizer_with_larger_groups():
    """Each K-group group of 32 holds two int4_group16 groups' values: the same quantizer on the
    same values, so with identical halves it stores what int4_group16 stores for one half."""
    half = normal(3, 40, 16, seed=4)
    w = torch.cat((half, half), dim=-1)
    codes, scale, zero = int4_kgroup_scheme(32, True).quantize(w)
    codes16, scale16, zero16 = quantize_int4_group16(half)
    assert torch.equal(codes, torch.cat((codes16, codes16), dim=-1))
    assert torch.equal(scale, scale16) and torch.equal(zero, zero16)


@pytest.mark.parametrize("scheme", KGROUP_SCHEMES, ids=kgroup_id)
@pytest.mark.parametrize("K", [128, 200, 1])
def test_kgroup_format_and_round_trip(scheme, K):
    w = normal(2, 24, K, seed=K)
    parts = scheme.quantize(w)
    assert [(tuple(t.shape), t.dtype) for t in parts] == [((2, *shape), dtype)
                                                          for shape, dtype in scheme.part_specs(24, K).values()]
    G, Kp = scheme.group_size, -(-K // scheme.group_size) * scheme.group_size
    out = scheme.dequantize(*parts)
    assert out.shape == (2, 24, Kp)
    if K >= G:
        bound = {32: 0.08, 64: 0.09, 128: 0.1}[G] * (1.12 if not scheme.zero_point else 1.0)
        assert rel_error(out[..., :K], w) < bound


@pytest.mark.parametrize("G", KGROUP_SIZES)
def test_kgroup_symmetric_groups_have_zero_point_8(G):
    """Symmetric: two parts, W ~= (code - 8) * scale; a group of zeros stores codes 0 and scale 0;
    values on the grid of a step come back exactly."""
    scheme = int4_kgroup_scheme(G, False)
    w = torch.zeros(2, G)
    w[1, 0], w[1, 1] = 7.0, -8.0
    codes, scale = scheme.quantize(w)
    assert not codes[0].any() and float(scale[0, 0]) == 0.0
    out = scheme.dequantize(codes, scale)
    assert not out[0].any()
    assert torch.equal(out[1], w[1])


@pytest.mark.parametrize("scheme", KGROUP_SCHEMES, ids=kgroup_id)
def test_kgroup_deterministic_and_batched_equals_per_matrix(scheme):
    w = normal(3, 40, 160, seed=9, dtype=torch.bfloat16)
    batched = scheme.quantize(w)
    assert all(torch.equal(a, b) for a, b in zip(batched, scheme.quantize(w.clone())))
    for e in range(3):
        assert all(torch.equal(b[e], p) for b, p in zip(batched, scheme.quantize(w[e])))


def test_larger_groups_lose_accuracy():
    w = normal(64, 512, seed=3)
    errors = [rel_error(s.dequantize(*s.quantize(w)), w) for s in KGROUP_SCHEMES]
    by = dict(zip(map(kgroup_id, KGROUP_SCHEMES), errors))
    assert by["g32-zero"] < by["g64-zero"] < by["g128-zero"]
    assert all(by[f"g{g}-zero"] < by[f"g{g}-sym"] for g in KGROUP_SIZES)
