"""int8_channel's many-rows product from its stored rows (native/formats/int8_channel/gemm_stored_amx.cpp,
through the test hook kt_moe._native.dequant_product_test), which the SFT engine's AMXINT8_SFT forward
runs at the AMX levels: c = (a x q^T) * scale with each activation row split exactly into three int8
pieces. Checked against the float64 product at amx (where the host has it) and amx_emulated, bit for
bit between the two; for any m, row range, depth (partial 64-k units, depth below one unit), padded
row stride, extreme weights and activations (bf16 max, subnormal, zero rows, rows spanning more than
the pieces hold exactly); non-finite activations are declined with c untouched; the levels below AMX
have no such product (the engine dequantizes there)."""

import pytest
import torch

import kt_moe
from kt_moe import _native

SELECTABLE = kt_moe.cpu_info()["selectable"]
AMX_LEVELS = [level for level in ("amx", "amx_emulated") if level in SELECTABLE]


def stored(rows, K, gen, ld=None, extreme=False):
    ld = ld or K
    if extreme:
        q = torch.where(torch.rand(rows, ld, generator=gen) < 0.5, -128, 127).to(torch.int8)
    else:
        q = torch.randint(-128, 128, (rows, ld), dtype=torch.int8, generator=gen)
    scale = torch.rand(rows, generator=gen) * 0.01 + 1e-4
    return q, scale


def product(level, q, scale, K, n0, n1, a):
    c = torch.full((a.shape[0], n1 - n0), 7.0)
    taken = _native.dequant_product_test(level, "int8_channel", q, 0, K, n0, n1, a, c, True, scale=scale)
    return taken, c


def reference(q, scale, K, n0, n1, a):
    return (a.double() @ q[n0:n1, :K].double().T) * scale[n0:n1].double()


def bound(q, scale, K, n0, n1, a):
    """One rounding of the exact sum and one of the scale product, plus the rounding of elements
    smaller than 2^-14 of their row's largest to 2^-22 of it (the pieces' last unit)."""
    ref = reference(q, scale, K, n0, n1, a)
    amax = a.double().abs().amax(dim=1, keepdim=True)
    weight_l1 = q[n0:n1, :K].double().abs().sum(dim=1) * scale[n0:n1].double()
    return 3e-7 * ref.abs() + amax * 2.0**-22 * weight_l1 + 1e-300


CASES = [  # m, rows, K, n0, n1, ld
    (1, 16, 64, 0, 16, None),
    (4, 32, 2048, 0, 32, None),
    (5, 37, 128, 0, 37, None),
    (12, 48, 2048, 16, 48, 2112),
    (16, 40, 100, 3, 40, None),
    (17, 21, 7, 0, 21, 16),
    (40, 64, 1408, 8, 59, None),
]


@pytest.mark.parametrize("level", AMX_LEVELS)
@pytest.mark.parametrize("m,rows,K,n0,n1,ld", CASES)
def test_matches_the_exact_product(level, m, rows, K, n0, n1, ld):
    gen = torch.Generator().manual_seed(m * 1000 + K)
    q, scale = stored(rows, K, gen, ld)
    a = torch.randn(m, K, generator=gen).to(torch.bfloat16)
    taken, c = product(level, q, scale, K, n0, n1, a)
    assert taken
    err = (c.double() - reference(q, scale, K, n0, n1, a)).abs()
    assert (err <= bound(q, scale, K, n0, n1, a)).all()


def extreme_activations(m, K, gen):
    """bf16 max and min normal magnitudes, subnormals, zero rows and rows whose values span 2^40."""
    rows = []
    big = torch.finfo(torch.bfloat16).max
    rows.append(torch.full((K,), big) * torch.where(torch.rand(K, generator=gen) < 0.5, -1.0, 1.0))
    rows.append(torch.full((K,), -big))
    rows.append(torch.zeros(K))
    rows.append(torch.full((K,), 2.0**-130))  # subnormal
    rows.append(torch.randn(K, generator=gen) * 2.0 ** torch.randint(-20, 21, (K,), generator=gen).double())
    rows.append(torch.full((K,), torch.finfo(torch.bfloat16).tiny))
    while len(rows) < m:
        rows.append(torch.randn(K, generator=gen) * 2.0 ** float(torch.randint(-60, 60, (1,), generator=gen)))
    return torch.stack(rows[:m]).to(torch.bfloat16)


