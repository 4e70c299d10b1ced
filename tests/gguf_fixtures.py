"""Write small GGUF model files for the tests as llama.cpp's convert_hf_to_gguf.py does, with gguf-py's
GGUFWriter: an MoE architecture's metadata, a token embedding and, per MoE layer L, the routed experts
stacked in blk.{L}.ffn_gate_exps.weight [E, I, H], blk.{L}.ffn_up_exps.weight [E, I, H] and
blk.{L}.ffn_down_exps.weight [E, H, I], each in its own ggml type. One file, or a split set
`<name>-0000i-of-0000N.gguf` (GGUFWriter's split, as --split-max-tensors writes it: split.no,
split.count and split.tensors.count in every file, the rest of the metadata in the first). Tests
import it as `from gguf_fixtures import write_gguf_layerset`.

Values. The types gguf-py can quantize (gguf.quants.quantize: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0, and TQ1_0 / TQ2_0 / MXFP4, which kt-moe does not read) hold the quantization of N(0, std^2)
fp32 weights. gguf-py cannot quantize the K-quants and IQ types, so those hold random blocks: every
byte uniform random except the fp16 super-block scales d (and dmin), written here (RANDOM_BLOCKS).
The oracle is gguf.quants.dequantize of the bytes written, whatever the type.

The random blocks, after ggml-common.h (offsets in bytes; quants and sub-block scales random):

    Q2_K    256 weights, 84 B:  scales[16] @0 (4-bit scale | 4-bit min << 4), qs[64] @16 (2-bit),
                                d @80, dmin @82             w = d * scale * q - dmin * min
    Q3_K    256, 110 B: hmask[32] @0, qs[64] @32, scales[12] @96 (16 6-bit scales, minus 32), d @108
                                                            w = d * scale * q, q in -4..3
    Q4_K    256, 144 B: d @0, dmin @2, scales[12] @4 (6-bit scale and min of 8 sub-blocks),
                        qs[128] @16 (4-bit)                 w = d * scale * q - dmin * min
    Q5_K    256, 176 B: d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48 (5-bit q)
    Q6_K    256, 210 B: ql[128] @0, qh[64] @128, scales[16] @192 (int8), d @208
                                                            w = d * scale * q, q in -32..31
    IQ4_NL  32, 18 B:   d @0, qs[16] @2 (4-bit indices into 16 non-linear values -127..113)
    IQ4_XS  256, 136 B: d @0, scales_h @2 (uint16, 2 high bits of 8 6-bit scales), scales_l[4] @4,
                        qs[128] @8                          w = d * (scale - 32) * kvalue[q]
    IQ2_XXS 256, 66 B:  d @0, qs[32] @2 (grid indices, signs, scales; kt-moe does not read it)

Each block's d is std / (the RMS of the type's random blocks dequantized with d = 1, dmin = 0) times
a uniform factor in [0.5, 1.5], so the weights have an RMS near std (0.02 by default), and dmin = d
* mean(sub-block values at d = 1) / mean(min terms at dmin = 1), so their mean is near 0. Weights
that small put d of Q5_K, Q6_K and IQ4_XS in fp16's subnormal range (~2e-5), as in llama.cpp's own
files of such weights; every d is finite and positive.
"""

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize

MATRICES = ("gate", "up", "down")
# ggml type -> (offset of the fp16 d, offset of the fp16 dmin or None) in its blocks, for the types
# written as random blocks
RANDOM_BLOCKS: Dict[str, Tuple[int, Optional[int]]] = {
    "Q2_K": (80, 82), "Q3_K": (108, None), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208, None),
    "IQ4_NL": (0, None), "IQ4_XS": (0, None), "IQ2_XXS": (0, None),
}
QUANTIZABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "TQ1_0", "TQ2_0", "MXFP4")
VOCAB = 8  # rows of token_embd.weight


@dataclass
class GGUFLayerset:
    """What write_gguf_layerset wrote: the files (the first first) and, per layer and matrix, the
    stored bytes uint8 [E, rows, row_bytes], their dequantization fp32 [E, rows, cols] (the oracle) and
    the fp32 weights they quantize (None for random blocks)."""

    files: Tuple[Path, ...]
    raw: Dict[int, Dict[str, torch.Tensor]]
    weights: Dict[int, Dict[str, torch.Tensor]]
    source: Dict[int, Dict[str, Optional[torch.Tensor]]]


def _set_fp16(blocks: np.ndarray, offset: int, values: np.ndarray) -> None:
    """Write `values` (one per block) as little-endian fp16 at byte `offset` of each block."""
    blocks[:, offset:offset + 2] = values.astype("<f2").view(np.uint8).reshape(-1, 2)


