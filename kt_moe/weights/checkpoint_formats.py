"""Quantized Hugging Face checkpoints that the FP8 and RAWINT4 methods read in place (no `kt-moe
convert`): which registered weight format and option a checkpoint's config.json names, and which
tensors of each expert matrix make that format's canonical parts (docs/quantization.md).

  block FP8       DeepSeek-V3/R1, Qwen3-*-FP8, MiniMax-M2: quantization_config {"quant_method": "fp8",
                  "weight_block_size": [b, b]}; per matrix `weight` F8_E4M3 [N, K] and
                  `weight_scale_inv` F32 [ceil(N / b), ceil(K / b)]              -> fp8, option b
  FP8 channel     GLM-4.x-FP8, compressed-tensors "float-quantized" with weights {num_bits 8, type
                  float, strategy "channel"}: `weight` F8_E4M3 [N, K] and `weight_scale` [N, 1]
                  (bf16, fp16 or fp32)                                           -> fp8, option 0
  FP8 blocks, c-t compressed-tensors "float-quantized", strategy "block", block_structure [b, b]:
                  `weight` and `weight_scale` [ceil(N / b), ceil(K / b)]        -> fp8, option b
  pack-quantized  Kimi-K2-Thinking / Kimi-K2.5, compressed-tensors "pack-quantized" with weights
                  {num_bits 4, type int, strategy "group", group_size G, symmetric}: `weight_packed`
                  I32 [N, K / 8] and `weight_scale` BF16 [N, K / G] (`weight_shape` ignored)
                                                                                 -> int4_packed, option G

Scales are handed to the engine as fp32 (FP8; exact from bf16 and fp16) or as stored (INT4). A
config.json without quantization_config is a bf16 checkpoint: the method quantizes it online with
the registry's default option.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import torch

from kt_moe import _native

CONFIG_FILE = "config.json"
# method -> the registered format whose option a quantized checkpoint decides
CHECKPOINT_METHODS = {"FP8": "fp8", "AMXFP8_SFT": "fp8", "RAWINT4": "int4_packed"}
# SFT methods whose base is another registered format when the checkpoint ships that one (the
# registry's checkpoint_sft_methods): AMXINT4_KGroup_SFT keeps a pack-quantized INT4 checkpoint as it is
CHECKPOINT_BASE_METHODS = {m: e["name"] for e in _native.weight_formats() for m in e["checkpoint_sft_methods"]}


@dataclass(frozen=True)
class StoredPart:
    """The checkpoint tensor `{module}.{suffix}` that becomes one canonical part."""

    suffix: str
    dtypes: Tuple[str, ...]  # safetensors dtypes accepted
    shapes: Callable[[int, int], Sequence[Tuple[int, ...]]]  # the shapes accepted for W [n, k]
    to_part: Callable[[torch.Tensor], torch.Tensor]  # the part the engine takes


@dataclass(frozen=True)
class CheckpointFormat:
    """What a quantized checkpoint holds: the registered format and option, how messages describe
    it, and the tensors of each matrix in the format's part order."""

    format: str  # registry name: "fp8" or "int4_packed"
    option: int  # FP8: the scale block side (0: a scale per row); int4_packed: inputs per scale
    description: str
    parts: Tuple[StoredPart, ...]


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float().contiguous()


def _row_scales(t: torch.Tensor) -> torch.Tensor:
    return t.float().reshape(-1).contiguous()


def _as_stored(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous()


FP8_WEIGHT = StoredPart("weight", ("F8_E4M3",), lambda n, k: [(n, k)], _as_stored)


def _fp8_blocks(block: int, scale: str, dtypes: Tuple[str, ...], description: str) -> CheckpointFormat:
    grid = StoredPart(scale, dtypes, lambda n, k: [(_ceil(n, block), _ceil(k, block))], _fp32)
    return CheckpointFormat("fp8", block, description, (FP8_WEIGHT, grid))


def _fp8_channel() -> CheckpointFormat:
    scale = StoredPart("weight_scale", ("BF16", "F16", "F32"), lambda n, k: [(n, 1), (n,)], _row_scales)
    return CheckpointFormat("fp8", 0, "FP8 with a scale per output channel (compressed-tensors float-quantized)",
                            (FP8_WEIGHT, scale))


def _int4_packed(group: int) -> CheckpointFormat:
    packed = StoredPart("weight_packed", ("I32",), lambda n, k: [(n, _ceil(k, 8))], _as_stored)
    scale = StoredPart("weight_scale", ("BF16",), lambda n, k: [(n, _ceil(k, group))], _as_stored)
    return CheckpointFormat("int4_packed", group, f"pack-quantized INT4 in groups of {group} (compressed-tensors)",
                            (packed, scale))


def read_quantization_config(weight_path) -> Optional[dict]:
    """config.json's quantization_config in weight_path, or None (no config.json, or none in it)."""
    path = Path(weight_path) / CONFIG_FILE if weight_path else None
    if path is None or not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON config ({exc})") from None
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    if qc is not None and not isinstance(qc, dict):
        raise ValueError(f"{path}: quantization_config must be an object, got {qc!r}")
    return qc


def _square_block(value, key: str, where: str) -> int:
    if (not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, int) for v in value)
            or value[0] != value[1] or value[0] < 1):
        raise ValueError(f"{where}: {key} must be a square block [b, b] with b >= 1, got {value!r}")
    return value[0]