@pytest.mark.parametrize("level", AMX_LEVELS)
def test_extreme_operands(level):
    gen = torch.Generator().manual_seed(5)
    K, rows = 4096, 32
    q, _ = stored(rows, K, gen, extreme=True)
    scale = torch.full((rows,), 2.0**-100)  # keeps bf16-max rows' products finite
    a = extreme_activations(20, K, gen)
    taken, c = product(level, q, scale, K, 0, rows, a)
    assert taken
    assert torch.isfinite(c).all()
    err = (c.double() - reference(q, scale, K, 0, rows, a)).abs()
    assert (err <= bound(q, scale, K, 0, rows, a) + 1e-40).all()


@pytest.mark.skipif("amx" not in SELECTABLE, reason="the host has no AMX")
def test_amx_and_emulated_agree_bit_for_bit():
    gen = torch.Generator().manual_seed(9)
    K, rows = 1000, 45
    q, scale = stored(rows, K, gen)
    a = torch.cat([torch.randn(23, K, generator=gen), extreme_activations(10, K, gen).float()]).to(torch.bfloat16)
    results = [product(level, q, scale, K, 2, 45, a)[1] for level in ("amx", "amx_emulated")]
    assert torch.equal(results[0].view(torch.int32), results[1].view(torch.int32))


@pytest.mark.parametrize("level", AMX_LEVELS)
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_activations_are_declined(level, bad):
    gen = torch.Generator().manual_seed(3)
    q, scale = stored(16, 256, gen)
    a = torch.randn(6, 256, generator=gen)
    a[4, 100] = bad
    taken, c = product(level, q, scale, 256, 0, 16, a.to(torch.bfloat16))
    assert not taken
    assert (c == 7.0).all()


@pytest.mark.parametrize("level", AMX_LEVELS)
def test_more_than_256_rows_are_declined(level):
    """Their scratch would grow with the rows; the engine dequantizes instead."""
    gen = torch.Generator().manual_seed(2)
    q, scale = stored(32, 64, gen)
    assert product(level, q, scale, 64, 0, 32, torch.randn(256, 64, generator=gen).to(torch.bfloat16))[0]
    taken, c = product(level, q, scale, 64, 0, 32, torch.randn(257, 64, generator=gen).to(torch.bfloat16))
    assert not taken
    assert (c == 7.0).all()
    assert product_nn(level, q, scale, 0, 64, torch.randn(256, 32, generator=gen).to(torch.bfloat16))[0]
    taken, c = product_nn(level, q, scale, 0, 64, torch.randn(257, 32, generator=gen).to(torch.bfloat16))
    assert not taken
    assert (c == 7.0).all()


@pytest.mark.parametrize("level", [level for level in SELECTABLE if level not in ("amx", "amx_emulated")])
def test_levels_below_amx_have_none(level):
    gen = torch.Generator().manual_seed(4)
    q, scale = stored(16, 64, gen)
    taken, c = product(level, q, scale, 64, 0, 16, torch.ones(8, 64, dtype=torch.bfloat16))
    assert not taken
    assert (c == 7.0).all()


# ---- the product with the weight transposed (the backward's): c (+)= a x (scale * q)[:, j0:j1] ----


def product_nn(level, q, scale, j0, j1, a, c0=None):
    c = torch.full((a.shape[0], j1 - j0), 7.0) if c0 is None else c0.clone()
    taken = _native.dequant_product_nn_test(level, q, scale, j0, j1, a, c, c0 is not None)
    return taken, c


def reference_nn(q, scale, j0, j1, a):
    return (a.double() * scale.double()) @ q[:, j0:j1].double()


def bound_nn(q, scale, j0, j1, a):
    """One rounding of the exact sum, the rounding of g = a * scale to fp32, and the pieces' rounding
    of values below 2^-22 of their row's largest |g| to 2^-22 of it."""
    g = (a.double() * scale.double()).abs()
    qa = q[:, j0:j1].double().abs()
    return (3e-7 * reference_nn(q, scale, j0, j1, a).abs() + 2.0**-23 * (g @ qa)
            + g.amax(dim=1, keepdim=True) * 2.0**-22 * qa.sum(dim=0) + 1e-300)


