"""Shared pieces of the loading tests (tests/test_load_*.py): a wrapper of every built method
(inference and SFT) at the TINY shape with one forward call for both modes, layers of random weights
told apart by their outputs, and the files they load from: a Hugging Face checkpoint of a layer, its
`kt-moe convert` file, and in-place damage to one tensor of such a file."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Tuple

import torch

import inference_helpers
import sft_helpers
from hf_fixtures import write_hf_checkpoint
from kt_moe.reference import random_experts, random_lora
from kt_moe.weights.convert import convert_checkpoint

INFERENCE_METHODS = ["BF16", "AMXINT8", "AMXINT4"]
SFT_METHODS = ["AMXBF16_SFT", "AMXINT8_SFT", "AMXINT4_SFT", "AMXINT4_KGroup_SFT"]
METHODS = INFERENCE_METHODS + SFT_METHODS
QUANTIZED = ["AMXINT8", "AMXINT4", "AMXINT8_SFT", "AMXINT4_SFT", "AMXINT4_KGroup_SFT"]
SHAPE = sft_helpers.TINY  # 6 experts, H 40, I 24 (inference_helpers.TINY has the same sizes)
E, H, I, K, LAYER = SHAPE.num_experts, SHAPE.hidden, SHAPE.intermediate, 2, 1
MAP = torch.tensor([2, 0, 5, 1, 3, 4])  # physical slot -> logical expert

Weights = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # gate [E, I, H], up [E, I, H], down [E, H, I]


def make(method: str, weight_path: str = ""):
    """A wrapper of `method` for layer LAYER, no weights loaded; SFT wrappers get their LoRA tensors."""
    if method in INFERENCE_METHODS:
        return inference_helpers.make_wrapper(SHAPE, top_k=K, layer_idx=LAYER, weight_path=weight_path,
                                              method=method)
    wrapper = sft_helpers.make_wrapper(SHAPE, top_k=K, layer_idx=LAYER, weight_path=weight_path, method=method)
    wrapper.init_lora_weights(*random_lora(E, H, I, SHAPE.rank, seed=3))
    return wrapper


def batch(q: int = 12, seed: int = 0):
    """x bf16 [q, H], ids [q, K] covering every slot, weights fp32 [q, K]."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(q)])
    ids[:E, 0] = torch.arange(E)
    return torch.randn(q, H, generator=gen).bfloat16(), ids, torch.rand(q, K, generator=gen)


def forward(wrapper, inputs) -> torch.Tensor:
    """The wrapper's output for inputs (x, ids, weights): forward, or forward_sft without saving."""
    if wrapper.config.mode == "inference":
        return wrapper.forward(*inputs)
    return wrapper.forward_sft(*inputs, save_for_backward=False)


def weights(seed: int) -> Weights:
    return random_experts(E, H, I, seed=seed)


def load(wrapper, layer: Weights) -> None:
    wrapper.load_weights_from_tensors(*layer, MAP)


def write_checkpoint(directory: Path, layer: Weights, shards: int = 1, drop=()) -> Path:
    """Layer LAYER's experts as a Hugging Face checkpoint (bf16)."""
    return write_hf_checkpoint(directory, {LAYER: layer}, shards=shards, drop=drop)


def write_converted(directory: Path, layer: Weights, method: str) -> Path:
    """The `kt-moe convert` file of layer LAYER for `method`, in `directory`."""
    hf = write_checkpoint(directory / "hf", layer)
    convert_checkpoint(hf, directory / "converted", method)
    return directory / "converted"


def tensor_bytes(path: Path, name: str) -> Tuple[int, int]:
    """[begin, end) of tensor `name`'s data in the safetensors file `path` (from its header)."""
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
    begin, end = header[name]["data_offsets"]
    return 8 + header_len + begin, 8 + header_len + end


def overwrite(path: Path, name: str, data: bytes, at: int = 0) -> None:
    """Write `data` over tensor `name`'s bytes [at, at + len(data)) in place."""
    begin, end = tensor_bytes(path, name)
    assert begin + at + len(data) <= end
    raw = bytearray(path.read_bytes())
    raw[begin + at:begin + at + len(data)] = data
    path.write_bytes(bytes(raw))


def flip_byte(path: Path, name: str, at: int = 0, bits: int = 0x01) -> None:
    """Flip `bits` of byte `at` of tensor `name` in place."""
    begin, _ = tensor_bytes(path, name)
    overwrite(path, name, bytes([path.read_bytes()[begin + at] ^ bits]), at)


def weight_part(method: str) -> str:
    """The name of the quantized values' part in `method`'s files: q (int8) or codes (int4)."""
    return "q" if "INT8" in method else "codes"
