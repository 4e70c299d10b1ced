"""Quantizers for the GGUF K-quant types gguf-py cannot write: Q4_K and Q6_K blocks, as llama.cpp
lays them out (native/formats/gguf/gguf_blocks.hpp has the layouts), so that LLAMAFILE's
load_weights_from_tensors (gguf_type) and the bench can make Q4_K_M-style layers from bf16 weights.
They pick scales by the row blocks' extremes (round to nearest), not llama.cpp's error-minimizing
search, so their error is somewhat larger than llama.cpp's for the same type (Q4_K about 0.06, Q6_K
about 0.015 relative L2 on Gaussian weights); the blocks are valid for any reader (gguf.quants.dequantize
reads them back; tests/test_gguf_kquants.py).

quantize_q4_k / quantize_q6_k: W float [..., K] (K a multiple of 256) -> uint8 [..., K / 256 * bytes].
"""

from __future__ import annotations

import numpy as np

QK_K = 256


def _fp16(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(np.broadcast_shapes(num.shape, den.shape), np.float32), where=den != 0)


def _super_blocks(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float32)
    if w.shape[-1] % QK_K:
        raise ValueError(f"K-quant rows must be whole super-blocks of {QK_K} weights, got {w.shape[-1]}")
    return w.reshape(-1, QK_K)


def quantize_q4_k(weights: np.ndarray) -> np.ndarray:
    """Q4_K (144 bytes per 256 weights): per sub-block of 32, w = d sc q - dmin m with q in [0, 15] and
    6-bit sc, m of the super-block's fp16 d and dmin."""
    shape = np.shape(weights)
    x = _super_blocks(weights).reshape(-1, 8, 32)                       # [B, sub-block, weight]
    mins = np.maximum(0.0, -x.min(axis=-1))                              # [B, 8] the offsets, >= 0
    scales = (x.max(axis=-1) + mins) / 15.0
    d, dmin = _fp16(scales.max(axis=-1) / 63.0), _fp16(mins.max(axis=-1) / 63.0)  # [B]
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scales, d32)), 0, 63).astype(np.uint8)   # [B, 8]
    m = np.clip(np.rint(_safe_div(mins, dmin32)), 0, 63).astype(np.uint8)
    step = (d32 * sc)[..., None]
    q = np.clip(np.rint(_safe_div(x + (dmin32 * m)[..., None], step)), 0, 15).astype(np.uint8)  # [B, 8, 32]
    packed = np.empty((x.shape[0], 12), np.uint8)
    packed[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)           # pair c: sub-block 2c low, 2c + 1 high
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, qs], axis=1)
    return blocks.reshape(*shape[:-1], -1)


def quantize_q6_k(weights: np.ndarray) -> np.ndarray:
    """Q6_K (210 bytes per 256 weights): per sub-block of 16, w = d sc (u - 32) with u in [0, 63] and
    an int8 sc of the super-block's fp16 d."""
    shape = np.shape(weights)
    x = _super_blocks(weights).reshape(-1, 16, 16)                      # [B, sub-block, weight]
    scales = np.abs(x).max(axis=-1) / 31.0                               # [B, 16]
    d = _fp16(scales.max(axis=-1) / 127.0)
    d32 = d.astype(np.float32)[:, None]
    sc = np.clip(np.rint(_safe_div(scales, d32)), -128, 127).astype(np.int8)
    u = (np.clip(np.rint(_safe_div(x, (d32 * sc)[..., None])), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)
    # weight j = 128 h + 32 s + l: ql[64 h + 32 (s % 2) + l] nibble s // 2, qh[32 h + l] bits 2 s
    low, high = u & 0xF, u >> 4
    ql = (low[:, :, 0:2] | (low[:, :, 2:4] << 4)).reshape(-1, 128)
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(-1, 64)
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)
    return blocks.reshape(*shape[:-1], -1)