NN_CASES = [  # m, rows, ld, j0, j1
    (1, 64, 16, 0, 16),
    (5, 100, 64, 3, 40),
    (12, 1408, 2048, 0, 2048),
    (16, 7, 37, 0, 37),
    (17, 300, 160, 32, 150),
    (40, 129, 96, 0, 96),
]


@pytest.mark.parametrize("level", AMX_LEVELS)
@pytest.mark.parametrize("m,rows,ld,j0,j1", NN_CASES)
def test_transposed_matches_the_exact_product(level, m, rows, ld, j0, j1):
    gen = torch.Generator().manual_seed(m * 100 + rows)
    q, scale = stored(rows, ld, gen)
    a = torch.randn(m, rows, generator=gen).to(torch.bfloat16)
    taken, c = product_nn(level, q, scale, j0, j1, a)
    assert taken
    err = (c.double() - reference_nn(q, scale, j0, j1, a)).abs()
    assert (err <= bound_nn(q, scale, j0, j1, a)).all()
    c_in = torch.randn(m, j1 - j0, generator=gen) * 100
    taken, c = product_nn(level, q, scale, j0, j1, a, c_in)
    assert taken
    err = (c.double() - c_in.double() - reference_nn(q, scale, j0, j1, a)).abs()
    assert (err <= bound_nn(q, scale, j0, j1, a) + 2.0**-23 * c_in.double().abs()).all()


@pytest.mark.parametrize("level", AMX_LEVELS)
def test_transposed_extreme_operands(level):
    gen = torch.Generator().manual_seed(6)
    rows, ld = 300, 48
    q, _ = stored(rows, ld, gen, extreme=True)
    scale = 2.0 ** torch.randint(-60, -40, (rows,), generator=gen).float()  # per-row scales spanning 2^20
    a = extreme_activations(20, rows, gen)
    taken, c = product_nn(level, q, scale, 0, ld, a)
    assert taken
    assert torch.isfinite(c).all()
    err = (c.double() - reference_nn(q, scale, 0, ld, a)).abs()
    assert (err <= bound_nn(q, scale, 0, ld, a) + 1e-40).all()


@pytest.mark.skipif("amx" not in SELECTABLE, reason="the host has no AMX")
def test_transposed_amx_and_emulated_agree_bit_for_bit():
    gen = torch.Generator().manual_seed(10)
    rows, ld = 333, 80
    q, scale = stored(rows, ld, gen)
    a = torch.cat([torch.randn(23, rows, generator=gen), extreme_activations(10, rows, gen).float()])
    a = a.to(torch.bfloat16)
    c_in = torch.randn(33, 70, generator=gen)
    results = [product_nn(level, q, scale, 5, 75, a, c_in)[1] for level in ("amx", "amx_emulated")]
    assert torch.equal(results[0].view(torch.int32), results[1].view(torch.int32))


@pytest.mark.parametrize("level", AMX_LEVELS)
@pytest.mark.parametrize("bad", ["inf", "nan", "overflow"])
def test_transposed_non_finite_gradients_are_declined(level, bad):
    gen = torch.Generator().manual_seed(8)
    q, scale = stored(100, 32, gen)
    a = torch.randn(6, 100, generator=gen)
    if bad == "overflow":  # finite in bf16, infinite once times its row scale
        scale[50] = 1e30
        a[3, 50] = 1e30
    else:
        a[3, 50] = float(bad)
    taken, c = product_nn(level, q, scale, 0, 32, a.to(torch.bfloat16))
    assert not taken
    assert (c == 7.0).all()


@pytest.mark.parametrize("level", [level for level in SELECTABLE if level not in ("amx", "amx_emulated")])
def test_transposed_levels_below_amx_have_none(level):
    gen = torch.Generator().manual_seed(4)
    q, scale = stored(64, 16, gen)
    taken, c = product_nn(level, q, scale, 0, 16, torch.ones(8, 64, dtype=torch.bfloat16))
    assert not taken
    assert (c == 7.0).all()
