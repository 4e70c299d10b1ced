"""kt_moe.quant.fp8: the block FP8 format (DeepSeek-V3 weight / weight_scale_inv) and the per-channel
FP8 format (compressed-tensors weight / weight_scale): round trips, the exact formulas against
straightforward per-block and per-row references, fp8 bit patterns, partial blocks, any block size,
zero and tiny blocks, stacks, row blocking, part specs and input checks. Agreement with transformers
and compressed-tensors themselves is in test_quant_formats_checkpoints.py."""

import pytest
import torch

from kt_moe.quant import common
from kt_moe.quant.fp8 import (FP8, dequantize_fp8_block, dequantize_fp8_channel, fp8_block_grid,
                              quantize_fp8_block, quantize_fp8_channel)


def normal(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def rel_error(approx, exact):
    return float((approx - exact.float()).norm() / exact.float().norm())


def bits(t):
    return t.view(torch.uint8)


def block_reference(w, b):
    """quantize_fp8_block spelled out one block at a time in fp32: multiplier 448 * (1 / amax) (1 for
    a zero block), scale_inv its reciprocal, weight fp8(clamp(w * multiplier))."""
    N, K = w.shape
    nb, kb = -(-N // b), -(-K // b)
    weight, scale_inv = torch.empty(N, K, dtype=FP8), torch.empty(nb, kb)
    for i in range(nb):
        for j in range(kb):
            x = w[i * b:(i + 1) * b, j * b:(j + 1) * b].float()
            amax = x.abs().max()
            m = (torch.tensor(1.0) / amax) * torch.tensor(448.0) if amax > 0 else torch.tensor(1.0)
            scale_inv[i, j] = torch.tensor(1.0) / m
            weight[i * b:(i + 1) * b, j * b:(j + 1) * b] = (x * m).clamp(-448, 448).to(FP8)
    return weight, scale_inv


# ---- fp8_block ----

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape,block", [((256, 384), 128), ((130, 70), 64), ((3, 40, 56), 16)])
def test_block_round_trip(dtype, shape, block):
    w = normal(*shape, dtype=dtype)
    weight, scale_inv = quantize_fp8_block(w, block)
    nb, kb = fp8_block_grid(*shape[-2:], block)
    assert (weight.dtype, tuple(weight.shape)) == (FP8, shape)
    assert (scale_inv.dtype, tuple(scale_inv.shape)) == (torch.float32, (*shape[:-2], nb, kb))
    assert rel_error(dequantize_fp8_block(weight, scale_inv, block), w) < 0.03


@pytest.mark.parametrize("shape,block", [((5, 7), 3), ((9, 4), 4), ((4, 9), 4), ((6, 6), 1), ((3, 5), 8)])
def test_block_format_per_block_partial_blocks(shape, block):
    w = normal(*shape, seed=1) * torch.logspace(-2, 2, shape[1])
    weight, scale_inv = quantize_fp8_block(w, block)
    ref_weight, ref_scale_inv = block_reference(w, block)
    assert torch.equal(bits(weight), bits(ref_weight))
    assert torch.equal(scale_inv, ref_scale_inv)
    expanded = scale_inv.repeat_interleave(block, 0).repeat_interleave(block, 1)[:shape[0], :shape[1]]
    assert torch.equal(dequantize_fp8_block(weight, scale_inv, block), weight.float() * expanded)


def test_block_fp8_bits_round_to_nearest_even():
    """A block whose amax is 448 keeps its values (multiplier 1): 17 and 19 lie halfway between
    neighbours 2 apart and round to the even mantissa, 16 (0x58) and 20 (0x5A); +-448 is 0x7E / 0xFE."""
    w = torch.tensor([[17.0, 19.0, 448.0, -448.0]])
    weight, scale_inv = quantize_fp8_block(w, 4)
    assert bits(weight).tolist() == [[0x58, 0x5A, 0x7E, 0xFE]]
    assert scale_inv.tolist() == [[1.0]]


def test_block_one_element_blocks_are_nearly_exact():
    w = normal(8, 12, seed=3)
    weight, scale_inv = quantize_fp8_block(w, 1)
    assert bits(weight.abs()).unique().tolist() == [0x7E]  # every value scaled to +-448
    assert bool(((dequantize_fp8_block(weight, scale_inv, 1) - w).abs() <= 2.4e-7 * w.abs()).all())  # fp32 rounding


def test_block_zero_and_tiny_blocks_store_scale_one_and_zeros():
    """transformers' rule for an all-zero block (multiplier 1), extended to blocks whose 448 / amax
    overflows fp32 (transformers would store NaN there)."""
    w = normal(4, 8, seed=4)
    w[:2, :4] = 0
    w[2:, 4:] = 1e-38
    weight, scale_inv = quantize_fp8_block(w, 2)
    assert scale_inv[0, :2].tolist() == [1, 1] and scale_inv[1, 2:].tolist() == [1, 1]  # blocks of 2 x 2
    assert not bits(weight[:2, :4]).any() and not bits(weight[2:, 4:]).any()
    out = dequantize_fp8_block(weight, scale_inv, 2)
    assert torch.isfinite(out).all() and not out[:2, :4].any() and not out[2:, 4:].any()


def test_block_stack_equals_matrices_one_by_one():
    w = normal(3, 50, 70, seed=5, dtype=torch.bfloat16)
    weight, scale_inv = quantize_fp8_block(w, 32)
    for e in range(3):
        we, se = quantize_fp8_block(w[e], 32)
        assert torch.equal(bits(weight[e]), bits(we)) and torch.equal(scale_inv[e], se)
    assert torch.equal(dequantize_fp8_block(weight, scale_inv, 32)[1],
                       dequantize_fp8_block(weight[1], scale_inv[1], 32))


def test_block_result_does_not_depend_on_row_blocking(monkeypatch):
    """Blocks of rows split scale blocks and cross matrices; the amax of a block is gathered across them."""
    w = normal(2, 37, 45, seed=6)
    want = quantize_fp8_block(w, 8)
    monkeypatch.setattr(common, "BLOCK_ELEMENTS", 3 * 45)  # three rows at a time
    got = quantize_fp8_block(w, 8)
    assert torch.equal(bits(got[0]), bits(want[0])) and torch.equal(got[1], want[1])
    assert torch.equal(dequantize_fp8_block(*got, 8), dequantize_fp8_block(*want, 8))


def test_block_dequantize_takes_bf16_scales():
    """compressed-tensors' block strategy stores the same multipliers as bf16 `weight_scale`."""
    weight, scale_inv = quantize_fp8_block(normal(20, 30, seed=7), 16)
    scale = scale_inv.to(torch.bfloat16)
    expanded = scale.float().repeat_interleave(16, 0).repeat_interleave(16, 1)[:20, :30]
    assert torch.equal(dequantize_fp8_block(weight, scale, 16), weight.float() * expanded)


@pytest.mark.parametrize("w,block,match", [
    ("not a tensor", 4, "w must be a torch.Tensor"),
    (torch.zeros(8, dtype=torch.float32), 4, r"w must be a non-empty \[N, K\] or \[E, N, K\] tensor"),
    (torch.zeros(0, 8), 4, "w must be a non-empty"),
    (torch.zeros(4, 8, dtype=torch.int8), 4, "w must be bfloat16 or float16 or float32 or float64"),
    (torch.tensor([[1.0, float("nan")]]), 4, "w contains NaN or infinite values"),
    (torch.tensor([[1.0, float("inf")]]), 4, "w contains NaN or infinite values"),
    (torch.zeros(4, 8), 0, "block must be a positive int"),
    (torch.zeros(4, 8), -2, "block must be a positive int"),
    (torch.zeros(4, 8), 2.0, "block must be a positive int"),
    (torch.zeros(4, 8), True, "block must be a positive int"),
])
def test_block_quantize_rejects(w, block, match):
    with pytest.raises(ValueError, match=match):
        quantize_fp8_block(w, block)


def test_block_dequantize_rejects():
    weight, scale_inv = quantize_fp8_block(normal(8, 12), 4)
    with pytest.raises(ValueError, match="weight must be float8_e4m3fn, got float32"):
        dequantize_fp8_block(weight.float(), scale_inv, 4)
    with pytest.raises(ValueError, match=r"weight_scale_inv shape mismatch: expected \(4, 6\), got \(2, 3\)"):
        dequantize_fp8_block(weight, scale_inv, 2)
    with pytest.raises(ValueError, match="weight_scale_inv must be float32 or bfloat16, got float16"):
        dequantize_fp8_block(weight, scale_inv.half(), 4)
    with pytest.raises(ValueError, match="block must be a positive int"):
        dequantize_fp8_block(weight, scale_inv, 0)


# ---- fp8_channel ----

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(64, 256), (33, 100), (3, 40, 96)])
def test_channel_round_trip(dtype, shape):
    w = normal(*shape, dtype=dtype)
    weight, scale = quantize_fp8_channel(w)
    assert (weight.dtype, tuple(weight.shape)) == (FP8, shape)
    assert (scale.dtype, tuple(scale.shape)) == (torch.bfloat16, (*shape[:-1], 1))
    assert rel_error(dequantize_fp8_channel(weight, scale), w) < 0.03