@functools.lru_cache(maxsize=None)
def _unit_statistics(type_name: str) -> Tuple[float, float]:
    """(RMS of the type's random blocks dequantized with d = 1 and dmin = 0, the ratio dmin / d that
    makes their mean 0; 0 without dmin), measured on 256 blocks."""
    qtype = GGMLQuantizationType[type_name]
    d_at, dmin_at = RANDOM_BLOCKS[type_name]
    blocks = np.random.default_rng(1234).integers(0, 256, (256, GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    ones, zeros = np.ones(len(blocks)), np.zeros(len(blocks))
    _set_fp16(blocks, d_at, ones)
    if dmin_at is None:
        return float(np.sqrt(np.mean(dequantize(blocks, qtype) ** 2))), 0.0
    _set_fp16(blocks, dmin_at, zeros)
    scaled = dequantize(blocks.copy(), qtype)
    _set_fp16(blocks, d_at, zeros)
    _set_fp16(blocks, dmin_at, ones)
    mins = dequantize(blocks, qtype)  # -dmin * min
    return float(np.sqrt(np.mean(scaled ** 2))), float(scaled.mean() / -mins.mean())


def random_blocks(type_name: str, shape: Tuple[int, ...], rng: np.random.Generator, std: float = 0.02) -> np.ndarray:
    """Random valid blocks of `type_name` (RANDOM_BLOCKS) for weights of logical `shape` (the last dim a
    multiple of the block size): uint8 [*shape[:-1], shape[-1] / block_size * block_bytes]."""
    qtype = GGMLQuantizationType[type_name]
    block, size = GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        raise ValueError(f"{type_name} rows must be whole blocks of {block} weights, got {shape[-1]}")
    n = math.prod(shape) // block
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    rms, dmin_ratio = _unit_statistics(type_name)
    d = (std / rms * rng.uniform(0.5, 1.5, n)).astype(np.float16)
    d_at, dmin_at = RANDOM_BLOCKS[type_name]
    _set_fp16(blocks, d_at, d)
    if dmin_at is not None:
        _set_fp16(blocks, dmin_at, d.astype(np.float32) * dmin_ratio)
    return blocks.reshape(*shape[:-1], shape[-1] // block * size)


def expert_tensor(type_name: str, shape: Tuple[int, int, int], rng: np.random.Generator, std: float = 0.02
                  ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(the array to store for weights of logical `shape` in `type_name`, the fp32 weights it
    quantizes or None for random blocks). Stored arrays: F32 / F16 as such, the others uint8 blocks."""
    if type_name in RANDOM_BLOCKS:
        return random_blocks(type_name, shape, rng, std), None
    if type_name not in QUANTIZABLE:
        raise ValueError(f"gguf_fixtures writes {', '.join(QUANTIZABLE + tuple(RANDOM_BLOCKS))}, not {type_name}")
    source = (rng.standard_normal(shape) * std).astype(np.float32)
    return quantize(source, GGMLQuantizationType[type_name]), source


def _as_bytes(stored: np.ndarray) -> torch.Tensor:
    """The stored array's bytes, uint8 [..., row_bytes]."""
    return torch.from_numpy(np.ascontiguousarray(stored).view(np.uint8).copy())


def _add_metadata(writer: GGUFWriter, values: Mapping[str, object]) -> None:
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            raise TypeError(f"metadata {key}: expected a string or an integer, got {value!r}")


def write_gguf_layerset(path, arch: str = "qwen3moe",
                        layers: Optional[Mapping[int, Tuple[str, str, str]]] = None,
                        E: int = 4, H: int = 256, I: int = 256, k: int = 2, seed: int = 0,
                        split: Optional[int] = None, std: float = 0.02,
                        metadata: Optional[Mapping[str, object]] = None, drop=()) -> GGUFLayerset:
    """Write a GGUF model at `path` (a .gguf file name; with split=N the files
    `<stem>-0000i-of-0000N.gguf` beside it, consecutive tensors in each): metadata general.architecture
    `arch`, {arch}.block_count (max layer + 1), expert_count E, expert_used_count k, embedding_length
    H and expert_feed_forward_length I, then the `metadata` entries (key -> int, written as uint32, or
    str; None leaves the key out); token_embd.weight F32 [8, H]; per layer L of `layers` ({L: (gate
    type, up type, down type)}, default layer 0 all Q8_0) the three expert tensors in those ggml types,
    less the tensor names in `drop`. H (gate and up rows) and I (down rows) must be whole blocks of the
    types; quantized weights and random blocks have an RMS near `std`. Returns what was written
    (GGUFLayerset)."""
    path, rng = Path(path), np.random.default_rng(seed)
    layers = {0: ("Q8_0", "Q8_0", "Q8_0")} if layers is None else layers
    tensors = {"token_embd.weight": (rng.standard_normal((VOCAB, H)).astype(np.float32), "F32")}
    raw, weights, source = {}, {}, {}
    for layer, types in layers.items():
        raw[layer], weights[layer], source[layer] = {}, {}, {}
        for matrix, type_name, shape in zip(MATRICES, types, ((E, I, H), (E, I, H), (E, H, I))):
            stored, src = expert_tensor(type_name, shape, rng, std)
            tensors[f"blk.{layer}.ffn_{matrix}_exps.weight"] = (stored, type_name)
            raw[layer][matrix] = _as_bytes(stored)
            weights[layer][matrix] = torch.from_numpy(
                np.array(dequantize(stored, GGMLQuantizationType[type_name]), dtype=np.float32))
            source[layer][matrix] = None if src is None else torch.from_numpy(src)
    for name in drop:
        del tensors[name]
    per_file = 0 if split is None else math.ceil(len(tensors) / split)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, arch, split_max_tensors=per_file)
    keys = {f"{arch}.block_count": max(layers, default=0) + 1, f"{arch}.expert_count": E,
            f"{arch}.expert_used_count": k, f"{arch}.embedding_length": H,
            f"{arch}.expert_feed_forward_length": I, "general.name": "kt-moe test model"}
    _add_metadata(writer, {**keys, **(metadata or {})})
    for name, (stored, type_name) in tensors.items():
        writer.add_tensor(name, stored, raw_dtype=GGMLQuantizationType[type_name])
    files = tuple(writer.format_shard_names(path))
    if split is not None and len(files) != split:
        raise ValueError(f"{len(tensors)} tensors do not split into {split} files of at most {per_file}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFLayerset(files, raw, weights, source)
