"""Where a wrapper's routed experts come from, shared by the SFT and the inference backends: the
caller's stacked tensors (load_weights_from_tensors) or the Hugging Face checkpoint in weight_path
(load_weights). Both check their arguments at once (ValueError naming the parameter) and then hand
out one physical slot at a time as an Expert (gate [I, H], up [I, H], down [H, I], contiguous bf16),
so that peak memory stays near one expert beyond what the caller already holds. A quantized
method's pre-quantized layer file (`kt-moe convert`, kt_moe.weights.prequantized) is handed out
the same way, as the scheme's parts of each matrix.

load_from_path / load_from_tensors put the experts into a native engine (TP_MOE or TP_MOE_SFT,
which share the load calls): as bf16, or quantized with the method's scheme (base_scheme) one expert
at a time, or as a pre-quantized file's parts. Every bf16 matrix is checked for NaN and infinity
(kt_moe.tensor_checks.check_finite before it is used, or the INT4 quantizer as it reads it: the same
ValueError naming the matrix and the expert), every pre-quantized scale likewise, and a
pre-quantized file's checksum is verified while it is read unless verify_checksum=False.

The FP8 and RAWINT4 methods read a quantized checkpoint in place (kt_moe.weights.checkpoint_formats:
each matrix as its format's parts, checked for non-finite values) and take pre-quantized parts from
the caller too (load_weights_from_tensors with each matrix a sequence of its stacked parts).

A load is all or nothing: the experts go into the engine's staged weights (begin_load), which
replace the weights forwards read only once every slot is loaded (commit_load); any failure drops
them (abort_load) and the engine keeps its previous weights, or stays without weights. During a
reload both sets of one layer's experts exist for a while.

Physical slot p holds logical expert physical_to_logical_map[p] (int64 [num_experts], entries in
[0, logical experts)); expert ids given to forward calls are physical slots.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

import torch

from kt_moe.config import KTMoEConfig
from kt_moe.quant import METHOD_SCHEMES, QuantScheme, scheme_for_method
from kt_moe.quant.schemes import OPTION_SCHEMES
from kt_moe.tensor_checks import (WEIGHT_DTYPES, as_contiguous, check_expert_map, check_finite, check_tensor,
                                  non_finite_message)
from kt_moe.weights.checkpoint_formats import CheckpointFormat, checkpoint_format
from kt_moe.weights.hf_checkpoint import HFExpertReader
from kt_moe.weights.prequantized import MATRICES, ExpertParts, PrequantizedLayerReader, layer_file


Item = TypeVar("Item")


class Expert(NamedTuple):
    """One physical slot's weights, contiguous bf16."""

    slot: int
    names: Tuple[str, str, str]  # how messages name gate, up and down, e.g. "gate of expert 3"
    gate: torch.Tensor  # [I, H]
    up: torch.Tensor  # [I, H]
    down: torch.Tensor  # [H, I]


def tensor_experts(config: KTMoEConfig, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                   physical_to_logical_map: torch.Tensor) -> Iterator[Expert]:
    """gate [E', I, H], up [E', I, H], down [E', H, I] (CPU; bf16, fp16, fp32 or fp64) per physical
    slot, each converted to bf16 when its turn comes."""
    H, I = config.hidden_size, config.moe_intermediate_size
    check_tensor(gate, "gate", (-1, I, H), WEIGHT_DTYPES)
    logical = gate.shape[0]
    check_tensor(up, "up", (logical, I, H), WEIGHT_DTYPES)
    check_tensor(down, "down", (logical, H, I), WEIGHT_DTYPES)
    expert_map = check_expert_map(physical_to_logical_map, config.num_experts, logical)

    def experts() -> Iterator[Expert]:
        for slot, e in enumerate(expert_map.tolist()):
            yield Expert(slot, tuple(f"{m} of expert {e}" for m in MATRICES), as_contiguous(gate[e], torch.bfloat16),
                         as_contiguous(up[e], torch.bfloat16), as_contiguous(down[e], torch.bfloat16))

    return experts()


def checkpoint_experts(config: KTMoEConfig, physical_to_logical_map: torch.Tensor, logical: int) -> Iterator[Expert]:
    """Layer config.layer_idx of the Hugging Face checkpoint in config.weight_path (`logical` experts),
    read one expert at a time (kt_moe.weights.hf_checkpoint); its files are checked before anything
    is returned."""
    expert_map = check_expert_map(physical_to_logical_map, config.num_experts, logical)
    if not config.weight_path:
        raise ValueError("weight_path is empty: load_weights() reads the Hugging Face checkpoint in weight_path "
                         "(use load_weights_from_tensors() for weights already in memory)")
    reader = HFExpertReader(config.weight_path, config.layer_idx, logical, config.hidden_size,
                            config.moe_intermediate_size)

    def experts() -> Iterator[Expert]:
        for slot, (e, gate, up, down) in enumerate(reader.experts(expert_map.tolist())):
            yield Expert(slot, reader.describe(e), gate, up, down)

    return experts()


