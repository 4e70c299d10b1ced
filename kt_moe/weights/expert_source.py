"""Where a wrapper's routed experts come from, shared by the SFT and the inference backends: the
caller's stacked tensors (load_weights_from_tensors) or the Hugging Face checkpoint in weight_path
(load_weights). Both check their arguments at once (ValueError naming the parameter) and then hand
out one physical slot at a time as (slot, gate [I, H], up [I, H], down [H, I]), contiguous bf16,
so that peak memory stays near one expert beyond what the caller already holds. A quantized
method's pre-quantized layer file (`kt-moe convert`, kt_moe.weights.prequantized) is handed out
the same way, as the scheme's parts of each matrix.

load_from_path / load_from_tensors put the experts into a native engine (TP_MOE or TP_MOE_SFT,
which share load_expert_task and load_quant_expert_task): as bf16, or quantized with the method's
scheme (base_scheme) one expert at a time, or as a pre-quantized file's parts.

Physical slot p holds logical expert physical_to_logical_map[p] (int64 [num_experts], entries in
[0, logical experts)); expert ids given to forward calls are physical slots.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from kt_moe.config import KTMoEConfig
from kt_moe.quant import METHOD_SCHEMES, QuantScheme, scheme_for_method
from kt_moe.tensor_checks import FLOAT_DTYPES, as_contiguous, check_expert_map, check_tensor
from kt_moe.weights.hf_checkpoint import HFExpertReader
from kt_moe.weights.prequantized import MATRICES, ExpertParts, PrequantizedLayerReader, layer_file

Expert = Tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]  # slot, gate, up, down


def tensor_experts(config: KTMoEConfig, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                   physical_to_logical_map: torch.Tensor) -> Iterator[Expert]:
    """gate [E', I, H], up [E', I, H], down [E', H, I] (CPU, any float dtype) per physical slot,
    each converted to bf16 when its turn comes."""
    H, I = config.hidden_size, config.moe_intermediate_size
    check_tensor(gate, "gate", (-1, I, H), FLOAT_DTYPES)
    logical = gate.shape[0]
    check_tensor(up, "up", (logical, I, H), FLOAT_DTYPES)
    check_tensor(down, "down", (logical, H, I), FLOAT_DTYPES)
    expert_map = check_expert_map(physical_to_logical_map, config.num_experts, logical)

    def experts() -> Iterator[Expert]:
        for slot, e in enumerate(expert_map.tolist()):
            yield (slot, as_contiguous(gate[e], torch.bfloat16), as_contiguous(up[e], torch.bfloat16),
                   as_contiguous(down[e], torch.bfloat16))

    return experts()


def checkpoint_experts(config: KTMoEConfig, physical_to_logical_map: torch.Tensor) -> Iterator[Expert]:
    """Layer config.layer_idx of the Hugging Face checkpoint in config.weight_path, read one expert
    at a time (kt_moe.weights.hf_checkpoint); its files are checked before anything is returned."""
    expert_map = check_expert_map(physical_to_logical_map, config.num_experts, config.num_experts)
    if not config.weight_path:
        raise ValueError("weight_path is empty: load_weights() reads the Hugging Face checkpoint in weight_path "
                         "(use load_weights_from_tensors() for weights already in memory)")
    reader = HFExpertReader(config.weight_path, config.layer_idx, config.num_experts, config.hidden_size,
                            config.moe_intermediate_size)

    def experts() -> Iterator[Expert]:
        for slot, (_, gate, up, down) in enumerate(reader.experts(expert_map.tolist())):
            yield slot, gate, up, down

    return experts()


def has_prequantized_layer(config: KTMoEConfig) -> bool:
    """Whether weight_path holds a pre-quantized file of layer layer_idx."""
    return bool(config.weight_path) and layer_file(config.weight_path, config.layer_idx).is_file()


def prequantized_experts(config: KTMoEConfig, physical_to_logical_map: torch.Tensor
                         ) -> Iterator[Tuple[int, ExpertParts]]:
    """(slot, {"gate" | "up" | "down": the scheme's parts}) from the pre-quantized file of layer
    layer_idx in weight_path, checked against the config's method and shapes before anything is read."""
    expert_map = check_expert_map(physical_to_logical_map, config.num_experts, config.num_experts)
    reader = PrequantizedLayerReader(config.weight_path, config.layer_idx, config.num_experts, config.hidden_size,
                                     config.moe_intermediate_size, config.method, **config.quant_options)

    def experts() -> Iterator[Tuple[int, ExpertParts]]:
        with reader:
            for slot, (_, parts) in enumerate(reader.experts(expert_map.tolist())):
                yield slot, parts

    return experts()


def base_scheme(config: KTMoEConfig) -> Optional[QuantScheme]:
    """The kt_moe.quant scheme config.method stores its experts in; None for the bf16 methods."""
    return scheme_for_method(config.method, **config.quant_options) if config.method in METHOD_SCHEMES else None


def load_expert(engine, scheme: Optional[QuantScheme], slot: int, gate: torch.Tensor, up: torch.Tensor,
                down: torch.Tensor) -> None:
    """One expert, bf16 gate [I, H], up [I, H], down [H, I], into the engine's slot: as it is without a
    scheme, else quantized with it."""
    if scheme is None:
        engine.load_expert_task(slot, gate, up, down)
    else:
        engine.load_quant_expert_task(slot, *(list(scheme.quantize(w)) for w in (gate, up, down)))


def load_from_path(engine, config: KTMoEConfig, scheme: Optional[QuantScheme],
                   physical_to_logical_map: torch.Tensor) -> None:
    """Layer layer_idx from weight_path into the engine: for a quantized method its pre-quantized file
    when there is one, else the Hugging Face checkpoint (quantized while loading)."""
    if scheme is not None and has_prequantized_layer(config):
        for slot, parts in prequantized_experts(config, physical_to_logical_map):
            engine.load_quant_expert_task(slot, *(list(parts[m]) for m in MATRICES))
        return
    for slot, gate, up, down in checkpoint_experts(config, physical_to_logical_map):
        load_expert(engine, scheme, slot, gate, up, down)


def load_from_tensors(engine, config: KTMoEConfig, scheme: Optional[QuantScheme], gate: torch.Tensor,
                      up: torch.Tensor, down: torch.Tensor, physical_to_logical_map: torch.Tensor) -> None:
    """gate [E', I, H], up [E', I, H], down [E', H, I] into the engine, one expert at a time."""
    for slot, g, u, d in tensor_experts(config, gate, up, down, physical_to_logical_map):
        load_expert(engine, scheme, slot, g, u, d)