def _weights_args(qc: dict, where: str) -> dict:
    """The weights' quantization arguments of a compressed-tensors config (one config group)."""
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or len(groups) != 1:
        raise ValueError(f"{where}: expected one compressed-tensors config group, got {groups!r}")
    weights = next(iter(groups.values())).get("weights")
    if not isinstance(weights, dict):
        raise ValueError(f"{where}: the config group has no weights arguments")
    return weights


def _described(qc: dict) -> str:
    """quant_method 'x' (format 'y')."""
    fmt = f" (format {qc['format']!r})" if "format" in qc else ""
    return f"quant_method {qc.get('quant_method')!r}{fmt}"


def checkpoint_format(weight_path, method: str) -> Optional[CheckpointFormat]:
    """The quantized format of the checkpoint in weight_path for `method` (FP8, AMXFP8_SFT, RAWINT4;
    AMXINT4_KGroup_SFT reads pack-quantized INT4 too), or None when its config.json has no
    quantization_config (or there is none) or the method reads no quantized checkpoints. ValueError
    when the config names a format the method does not read."""
    if method not in CHECKPOINT_METHODS and method not in CHECKPOINT_BASE_METHODS:
        return None
    qc = read_quantization_config(weight_path)
    if qc is None:
        return None
    where = f"{Path(weight_path) / CONFIG_FILE} quantization_config"
    kind = qc.get("quant_method")
    if CHECKPOINT_METHODS.get(method) == "fp8":
        if kind == "fp8":
            if qc.get("fmt", "e4m3") != "e4m3":
                raise ValueError(f"{where}: fmt {qc.get('fmt')!r} is not supported (FP8 reads e4m3)")
            block = _square_block(qc.get("weight_block_size"), "weight_block_size", where)
            return _fp8_blocks(block, "weight_scale_inv", ("F32", "BF16"),
                               f"block FP8 (weight_block_size [{block}, {block}])")
        if kind == "compressed-tensors" and qc.get("format") == "float-quantized":
            w = _weights_args(qc, where)
            if w.get("num_bits") == 8 and w.get("type") == "float":
                if w.get("strategy") == "channel":
                    return _fp8_channel()
                if w.get("strategy") == "block":
                    block = _square_block(w.get("block_structure"), "block_structure", where)
                    return _fp8_blocks(block, "weight_scale", ("BF16", "F16", "F32"),
                                       f"FP8 in blocks of {block} (compressed-tensors float-quantized)")
        raise ValueError(f"{where} names {_described(qc)}: method {method} reads block FP8 "
                         "(quant_method 'fp8' with weight_block_size) or compressed-tensors float-quantized FP8 "
                         "(strategy 'channel' or 'block')")
    if kind == "compressed-tensors" and qc.get("format") == "pack-quantized":
        w = _weights_args(qc, where)
        if (w.get("num_bits") == 4 and w.get("type") == "int" and w.get("strategy") == "group"
                and w.get("symmetric", True) and isinstance(w.get("group_size"), int)):
            return _int4_packed(w["group_size"])
    raise ValueError(f"{where} names {_described(qc)}: method {method} reads compressed-tensors "
                     "pack-quantized INT4 (num_bits 4, type int, strategy 'group', symmetric)")


def checkpoint_base_format(weight_path, method: str) -> Optional[CheckpointFormat]:
    """For an SFT method that keeps a checkpoint's own format as its base (CHECKPOINT_BASE_METHODS):
    that format when weight_path holds such a checkpoint, else None (the method's own format)."""
    if method not in CHECKPOINT_BASE_METHODS:
        return None
    return checkpoint_format(weight_path, method)


def format_option(weight_path, method: str) -> Optional[int]:
    """The option of the method's registered format (FP8's scale block side, RAWINT4's group size)
    that a wrapper is built with: the checkpoint's in weight_path when it is quantized, else the
    registry's default; None for the methods whose format takes no such option."""
    name = CHECKPOINT_METHODS.get(method)
    if name is None:
        return None
    found = checkpoint_format(weight_path, method)
    return found.option if found is not None else _native.weight_format(name)["group"]


def check_layer_shape(format_name: Optional[str], option: Optional[int], hidden_size: int,
                      moe_intermediate_size: int) -> None:
    """ValueError when the layer's sizes do not fit the format: int4_packed keeps whole groups of
    `option` inputs (compressed-tensors refuses a partial group), so H and I must be multiples of it."""
    if format_name != "int4_packed":
        return
    bad = [f"{name} ({value})" for name, value in (("hidden_size", hidden_size),
                                                   ("moe_intermediate_size", moe_intermediate_size)) if value % option]
    if bad:
        what = "must be multiples" if len(bad) > 1 else "must be a multiple"
        raise ValueError(f"pack-quantized INT4 keeps whole groups of {option} inputs: {' and '.join(bad)} {what} of "
                         f"{option}")