def has_prequantized_layer(config: KTMoEConfig) -> bool:
    """Whether weight_path holds a pre-quantized file of layer layer_idx."""
    return bool(config.weight_path) and layer_file(config.weight_path, config.layer_idx).is_file()


def prequantized_experts(config: KTMoEConfig, physical_to_logical_map: torch.Tensor, verify_checksum: bool,
                         logical: int) -> Iterator[Tuple[int, ExpertParts]]:
    """(slot, {"gate" | "up" | "down": the scheme's parts}) from the pre-quantized file of layer
    layer_idx in weight_path, checked against the config's method and shapes before anything is read.
    With verify_checksum the whole file is read once, in checksum order, and the iteration ends with
    PrequantizedCorruptError when the checksum differs; without it only the mapped experts are read."""
    expert_map = check_expert_map(physical_to_logical_map, config.num_experts, logical).tolist()
    reader = PrequantizedLayerReader(config.weight_path, config.layer_idx, logical, config.hidden_size,
                                     config.moe_intermediate_size, config.method, **config.quant_options)

    def experts() -> Iterator[Tuple[int, ExpertParts]]:
        with reader:
            if not verify_checksum:
                for slot, (_, parts) in enumerate(reader.experts(expert_map)):
                    yield slot, parts
                return
            slots: Dict[int, List[int]] = defaultdict(list)  # logical expert -> the slots holding it
            for slot, e in enumerate(expert_map):
                slots[e].append(slot)
            for e, parts in reader.verified_experts(slots):
                for slot in slots[e]:
                    yield slot, parts

    return experts()


def base_scheme(config: KTMoEConfig, format_option: Optional[int] = None,
                base_format: Optional[CheckpointFormat] = None) -> Optional[QuantScheme]:
    """The kt_moe.quant scheme config.method stores its experts in, with the checkpoint-decided
    option of its format (kt_moe.weights.checkpoint_formats.format_option) when there is one, or the
    scheme of the checkpoint's own format when the base keeps it (base_format); None for the bf16
    methods."""
    if base_format is not None:
        return OPTION_SCHEMES[base_format.format](base_format.option)
    if config.method not in METHOD_SCHEMES:
        return None
    options = dict(config.quant_options)
    if format_option is not None:
        options["group_size"] = format_option
    return scheme_for_method(config.method, **options)


class PartsExpert(NamedTuple):
    """One physical slot's weights as the scheme's parts of each matrix."""

    slot: int
    names: Tuple[Tuple[str, ...], ...]  # how messages name each part of gate, up and down
    parts: Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]  # gate, up, down


