"""The SwiGLU kernels (native/kernels/swiglu.hpp, through the test hooks
kt_moe._native.swiglu_forward_test / swiglu_backward_test) at every level the host runs plus
amx_emulated: against float64 for gate pre-activations across fp32's range (|g| up to 1e4, where
exp(-g) overflows), and against the generic level for NaN, +-Inf and huge values in g, u and dz:
every level gives NaN, +-Inf and finite values in the same places, the finite ones within one bf16
step of each other."""

import itertools
import math

import pytest
import torch

import kt_moe
from kt_moe import _native

LEVELS = kt_moe.cpu_info()["selectable"]
INF, NAN = math.inf, math.nan
SPECIAL_G = [NAN, INF, -INF, 3e38, -3e38, 1e4, -1e4, 100.0, -100.0, 88.9, -88.9, 87.0, -87.0, 20.0, -20.0, 1.0,
             -1.0, 0.0, -0.0, 1e-30]
SPECIAL_U = [NAN, INF, -INF, 3e38, 2.5, -1.0, 0.0]
SPECIAL_DZ = [NAN, INF, 1e30, -0.75]


def forward(level, g, u):
    z = torch.empty(g.shape, dtype=torch.bfloat16)
    _native.swiglu_forward_test(level, g, u, z)
    return z


def backward(level, g, u, dz):
    z, dg, du = (torch.empty(g.shape, dtype=torch.bfloat16) for _ in range(3))
    _native.swiglu_backward_test(level, g, u, dz, z, dg, du)
    return z, dg, du


def exact(g, u, dz):
    """float64 z, dg, du."""
    g, u, dz = g.double(), u.double(), dz.double()
    s = torch.sigmoid(g)
    return g * s * u, dz * u * s * (1 + g * (1 - s)), dz * g * s


def assert_same_classes(actual, expected, what):
    """NaN, +Inf, -Inf in the same places; finite values within one bf16 step (2^-7 relative)."""
    a, e = actual.float(), expected.float()
    assert torch.equal(a.isnan(), e.isnan()), f"{what}: NaN at different places"
    assert torch.equal(a.isposinf(), e.isposinf()) and torch.equal(a.isneginf(), e.isneginf()), f"{what}: Inf"
    finite = e.isfinite()
    diff = (a[finite] - e[finite]).abs()
    assert (diff <= 2.0 ** -7 * e[finite].abs()).all(), f"{what}: finite values more than a bf16 step apart"


def special_grid():
    g, u, dz = zip(*itertools.product(SPECIAL_G, SPECIAL_U, SPECIAL_DZ))
    return torch.tensor(g), torch.tensor(u), torch.tensor(dz)


@pytest.mark.parametrize("level", LEVELS)
def test_non_finite_and_huge_inputs_match_the_generic_level(level):
    g, u, dz = special_grid()  # 560 elements: whole vectors and a partial one
    assert_same_classes(forward(level, g, u), forward("generic", g, u), "forward z")
    for name, a, e in zip(("z", "dg", "du"), backward(level, g, u, dz), backward("generic", g, u, dz)):
        assert_same_classes(a, e, f"backward {name}")
    assert_same_classes(backward(level, g, u, dz)[0], forward(level, g, u), "backward z against forward z")


@pytest.mark.parametrize("level", LEVELS)
def test_the_limits_of_sigmoid(level):
    """sigmoid(+Inf) = 1, sigmoid(-Inf) = 0 (so silu(-Inf) = -Inf * 0 = NaN, as in IEEE arithmetic and
    torch); a gate far below -88 (exp(-g) = Inf in fp32) gives a zero, not a NaN; NaN stays NaN."""
    g = torch.tensor([INF, -INF, -89.0, -1e4, -3e38, NAN, 2.0])
    u = torch.tensor([2.0, 2.0, 3.0, 3.0, 3.0, 1.0, NAN])
    z = forward(level, g, u).float()
    assert z[0] == INF and z[1].isnan() and z[5].isnan() and z[6].isnan()
    assert (z[2:5].abs() < 1e-30).all()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("spread", [1.0, 30.0, 1e4])
def test_matches_float64(level, spread):
    """Random g of the given spread (1e4: most |g| beyond exp's fp32 range), u and dz ~ N(0, 1), 1000
    elements; each output within bf16 rounding (2^-8 relative, plus 1e-6 |dz u| where silu' crosses
    zero near g = -1.28 and fp32 cancellation in 1 + g (1 - s) shows) of the float64 value."""
    gen = torch.Generator().manual_seed(int(spread))
    g = torch.randn(1000, generator=gen) * spread
    u, dz = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen)
    z64, dg64, du64 = exact(g, u, dz)
    floor = 1e-6 * (dz.double() * u.double()).abs() + 1e-30
    for name, actual, expected, tol_floor in (
            ("forward z", forward(level, g, u), z64, 1e-30),
            *zip(("z", "dg", "du"), backward(level, g, u, dz), (z64, dg64, du64), (1e-30, floor, 1e-30))):
        err = (actual.double() - expected).abs()
        assert (err <= 2.0 ** -8 * expected.abs() + tol_floor).all(), f"{name}: max error {err.max().item():.3g}"


def test_bad_arguments_are_value_errors():
    g = torch.zeros(4)
    with pytest.raises(ValueError, match="z must be bfloat16"):
        _native.swiglu_forward_test("generic", g, g, torch.zeros(4))
    with pytest.raises(ValueError, match="u shape mismatch"):
        _native.swiglu_forward_test("generic", g, torch.zeros(3), torch.zeros(4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="unknown|not available|level"):
        _native.swiglu_forward_test("no-such-level", g, g, torch.zeros(4, dtype=torch.bfloat16))
