"""The native INT4 group quantizer (kt_moe.quant.int4_groups.quantize_int4) against its torch twin
quantize_int4_torch, byte for byte: every group size the formats use, with and without zero points,
every input dtype, padded K, expert stacks, strided rows, the groups that take special paths (all
zero, scales that round to 0 or to float16 subnormals, the widest group a float16 scale holds), at
every ISA level this machine can select and on several threads; and the same errors."""

import pytest
import torch

import kt_moe
from kt_moe import _native
from kt_moe.quant.int4_groups import padded_k, quantize_int4, quantize_int4_torch

LEVELS = kt_moe.cpu_info()["selectable"]


def native(w: torch.Tensor, group: int, zero_point: bool, threads: int, level: str):
    """_native.quantize_int4_groups on w [R, K] with explicit threads and level."""
    R, K = w.shape
    g = padded_k(K, group) // group
    codes = torch.empty(R, g * group // 2, dtype=torch.uint8)
    scale = torch.empty(R, g, dtype=torch.float16)
    zero = torch.empty(R, g, dtype=torch.uint8) if zero_point else None
    _native.quantize_int4_groups(w, group, zero_point, codes, scale, zero, threads, level)
    return (codes, scale, zero) if zero_point else (codes, scale)


def special_groups(rows: int, k: int, seed: int) -> torch.Tensor:
    """fp32 [rows, k]: groups of N(0, s) for scales from 1e-9 to 1e4, with some rows all zero, some
    with a single nonzero value, some constant and some of one sign."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, k, generator=gen) * 10.0 ** torch.randint(-9, 5, (rows, 1), generator=gen).float()
    w[0] = 0.0
    w[1, 1:] = 0.0
    w[2] = 0.5
    w[3] = w[3].abs()
    w[4] = -w[4].abs()
    w[5, :k // 2] = 6.0e-8  # a scale below float16's smallest subnormal
    return w


def assert_same(got, expected, what: str):
    assert len(got) == len(expected)
    for name, a, b in zip(("codes", "scale", "zero"), got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {name} {a.dtype}{tuple(a.shape)}"
        assert torch.equal(a, b), f"{what}: {name} differs in {(a != b).sum().item()} of {a.numel()} entries"


@pytest.mark.parametrize("group", [16, 32, 64, 128])
@pytest.mark.parametrize("zero_point", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: the avx2 and avx512 levels' transposing load too
@pytest.mark.parametrize("k", [200, 1030])  # 1030: 8 whole groups of 128 in a row, and a tail
def test_native_matches_the_torch_twin(group, zero_point, dtype, k):
    gen = torch.Generator().manual_seed(7)
    w = torch.cat([special_groups(12, k, seed=group), torch.randn(40 if k < 1000 else 8, k, generator=gen)]).to(dtype)
    expected = quantize_int4_torch(w, group, zero_point)
    assert_same(quantize_int4(w, group, zero_point), expected, f"G={group} zp={zero_point}")
    for level in LEVELS:
        for threads in (1, 3):
            assert_same(native(w, group, zero_point, threads, level), expected, f"{level} threads={threads}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_input_dtypes_stacks_and_strided_rows(dtype):
    gen = torch.Generator().manual_seed(3)
    stack = (torch.randn(3, 20, 72, generator=gen) * 2).to(dtype)  # K = 72: 4.5 groups of 16
    expected = quantize_int4_torch(stack, 16, True)
    assert_same(quantize_int4(stack, 16, True), expected, f"{dtype} stack")
    wide = torch.randn(20, 100, generator=gen).to(dtype)
    view = wide[:, :72]  # rows 100 elements apart
    assert_same(quantize_int4(view, 16, True), quantize_int4_torch(view.contiguous(), 16, True), f"{dtype} strided")
    for odd in (wide[:, ::2], wide[:1].expand(5, 100)):  # strided columns; rows that share memory
        assert_same(quantize_int4(odd, 16, True), quantize_int4_torch(odd.contiguous(), 16, True), f"{dtype} view")


def test_a_real_layer_shape_on_two_threads():
    w = torch.randn(2, 256, 1408, generator=torch.Generator().manual_seed(11)).to(torch.bfloat16)
    expected = quantize_int4_torch(w, 16, True)
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert_same(quantize_int4(w, 16, True), expected, "[2, 256, 1408] on 2 threads")
    finally:
        torch.set_num_threads(torch_threads)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_weights_raise_as_the_twin_does(bad, dtype):
    w = torch.randn(40, 256).to(dtype)
    w[33, 5] = bad
    with pytest.raises(ValueError) as native_error:
        quantize_int4(w, 16, True)
    with pytest.raises(ValueError) as twin_error:
        quantize_int4_torch(w, 16, True)
    assert str(native_error.value) == str(twin_error.value)


@pytest.mark.parametrize("zero_point", [True, False])
def test_a_group_too_wide_for_float16_raises_as_the_twin_does(zero_point):
    w = torch.randn(8, 32)
    w[6, :16] = torch.linspace(-1.0e6, 1.0e6, 16)
    with pytest.raises(ValueError) as native_error:
        quantize_int4(w, 16, zero_point)
    with pytest.raises(ValueError) as twin_error:
        quantize_int4_torch(w, 16, zero_point)
    assert str(native_error.value) == str(twin_error.value)


def test_bad_arguments_are_value_errors():
    w = torch.randn(4, 32)
    with pytest.raises(ValueError, match="group"):
        native(w, 15, True, 1, "generic")
    with pytest.raises(ValueError, match="threads"):
        native(w, 16, True, 0, "generic")
    with pytest.raises(ValueError, match="float32, bfloat16 or float16, got float64"):
        native(w.double(), 16, True, 1, "generic")
    codes, scale = torch.empty(4, 16, dtype=torch.uint8), torch.empty(4, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match="zero"):
        _native.quantize_int4_groups(w, 16, True, codes, scale, None, 1, "generic")
    with pytest.raises(ValueError, match="codes"):
        _native.quantize_int4_groups(w, 16, False, torch.empty(4, 8, dtype=torch.uint8), scale, None, 1, "generic")
