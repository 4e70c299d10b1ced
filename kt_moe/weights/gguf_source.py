"""LLAMAFILE's experts: the registered format each matrix is kept in and the experts as that format's
one part, `blocks` (uint8 [rows, row bytes], a GGUF tensor's rows as the file stores them).

The matrices' GGUF types come from the GGUF model in weight_path when it holds one (each matrix its
own type: a Q4_K_M file's Q4_K gate and up and Q6_K down), else from the config's gguf_type (Q8_0 by
default). Each type is the registry's format `gguf_<type>` (native/formats/gguf/), one for every type
kt_moe.weights.gguf_checkpoint reads (a file of another type is refused there, naming the tensor and
the type).

From a file, an expert's blocks are views of the file's memory map (kt_moe.weights.gguf_checkpoint),
copied once into the engine; from tensors, each expert is quantized with gguf's own quantizer
(gguf.quants.quantize; Q4_K and Q6_K, which it cannot write, by kt_moe.quant.gguf_kquants) when its
turn comes. Either way every block's fp16 scales are checked for
NaN and infinity first (SCALE_FIELDS)."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from kt_moe.quant.gguf_kquants import quantize_q4_k, quantize_q6_k

from kt_moe import _native
from kt_moe.config import KTMoEConfig
from kt_moe.tensor_checks import WEIGHT_DTYPES, check_expert_map, check_finite, check_tensor
from kt_moe.weights.expert_source import PartsExpert
from kt_moe.weights.gguf_checkpoint import GGUF_TYPES, MATRICES, GGUFExperts, find_gguf_files

FORMAT_PREFIX = "gguf_"
# GGUF type name -> the registered format that keeps it
NATIVE_FORMATS = {entry["name"][len(FORMAT_PREFIX):].upper(): entry["name"]
                  for entry in _native.weight_formats() if entry["name"].startswith(FORMAT_PREFIX)}
DEFAULT_TYPE = "Q8_0"
# The types gguf-py cannot quantize, quantized by kt_moe.quant.gguf_kquants
OWN_QUANTIZERS = {"Q4_K": quantize_q4_k, "Q6_K": quantize_q6_k}
# The floating fields of a block that scale its weights (d; m or dmin where the type has one), as
# (byte offset, dtype); for the float types the weight itself
_F16 = torch.float16
SCALE_FIELDS = {
    "F32": ((0, torch.float32),), "F16": ((0, _F16),), "BF16": ((0, torch.bfloat16),),
    "Q8_0": ((0, _F16),), "Q4_0": ((0, _F16),), "Q4_1": ((0, _F16), (2, _F16)), "Q5_0": ((0, _F16),),
    "Q5_1": ((0, _F16), (2, _F16)), "Q2_K": ((80, _F16), (82, _F16)), "Q3_K": ((108, _F16),),
    "Q4_K": ((0, _F16), (2, _F16)), "Q5_K": ((0, _F16), (2, _F16)), "Q6_K": ((208, _F16),),
    "IQ4_NL": ((0, _F16),), "IQ4_XS": ((0, _F16),),
}


def gguf_layer(config: KTMoEConfig) -> Optional[GGUFExperts]:
    """Layer config.layer_idx of the GGUF model in weight_path, its sizes checked against the
    config's; None when weight_path holds no GGUF file."""
    if not config.weight_path:
        return None
    try:
        find_gguf_files(config.weight_path)
    except FileNotFoundError:
        return None
    layer = GGUFExperts.open(config.weight_path, config.layer_idx)
    layer.check_sizes(config.num_experts, config.num_experts_per_tok, config.hidden_size,
                      config.moe_intermediate_size)
    return layer


def matrix_types(config: KTMoEConfig, layer: Optional[GGUFExperts]) -> Tuple[str, str, str]:
    """The GGUF type of gate, up and down: the file's, or gguf_type's (DEFAULT_TYPE when None).
    ValueError for a gguf_type that is not the file's."""
    asked = (config.gguf_type or DEFAULT_TYPE).split(",")
    asked = tuple(asked * 3 if len(asked) == 1 else asked)
    if layer is None:
        return asked
    types = tuple(layer.types[m] for m in MATRICES)
    for m, type_name, wanted in zip(MATRICES, types, asked):
        if config.gguf_type is not None and type_name != wanted:
            raise ValueError(f"gguf_type is {config.gguf_type}, but {layer.describe(m)} is {type_name}: leave "
                             "gguf_type at None to keep the file's types")
    return types