def test_channel_format_is_the_bf16_arithmetic_of_compressed_tensors():
    """scale = bf16(amax / 448); weight = fp8(clamp(bf16(x / scale))), x the bf16 weight: the ops the
    library runs on a bf16 weight, here in bf16 tensors as it does."""
    w = normal(16, 64, seed=8, dtype=torch.bfloat16) * torch.logspace(-3, 3, 16, dtype=torch.bfloat16)[:, None]
    weight, scale = quantize_fp8_channel(w)
    want_scale = w.abs().amax(dim=1, keepdim=True) / torch.tensor(448.0, dtype=torch.bfloat16)
    assert torch.equal(scale, want_scale)
    assert torch.equal(bits(weight), bits((w / scale).clamp(-448, 448).to(FP8)))
    assert torch.equal(quantize_fp8_channel(w.double())[1], scale)  # other dtypes are rounded to bf16 first


def test_channel_dequantization_is_exact_and_takes_other_scale_layouts():
    weight, scale = quantize_fp8_channel(normal(2, 8, 32, seed=9))
    exact = weight.double() * scale.double()
    assert torch.equal(dequantize_fp8_channel(weight, scale).double(), exact)
    assert torch.equal(dequantize_fp8_channel(weight, scale[..., 0]), dequantize_fp8_channel(weight, scale))
    assert torch.equal(dequantize_fp8_channel(weight, scale.float()), dequantize_fp8_channel(weight, scale))


