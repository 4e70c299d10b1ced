"""kt_moe.quant.int4_packed: compressed-tensors pack-quantized INT4 (Kimi-K2): the bit layout of the
int32 words on hand-made examples, K not a multiple of 8, the quantizer's formula against a
straightforward bf16 reference, zero groups, round trips, exact dequantization, stacks, row
blocking, part specs and input checks. Agreement with compressed-tensors itself is in
test_quant_formats_checkpoints.py."""

import pytest
import torch

from kt_moe.quant import common
from kt_moe.quant.int4_packed import (dequantize_int4_packed, pack_int4, packed_words,
                                      quantize_int4_packed, unpack_int4)


def normal(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def rel_error(approx, exact):
    return float((approx - exact.float()).norm() / exact.float().norm())


def unsigned(words):
    return [int(v) & 0xFFFFFFFF for v in words.flatten()]


# ---- packing ----

def test_pack_stores_q_plus_8_lowest_nibble_first():
    q = torch.tensor([[-8, -7, 0, 1, 2, 3, 6, 7, 5]], dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.int32 and tuple(packed.shape) == (1, 2)
    # nibbles q + 8 from bit 0 up: 0, 1, 8, 9, a, b, e, f; then 5 + 8 = d and seven unused zero nibbles
    assert unsigned(packed) == [0xFEBA9810, 0x0000000D]
    assert packed[0, 0] == 0xFEBA9810 - (1 << 32)  # the same 32 bits as a signed int32
    assert torch.equal(unpack_int4(packed, 9), q)


def test_pack_unpack_round_trip_every_width():
    g = torch.Generator().manual_seed(1)
    for k in range(1, 26):
        q = torch.randint(-8, 8, (3, k), generator=g, dtype=torch.int8)
        packed = pack_int4(q)
        assert tuple(packed.shape) == (3, packed_words(k)) == (3, -(-k // 8))
        assert torch.equal(unpack_int4(packed, k), q)


def test_pack_single_values_land_in_their_nibble():
    for k in range(8):
        q = torch.full((1, 8), -8, dtype=torch.int8)  # all nibbles 0
        q[0, k] = 7  # nibble 0xF
        assert unsigned(pack_int4(q)) == [0xF << (4 * k)]


# ---- quantizer ----

def quantize_reference(w, g):
    """The library's arithmetic on the bf16 weight, in bf16 tensors: scale = amax / 7.5 (2^-7 when 0),
    q = round(clamp(x / scale, -8, 7))."""
    x = w.to(torch.bfloat16).unflatten(-1, (-1, g))
    scale = x.abs().amax(dim=-1) / torch.tensor(7.5, dtype=torch.bfloat16)
    scale = torch.where(scale == 0, torch.tensor(2.0 ** -7, dtype=torch.bfloat16), scale)
    q = torch.round((x / scale[..., None]).clamp(-8, 7)).to(torch.int8)
    return q.flatten(-2), scale


@pytest.mark.parametrize("shape,g", [((16, 64), 32), ((5, 96), 32), ((3, 12), 4), ((4, 36), 12), ((2, 6, 40), 8)])
def test_quantize_matches_the_bf16_reference(shape, g):
    w = normal(*shape, seed=2) * torch.logspace(-2, 2, shape[-1])
    packed, scale, weight_shape = quantize_int4_packed(w, g)
    q, want_scale = quantize_reference(w, g)
    assert torch.equal(scale, want_scale)
    assert torch.equal(unpack_int4(packed, shape[-1]), q)
    assert torch.equal(weight_shape, torch.tensor(shape[-2:]).repeat(*shape[:-2], 1))


def test_k_not_a_multiple_of_8_leaves_zero_nibbles():
    packed, scale, weight_shape = quantize_int4_packed(normal(3, 12, seed=3), 4)
    assert tuple(packed.shape) == (3, 2) and weight_shape.tolist() == [3, 12]
    assert all(word >> 16 == 0 for word in unsigned(packed[:, 1]))  # nibbles of k = 12 .. 15 unused


def test_group_extremes_and_zero_groups():
    w = torch.zeros(3, 8)
    w[0] = torch.tensor([-7.5, 0, 0, 0, 0, 0, 0, 1.0])  # amax 7.5: scale 1, -7.5 rounds (half to even) to -8
    w[1] = torch.tensor([7.5, 0, 0, 0, 0, 0, 0, -1.0])  # +7.5 rounds to 8, clamped to 7
    packed, scale, _ = quantize_int4_packed(w, 8)
    assert scale[:, 0].tolist() == [1.0, 1.0, 2.0 ** -7]  # an all-zero group stores bf16's eps
    assert unpack_int4(packed, 8).tolist() == [[-8, 0, 0, 0, 0, 0, 0, 1], [7, 0, 0, 0, 0, 0, 0, -1], [0] * 8]
    assert unsigned(packed[2]) == [0x88888888]
    assert not dequantize_int4_packed(packed, scale, group_size=8)[2].any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape,g", [((64, 256), 32), ((32, 96), 32), ((2, 24, 128), 64)])
def test_round_trip(dtype, shape, g):
    w = normal(*shape, dtype=dtype)
    packed, scale, weight_shape = quantize_int4_packed(w, g)
    *lead, N, K = shape
    assert (packed.dtype, tuple(packed.shape)) == (torch.int32, (*lead, N, K // 8))
    assert (scale.dtype, tuple(scale.shape)) == (torch.bfloat16, (*lead, N, K // g))
    assert (weight_shape.dtype, tuple(weight_shape.shape)) == (torch.int64, (*lead, 2))
    assert rel_error(dequantize_int4_packed(packed, scale, weight_shape, group_size=g), w) < 0.11


def test_dequantization_is_exact():
    packed, scale, _ = quantize_int4_packed(normal(8, 64, seed=4), 32)
    exact = unpack_int4(packed, 64).double().view(8, 2, 32) * scale.double()[..., None]
    assert torch.equal(dequantize_int4_packed(packed, scale, group_size=32).double(), exact.view(8, 64))
    # fp16 and fp32 scales (a model kept in those dtypes) decode the same way
    assert torch.equal(dequantize_int4_packed(packed, scale.float(), group_size=32).double(), exact.view(8, 64))


def test_stack_equals_matrices_one_by_one():
    w = normal(3, 10, 64, seed=5, dtype=torch.bfloat16)
    parts = quantize_int4_packed(w, 32)
    for e in range(3):
        for got, want in zip(parts, quantize_int4_packed(w[e], 32)):
            assert torch.equal(got[e], want)
    assert torch.equal(dequantize_int4_packed(*parts, group_size=32)[2],
                       dequantize_int4_packed(*(p[2] for p in parts), group_size=32))


def test_result_does_not_depend_on_row_blocking(monkeypatch):
    w = normal(2, 9, 64, seed=6)
    want = quantize_int4_packed(w, 32)
    monkeypatch.setattr(common, "BLOCK_ELEMENTS", 2 * 64)
    got = quantize_int4_packed(w, 32)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert torch.equal(dequantize_int4_packed(*got, group_size=32), dequantize_int4_packed(*want, group_size=32))


# ---- input checks ----

@pytest.mark.parametrize("w,g,match", [
    (torch.zeros(4, 48), 32, "K = 48 inputs is not a multiple of group_size 32"),
    (torch.zeros(4, 32), 0, "group_size must be a positive int, got 0"),
    (torch.zeros(4, 32), 32.0, "group_size must be a positive int"),
    (torch.zeros(4, 32, dtype=torch.int8), 32, "w must be bfloat16 or float16 or float32 or float64, got int8"),
    (torch.zeros(32), 32, r"w must be a non-empty \[N, K\] or \[E, N, K\] tensor"),
    (torch.tensor([[float("nan")] * 32]), 32, "w contains NaN or infinite values"),
])
def test_quantize_rejects(w, g, match):
    with pytest.raises(ValueError, match=match):
        quantize_int4_packed(w, g)


def test_dequantize_rejects():
    packed, scale, weight_shape = quantize_int4_packed(normal(4, 64), 32)
    with pytest.raises(ValueError, match=r"must have ceil\(K / 8\) = 4 words per row for K = 1 groups x 32"):
        dequantize_int4_packed(packed, scale[:, :1], group_size=32)
    with pytest.raises(ValueError, match="weight_packed must have ceil"):
        dequantize_int4_packed(packed, scale, group_size=16)
    with pytest.raises(ValueError, match="weight_packed must be int32, got int64"):
        dequantize_int4_packed(packed.long(), scale, group_size=32)
    with pytest.raises(ValueError, match="weight_scale must be bfloat16 or float16 or float32, got int32"):
        dequantize_int4_packed(packed, packed[:, :2], group_size=32)
    with pytest.raises(ValueError, match=r"weight_scale shape mismatch: expected \(4, -1\), got \(3, 2\)"):
        dequantize_int4_packed(packed, scale[:3], group_size=32)
    with pytest.raises(ValueError, match=r"weight_shape must hold \(N, K\) = \(4, 64\) for every matrix, got \[4, 6"):
        dequantize_int4_packed(packed, scale, torch.tensor([4, 60]), group_size=32)
    with pytest.raises(ValueError, match="weight_shape must be int64 or int32, got float32"):
        dequantize_int4_packed(packed, scale, weight_shape.float(), group_size=32)


def test_pack_and_unpack_reject():
    with pytest.raises(ValueError, match=r"q must hold 4-bit values in \[-8, 7\]"):
        pack_int4(torch.tensor([[8]], dtype=torch.int8))
    with pytest.raises(ValueError, match="q must be int8, got int32"):
        pack_int4(torch.tensor([[1]], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"q must be a tensor \[..., n\] with n >= 1"):
        pack_int4(torch.zeros(2, 0, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"weight_packed must have ceil\(k / 8\) words per row for k = 17"):
        unpack_int4(torch.zeros(1, 2, dtype=torch.int32), 17)