def native_formats(types: Sequence[str]) -> Tuple[str, ...]:
    return tuple(NATIVE_FORMATS[t] for t in types)


def check_blocks_finite(blocks: torch.Tensor, type_name: str, name: str) -> None:
    """ValueError naming `name` when a block's fp16 scale is NaN or infinite."""
    block_bytes = GGUF_TYPES[type_name][1]
    records = blocks.reshape(-1, block_bytes)
    for offset, dtype in SCALE_FIELDS[type_name]:
        size = torch.finfo(dtype).bits // 8
        scales = records[:, offset:offset + size].contiguous().view(dtype)
        bad = ~torch.isfinite(scales)
        if bool(bad.any()):
            block = int(bad.nonzero()[0, 0])
            what = "weight" if GGUF_TYPES[type_name][0] == 1 else "scale"
            raise ValueError(f"{name} must be finite: block {block} holds a NaN or infinite {what}")


def file_experts(layer: GGUFExperts, config: KTMoEConfig, physical_to_logical_map: torch.Tensor
                 ) -> Iterator[PartsExpert]:
    """Each physical slot's blocks, read from the file one expert at a time."""
    expert_map = check_expert_map(physical_to_logical_map, config.num_experts, config.num_experts)

    def experts() -> Iterator[PartsExpert]:
        for slot, e in enumerate(expert_map.tolist()):
            yield PartsExpert(slot, tuple((f"{layer.describe(m)} of expert {e}",) for m in MATRICES),
                              tuple([layer.raw(m, e)] for m in MATRICES))

    return experts()


def quantized_experts(config: KTMoEConfig, types: Sequence[str], gate: torch.Tensor, up: torch.Tensor,
                      down: torch.Tensor, physical_to_logical_map: torch.Tensor) -> Iterator[PartsExpert]:
    """gate [E', I, H], up [E', I, H], down [E', H, I] (CPU, float, finite) per physical slot, each
    matrix quantized to its type by gguf's quantizer when its turn comes."""
    H, I = config.hidden_size, config.moe_intermediate_size
    check_tensor(gate, "gate", (-1, I, H), WEIGHT_DTYPES)
    logical = gate.shape[0]
    check_tensor(up, "up", (logical, I, H), WEIGHT_DTYPES)
    check_tensor(down, "down", (logical, H, I), WEIGHT_DTYPES)
    for m, w, type_name in zip(MATRICES, (gate, up, down), types):
        block = GGUF_TYPES[type_name][0]
        if w.shape[-1] % block:
            raise ValueError(f"{m}: {type_name} quantizes rows of a multiple of {block} weights, got {w.shape[-1]}")
    expert_map = check_expert_map(physical_to_logical_map, config.num_experts, logical)

    def quantized(w: torch.Tensor, type_name: str, name: str) -> torch.Tensor:
        check_finite(w, name)
        values = w.detach().to(torch.float32).numpy()
        if type_name in OWN_QUANTIZERS:
            return torch.from_numpy(OWN_QUANTIZERS[type_name](values))
        blocks = np.ascontiguousarray(quantize(values, GGMLQuantizationType[type_name]))  # F16 / F32 as floats
        return torch.from_numpy(blocks.view(np.uint8))

    def experts() -> Iterator[PartsExpert]:
        for slot, e in enumerate(expert_map.tolist()):
            names = tuple(f"{m} of expert {e}" for m in MATRICES)
            yield PartsExpert(slot, tuple((n,) for n in names),
                              tuple([quantized(w[e], t, n)] for w, t, n in zip((gate, up, down), types, names)))

    return experts()


def load_blocks_expert(engine, types: Sequence[str], expert: PartsExpert) -> None:
    """One expert's blocks into the engine's staged slot, their scales checked first."""
    for (name,), (blocks,), type_name in zip(expert.names, expert.parts, types):
        check_blocks_finite(blocks, type_name, name)
    engine.load_quant_expert_task(expert.slot, *(list(p) for p in expert.parts))