def check_parts_finite(parts: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    """ValueError naming the part when a floating part holds NaN or infinity (FP8: its NaN codes)."""
    for part, name in zip(parts, names):
        if part.dtype == torch.float8_e4m3fn:
            nan = (part.view(torch.uint8) & 0x7F) == 0x7F
            if bool(nan.any()):
                index = tuple(nan.nonzero()[0].tolist())
                raise ValueError(f"{name} must be finite: its FP8 weight holds NaN at {list(index)}")
        elif part.is_floating_point():
            check_finite(part, name)


def checkpoint_parts_experts(config: KTMoEConfig, found: CheckpointFormat, scheme: QuantScheme,
                             physical_to_logical_map: torch.Tensor, logical: int) -> Iterator[PartsExpert]:
    """Layer config.layer_idx of the quantized checkpoint in weight_path, each matrix as its format's
    parts, read one expert at a time; its option must be the one the wrapper was built with."""
    if found.option != scheme.group_size:
        raise ValueError(f"{config.weight_path} holds {found.description}, but this {config.method} wrapper was "
                         f"built for the option {scheme.group_size} of format {scheme.name} (build the wrapper with "
                         "weight_path pointing at the checkpoint it will load)")
    expert_map = check_expert_map(physical_to_logical_map, config.num_experts, logical)
    reader = HFExpertReader(config.weight_path, config.layer_idx, logical, config.hidden_size,
                            config.moe_intermediate_size, parts=found.parts)

    def experts() -> Iterator[PartsExpert]:
        for slot, (e, gate, up, down) in enumerate(reader.experts(expert_map.tolist())):
            yield PartsExpert(slot, reader.describe_parts(e), (gate, up, down))

    return experts()


def tensor_parts_experts(config: KTMoEConfig, scheme: QuantScheme, gate: Sequence[torch.Tensor],
                         up: Sequence[torch.Tensor], down: Sequence[torch.Tensor],
                         physical_to_logical_map: torch.Tensor) -> Iterator[PartsExpert]:
    """gate, up, down each given as the scheme's parts stacked over logical experts ([E', *part])."""
    H, I = config.hidden_size, config.moe_intermediate_size
    stacked = {}
    logical = None
    for matrix, value, (n, k) in zip(MATRICES, (gate, up, down), ((I, H), (I, H), (H, I))):
        specs = scheme.part_specs(n, k)
        if not isinstance(value, (list, tuple)) or len(value) != len(specs):
            raise ValueError(f"{matrix} must be a tensor or the {len(specs)} parts {list(specs)} of {scheme.name}, "
                             f"got {type(value).__name__}")
        for part, (part_name, (shape, dtype)) in zip(value, specs.items()):
            check_tensor(part, f"{matrix} {part_name}", (-1 if logical is None else logical, *shape), (dtype,))
            logical = part.shape[0]
        stacked[matrix] = value
    expert_map = check_expert_map(physical_to_logical_map, config.num_experts, logical)

    def experts() -> Iterator[PartsExpert]:
        for slot, e in enumerate(expert_map.tolist()):
            yield PartsExpert(slot, tuple(tuple(f"{m} {part} of expert {e}" for part in scheme.parts) for m in MATRICES),
                              tuple([p[e].contiguous() for p in stacked[m]] for m in MATRICES))

    return experts()


def load_parts_expert(engine, expert: PartsExpert) -> None:
    """One expert's parts into the engine's staged slot, checked for non-finite values first."""
    for names, parts in zip(expert.names, expert.parts):
        check_parts_finite(parts, names)
    engine.load_quant_expert_task(expert.slot, *(list(p) for p in expert.parts))


def load_expert(engine, scheme: Optional[QuantScheme], expert: Expert) -> None:
    """One expert into the engine's staged slot, each matrix checked for NaN and infinity: as it is
    without a scheme, else quantized with it (a ValueError of the quantizer names the matrix). A
    scheme that checks_finite checks as it reads; skipping torch's pass then also keeps torch's idle
    OpenMP threads, which spin after each parallel op, from taking cores from the quantizer's."""
    matrices = (expert.gate, expert.up, expert.down)
    if scheme is None or not scheme.checks_finite:
        for name, w in zip(expert.names, matrices):
            check_finite(w, name)
    if scheme is None:
        engine.load_expert_task(expert.slot, *matrices)
        return
    parts = []
    for name, w in zip(expert.names, matrices):
        try:
            parts.append(list(scheme.quantize(w)))
        except ValueError as exc:
            if str(exc) == non_finite_message("w"):
                raise ValueError(non_finite_message(name)) from None
            raise ValueError(f"{name}: {exc}") from None
    engine.load_quant_expert_task(expert.slot, *parts)


def load_all_or_nothing(engine, items: Iterable[Item], put: Callable[[Item], None]) -> None:
    """put(item) for every item, each filling a slot of the engine's staged weights, then put those in
    place; when anything raises (a bad item, a damaged file, put itself), drop them: the engine keeps
    the weights it had."""
    engine.begin_load()
    try:
        for item in items:
            put(item)
        engine.commit_load()
    except BaseException:
        engine.abort_load()
        raise


def load_from_path(engine, config: KTMoEConfig, scheme: Optional[QuantScheme],
                   physical_to_logical_map: torch.Tensor, verify_checksum: bool = True,
                   num_logical_experts: Optional[int] = None) -> None:
    """Layer layer_idx from weight_path into the engine, all or nothing: for FP8 and RAWINT4 a
    quantized checkpoint in place; for a quantized method its pre-quantized file when there is one
    (its checksum verified unless verify_checksum is False); else the Hugging Face checkpoint
    (quantized while loading). num_logical_experts: the stored layer's expert count when the
    wrapper holds fewer slots (default num_experts)."""
    logical = num_logical_experts or config.num_experts
    found = checkpoint_format(config.weight_path, config.method) if config.weight_path else None
    if found is not None:
        load_all_or_nothing(engine, checkpoint_parts_experts(config, found, scheme, physical_to_logical_map, logical),
                            lambda expert: load_parts_expert(engine, expert))
    elif scheme is not None and has_prequantized_layer(config):
        load_all_or_nothing(engine, prequantized_experts(config, physical_to_logical_map, verify_checksum, logical),
                            lambda item: engine.load_quant_expert_task(item[0], *(list(item[1][m]) for m in MATRICES)))
    else:
        load_all_or_nothing(engine, checkpoint_experts(config, physical_to_logical_map, logical),
                            lambda expert: load_expert(engine, scheme, expert))


def load_from_tensors(engine, config: KTMoEConfig, scheme: Optional[QuantScheme], gate, up, down,
                      physical_to_logical_map: torch.Tensor) -> None:
    """gate [E', I, H], up [E', I, H], down [E', H, I] into the engine, one expert at a time, all or
    nothing; for a quantized method each may also be the sequence of its scheme's parts stacked over
    the logical experts, taken as they are."""
    matrices = (gate, up, down)
    if scheme is not None and all(isinstance(m, (list, tuple)) for m in matrices):
        load_all_or_nothing(engine, tensor_parts_experts(config, scheme, gate, up, down, physical_to_logical_map),
                            lambda expert: load_parts_expert(engine, expert))
        return
    load_all_or_nothing(engine, tensor_experts(config, gate, up, down, physical_to_logical_map),
                        lambda expert: load_expert(engine, scheme, expert))
