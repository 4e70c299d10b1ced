"""The GGUF formats' kernels at every level the host runs, through the test hooks
kt_moe._native.dequant_bf16_test(format="gguf_<type>") and dequant_product_test: the bf16
dequantizers of every type give the generic level's bits (column ranges that start and end inside
blocks, slices whose column 0 lies inside a block); the few-rows and many-rows products of Q8_0,
Q4_K, Q5_K and Q6_K match an emulation of what they compute (the activations quantized to int8 as
ggml does, per 32 or 256 columns, times gguf's own dequantization of the blocks, in float64) within
relative L2 1e-5: the integer sums are exact, only the fp32 scaling and summation differ. Row counts
that are not multiples of the micro-kernels' (13 weight rows, a slice from row 3) and activation
rows that end inside a vector and a 16-row group (1..4, 7, 9, 17, 40)."""

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as GGML

import kt_moe
from gguf_fixtures import expert_tensor
from kt_moe import _native

LEVELS = kt_moe.cpu_info()["selectable"]
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ4_NL", "IQ4_XS"]
PRODUCT_TYPES = ["Q8_0", "Q4_K", "Q5_K", "Q6_K"]
ROWS = 13


def stored(type_name, cols, seed):
    """(uint8 blocks [ROWS, row bytes], gguf's dequantization fp32 [ROWS, cols]) of random weights."""
    array, _ = expert_tensor(type_name, (1, ROWS, cols), np.random.default_rng(seed))
    blocks = np.ascontiguousarray(array[0]).view(np.uint8).reshape(ROWS, -1)
    return torch.from_numpy(blocks.copy()), torch.from_numpy(gguf.quants.dequantize(blocks, GGML[type_name])).float()


def dequantized(level, type_name, blocks, col0, cols, r0, r1, c0, c1):
    out = torch.full((r1 - r0, c1 - c0), 7.0, dtype=torch.bfloat16)
    _native.dequant_bf16_test(level, blocks, torch.zeros(1), None, 0, col0, cols, r0, r1, c0, c1, out,
                              format="gguf_" + type_name.lower())
    return out.view(torch.int16)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantizers_match_the_generic_level(level, type_name):
    block = gguf.GGML_QUANT_SIZES[GGML[type_name]][0]
    cols = 2 * max(block, 64)
    blocks, weights = stored(type_name, cols, seed=len(type_name))
    col0 = block // 2 if block > 1 else 0  # a slice starting inside a block
    for args in [(0, cols, 0, ROWS, 0, cols), (col0, cols - col0, 1, 12, 3, cols - col0 - 5), (0, cols, 2, 3, 17, 18)]:
        got = dequantized(level, type_name, blocks, *args)
        assert torch.equal(got, dequantized("generic", type_name, blocks, *args))
    whole = dequantized(level, type_name, blocks, 0, cols, 0, ROWS, 0, cols).view(torch.bfloat16).float()
    assert torch.equal(whole, weights.to(torch.bfloat16).float())


def emulated_product(a, weights, block):
    """a [m, cols] bf16 quantized to int8 per `block` columns as ggml does (q8_activations.hpp), times
    weights^T, in float64."""
    m, cols = a.shape
    padded = torch.zeros(m, -(-cols // 256) * 256)
    padded[:, :cols] = a.float()
    x = padded.view(m, -1, block)
    amax = x.abs().amax(-1, keepdim=True)
    factor = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))
    q = torch.round(x * factor)  # fp32 product rounded to nearest even, as vcvtps2dq
    d = amax / torch.tensor(127.0)
    dequantized_a = (q.double() * d.double()).view(m, -1)[:, :cols]
    return dequantized_a @ weights.double().T


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("type_name", PRODUCT_TYPES)
@pytest.mark.parametrize("gemm,m", [(False, 1), (False, 2), (False, 3), (False, 4), (True, 1), (True, 7), (True, 9),
                                    (True, 17), (True, 40)])
def test_products_match_the_int8_emulation(level, type_name, gemm, m):
    cols = 224 if type_name == "Q8_0" else 512  # Q8_0: an odd count of blocks, rows padded to 256
    blocks, weights = stored(type_name, cols, seed=m)
    a = (torch.randn(m, cols, generator=torch.Generator().manual_seed(m)) * torch.linspace(0.1, 3, cols)).to(torch.bfloat16)
    n0, n1 = 3, ROWS
    c = torch.full((m, n1 - n0), 7.0)
    fmt = "gguf_" + type_name.lower()
    if not _native.dequant_product_test(level, fmt, blocks, 0, cols, n0, n1, a, c, gemm):
        assert level == "generic" or level == "amx_emulated"  # no product: the engine dequantizes
        return
    expected = emulated_product(a, weights[n0:n1], 32 if type_name == "Q8_0" else 256)
    assert float((c.double() - expected).norm() / expected.norm()) <= 1e-5
    # a slice whose column 0 lies inside a block is left to the dequantizing path
    assert not _native.dequant_product_test(level, fmt, blocks, 16, cols - 16, n0, n1, a[:, 16:].contiguous(), c, gemm)