def test_channel_zero_row_stores_bf16_eps_and_zeros():
    w = normal(3, 16, seed=10)
    w[1] = 0
    weight, scale = quantize_fp8_channel(w)
    assert float(scale[1, 0]) == 2.0 ** -7 and not bits(weight[1]).any()
    assert not dequantize_fp8_channel(weight, scale)[1].any()


def test_channel_stack_equals_matrices_one_by_one():
    w = normal(3, 20, 24, seed=11)
    weight, scale = quantize_fp8_channel(w)
    for e in range(3):
        we, se = quantize_fp8_channel(w[e])
        assert torch.equal(bits(weight[e]), bits(we)) and torch.equal(scale[e], se)


def test_channel_rejects_bad_input():
    with pytest.raises(ValueError, match="w must be bfloat16 or float16 or float32 or float64, got int32"):
        quantize_fp8_channel(torch.zeros(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="w contains NaN or infinite values"):
        quantize_fp8_channel(torch.tensor([[0.0, float("-inf")]]))
    weight, scale = quantize_fp8_channel(normal(6, 8))
    with pytest.raises(ValueError, match=r"weight_scale shape mismatch: expected \(6, 1\), got \(6, 2\)"):
        dequantize_fp8_channel(weight, torch.ones(6, 2))
    with pytest.raises(ValueError, match="weight_scale must be bfloat16 or float16 or float32, got int64"):
        dequantize_fp8_channel(weight, torch.ones(6, dtype=torch.int64))
    with pytest.raises(ValueError, match="weight must be float8_e4m3fn, got bfloat16"):
        dequantize_fp8_channel(weight.bfloat16(), scale)
