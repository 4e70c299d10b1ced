"""kt_moe.quant.gguf_kquants: the Q4_K and Q6_K blocks it writes are read back by gguf's own
dequantizer (the layout is llama.cpp's) with the errors its round-to-nearest scales give."""

import gguf
import numpy as np
import pytest

from kt_moe.quant.gguf_kquants import quantize_q4_k, quantize_q6_k

CASES = [(quantize_q4_k, gguf.GGMLQuantizationType.Q4_K, 0.1), (quantize_q6_k, gguf.GGMLQuantizationType.Q6_K, 0.03)]


def relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("quantize,ggml_type,bound", CASES, ids=["Q4_K", "Q6_K"])
def test_gguf_reads_the_blocks_back(quantize, ggml_type, bound):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((3, 40, 512)) * 0.02).astype(np.float32)
    w[0, 0, :256] *= 100  # a super-block of large weights next to ordinary ones
    blocks = quantize(w)
    block, size = gguf.GGML_QUANT_SIZES[ggml_type]
    assert blocks.dtype == np.uint8 and blocks.shape == (3, 40, 512 // block * size)
    assert relative(gguf.quants.dequantize(blocks, ggml_type), w) <= bound


@pytest.mark.parametrize("quantize,ggml_type,bound", CASES, ids=["Q4_K", "Q6_K"])
def test_zero_and_constant_rows(quantize, ggml_type, bound):
    w = np.zeros((2, 256), np.float32)
    w[1] = -0.5
    back = gguf.quants.dequantize(quantize(w), ggml_type)
    assert np.array_equal(back[0], w[0]) and np.allclose(back[1], w[1], rtol=0.02)


@pytest.mark.parametrize("quantize", [quantize_q4_k, quantize_q6_k])
def test_rows_must_be_whole_super_blocks(quantize):
    with pytest.raises(ValueError, match="K-quant rows must be whole super-blocks of 256 weights, got 320"):
        quantize(np.zeros((1, 320), np.float32))
