"""The routed experts' LoRA of an offloaded model as a PEFT adapter folder, and back.

    offload_experts(model, method="AMXBF16_SFT", lora_rank=16, lora_alpha=32)
    ...train...
    save_expert_adapter(model, "adapter/")       # loads with PeftModel.from_pretrained, no kt-moe
    load_expert_adapter(model, "adapter/")       # an adapter of PEFT's, or one saved here

The folder is what PEFT (>= 0.17) writes for `LoraConfig(target_parameters=["mlp.experts.gate_up_proj",
"mlp.experts.down_proj"])`: adapter_config.json and adapter_model.safetensors. PEFT wraps each
targeted parameter of a module in a ParamWrapper, nested in the order the module registered them:
gate_up_proj (registered first) is the inner wrapper, down_proj the outer one, so an experts module
`model.layers.L.mlp.experts` targeted on both holds the keys

    base_model.model.model.layers.L.mlp.experts.base_layer.lora_A.weight  [E r, H]   gate_up_proj's A
    base_model.model.model.layers.L.mlp.experts.base_layer.lora_B.weight  [2I, r E]  gate_up_proj's B
    base_model.model.model.layers.L.mlp.experts.lora_A.weight             [E r, I]   down_proj's A
    base_model.model.model.layers.L.mlp.experts.lora_B.weight             [H, r E]   down_proj's B

(a module targeted on one parameter only holds its keys without `base_layer.`). A is the module's
[E, r, in] parameter flattened; PEFT reads B as [out, r, E], so B [E, out, r] is stored
permute(1, 2, 0) (kt_moe.integrations.expert_lora has the parameters' layout). PEFT scales by
lora_alpha / r, lora_alpha / sqrt(r) with use_rslora; kt-moe by lora_alpha / lora_rank.

Importing this module does not import peft: neither function needs it."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed
from safetensors.torch import load_file, save_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."       # what PEFT puts before a module's name in the model it wraps
PEFT_PREFIX = "base_model.model."      # a PeftModel's own prefix of the wrapped model's module names
# The experts module's parameters PEFT can target, in the order transformers registers them (PEFT's
# nesting order), each with the expert_lora parameter names of its A and B.
TARGETS: Tuple[Tuple[str, str, str], ...] = (("gate_up_proj", "lora_gate_up_A", "lora_gate_up_B"),
                                             ("down_proj", "lora_down_A", "lora_down_B"))
_LAYER_PREFIX = re.compile(r"^(?:.*\.)?layers\.\d+\.")


@dataclass(frozen=True)
class _Experts:
    """One offloaded experts module: `name` as in the unwrapped model (no PeftModel prefix)."""
    name: str
    module: torch.nn.Module

    @property
    def params(self) -> Dict[str, torch.nn.Parameter]:
        return self.module.kt_moe.lora.params

    @property
    def held_experts(self) -> Optional[List[int]]:
        """The logical experts of the parameters' rows when they are one rank's share (expert
        parallelism), else None (every expert, in order)."""
        return getattr(self.module.kt_moe.wrapper, "local_experts", None)

    def whole_params(self) -> Optional[Dict[str, torch.Tensor]]:
        """The parameters over every expert of the layer: gathered from the ranks (collective) under
        expert parallelism, where only the group's rank 0 gets them (None on the others)."""
        if self.held_experts is None:
            return self.params
        return self.module.kt_moe.wrapper.gather_experts(self.params)

    @property
    def rank(self) -> int:
        return self.module.kt_moe.wrapper.config.lora_rank

    @property
    def alpha(self) -> float:
        return self.module.kt_moe.wrapper.config.lora_alpha


def _offloaded_experts(model: torch.nn.Module) -> List[_Experts]:
    """Every experts module of `model` offloaded with an SFT method; a PeftModel's prefix stripped
    from the names. ValueError when there is none."""
    wrapped = hasattr(model, "peft_config")
    found, inference_only = [], []
    for name, module in model.named_modules():
        offloaded = getattr(module, "kt_moe", None)
        if offloaded is None:
            continue
        if getattr(offloaded, "lora", None) is None:
            inference_only.append(name)
            continue
        if wrapped and name.startswith(PEFT_PREFIX):
            name = name[len(PEFT_PREFIX):]
        found.append(_Experts(name, module))
    if not found:
        why = (f"its experts ({', '.join(inference_only)}) were offloaded with an inference method, they have no "
               "LoRA" if inference_only else "no experts module was offloaded to kt-moe (offload_experts)")
        raise ValueError(f"model: no experts LoRA to save or load: {why}; use offload_experts(model, "
                         "method='AMXBF16_SFT', lora_rank=..., lora_alpha=...)")
    return found


def _nesting(targeted: Sequence[str]) -> Dict[str, str]:
    """parameter -> the path of its ParamWrapper below the experts module: the last one targeted is
    the outer wrapper (""), each earlier one a `base_layer.` further in."""
    return {param: "base_layer." * (len(targeted) - 1 - i) for i, param in enumerate(targeted)}


def _keys(experts_name: str, nest: str) -> Tuple[str, str]:
    prefix = f"{KEY_PREFIX}{experts_name}.{nest}"
    return prefix + "lora_A.weight", prefix + "lora_B.weight"


# ---- saving ------------------------------------------------------------------------------------


def _to_peft(A: torch.Tensor, B: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """A [E, r, in] -> [E r, in]; B [E, out, r] -> [out, r E] (PEFT reads it as [out, r, E])."""
    E, r, _ = A.shape
    A = A.detach().cpu().reshape(E * r, A.shape[2]).contiguous()
    B = B.detach().cpu().permute(1, 2, 0).reshape(B.shape[1], r * E).contiguous()
    return A, B


def _target_parameters(sites: Sequence[_Experts]) -> List[str]:
    """PEFT's target_parameters for these modules: each module's path below its decoder layer
    ("mlp.experts"), with each parameter."""
    paths = sorted({_LAYER_PREFIX.sub("", site.name) for site in sites})
    return [f"{path}.{param}" for path in paths for param, _, _ in TARGETS]


def save_expert_adapter(model: torch.nn.Module, directory: str) -> None:
    """Write the experts' LoRA of `model` (offloaded with an SFT method) to `directory` as a PEFT
    LoRA adapter (adapter_config.json, adapter_model.safetensors) that
    `PeftModel.from_pretrained(model_without_kt_moe, directory)` loads. Only the routed experts'
    LoRA is written; tensors keep their dtype. ValueError when the model has no experts LoRA or its
    experts modules differ in lora_rank / lora_alpha. Under expert parallelism every rank calls it:
    the experts are gathered, rank 0 of the process group writes the whole adapter and every rank
    returns once it is written."""
    sites = _offloaded_experts(model)
    settings = {(site.rank, site.alpha) for site in sites}
    if len(settings) > 1:
        raise ValueError(f"model: its experts modules have different (lora_rank, lora_alpha): {sorted(settings)}; "
                         "one PEFT adapter has one")
    rank, alpha = settings.pop()
    tensors = {}
    nesting = _nesting([param for param, _, _ in TARGETS])
    writes = True
    for site in sites:
        params = site.whole_params()
        if params is None:  # another rank writes
            writes = False
            continue
        for param, a_name, b_name in TARGETS:
            key_a, key_b = _keys(site.name, nesting[param])
            tensors[key_a], tensors[key_b] = _to_peft(params[a_name], params[b_name])
    if writes:
        _write(model, directory, sites, tensors, rank, alpha)
    groups = {id(group): group for group in (s.module.kt_moe.wrapper.group for s in sites if s.held_experts)}
    for group in groups.values():  # the folder is complete on every rank when they return
        torch.distributed.barrier(group=group)


def _write(model: torch.nn.Module, directory: str, sites: Sequence[_Experts], tensors: Dict[str, torch.Tensor],
           rank: int, alpha: float) -> None:
    """adapter_config.json and adapter_model.safetensors of `tensors` in `directory`."""
    config = getattr(model, "config", None)  # a PeftModel passes the wrapped model's through
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": getattr(config, "_name_or_path", None) or None,
        "r": rank,
        "lora_alpha": alpha,
        "use_rslora": False,
        "target_modules": None,
        "target_parameters": _target_parameters(sites),
        "lora_dropout": 0.0,
        "bias": "none",
        "lora_bias": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
    }
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
    save_file(tensors, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})


# ---- loading -----------------------------------------------------------------------------------


def _read(directory: str) -> Tuple[dict, Dict[str, torch.Tensor], str, str]:
    """(adapter_config, state dict, config path, weights path); ValueError for a missing file."""
    config_path, weights_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, WEIGHTS_FILE)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such file (a PEFT adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{config_path}: peft_type is {config.get('peft_type')!r}; only LoRA adapters can be loaded")
    for option in ("use_dora", "lora_bias", "fan_in_fan_out"):
        if config.get(option):
            raise ValueError(f"{config_path}: {option} is set; kt-moe's experts LoRA has no such variant")
    return config, load_file(weights_path), config_path, weights_path


def _pattern_value(patterns: Optional[dict], key: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup (peft.utils.other.get_pattern_key): the first
    pattern p with re.match(rf"(.*\\.)?({p})$", key)."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


def _is_targeted(key: str, target_parameters: Sequence[str]) -> bool:
    """PEFT's test of a parameter's name `key` ("model.layers.0.mlp.experts.down_proj")."""
    return any(key == target or key.endswith("." + target) for target in target_parameters)


def _module_of(key: str) -> str:
    """A state dict key's module in the model: "base_model.model.X.base_layer.lora_A.weight" -> "X"."""
    name = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key
    name = name.rsplit(".", 1)[0]  # drop "weight"/"bias"
    name = re.sub(r"\.(lora_[A-Za-z_]+)$", "", name)
    while name.endswith(".base_layer"):
        name = name[:-len(".base_layer")]
    return name


def _check_keys(state: Dict[str, torch.Tensor], sites: Sequence[_Experts], used: set, target_modules: List[str],
                path: str) -> None:
    """Every key of an experts module must be one read here, and every key of a module that looks
    like an experts module (its path is one the adapter targets) must belong to one of the model's."""
    site_names = {site.name for site in sites}
    for key in state:
        if key in used:
            continue
        module = _module_of(key)
        if any(module == name or module.startswith(name + ".") for name in site_names):
            raise ValueError(f"{path}: {key} is LoRA of an experts module that kt-moe cannot take (adapters with "
                             "target_modules on the experts' projections: only target_parameters=[...gate_up_proj, "
                             "...down_proj] maps onto kt-moe's experts LoRA)")
        if any(module == m or module.endswith("." + m) for m in target_modules):
            raise ValueError(f"{path}: {key} is LoRA of experts module {module}, which this model does not have "
                             f"offloaded (offloaded: {', '.join(sorted(site_names))})")


def _from_peft(A: torch.Tensor, B: torch.Tensor, E: int, r: int, key_a: str, key_b: str, in_features: int,
               out_features: int, path: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """A [E r, in] -> [E, r, in]; B [out, r E] (read as [out, r, E]) -> [E, out, r]."""
    for key, tensor, shape in ((key_a, A, (E * r, in_features)), (key_b, B, (out_features, r * E))):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{path}: {key} has shape {list(tensor.shape)}, expected {list(shape)} for {E} experts "
                             f"of rank {r} (an adapter of a model of other sizes?)")
    return A.reshape(E, r, in_features), B.reshape(out_features, r, E).permute(2, 0, 1)


def _site_tensors(site: _Experts, config: dict, state: Dict[str, torch.Tensor], used: set, config_path: str,
                  weights_path: str) -> Dict[str, torch.Tensor]:
    """The four parameters' new values for one experts module (B scaled to the model's scaling)."""
    target_parameters = config.get("target_parameters") or []
    targeted = [param for param, _, _ in TARGETS if _is_targeted(f"{site.name}.{param}", target_parameters)]
    nesting = _nesting(targeted)
    values = {}
    for param, a_name, b_name in TARGETS:
        A_param, B_param = site.params[a_name], site.params[b_name]
        E, in_features, out_features = site.module.num_experts, A_param.shape[2], B_param.shape[1]
        if param not in nesting:  # not in this adapter: no change of the function (B = 0)
            values[a_name], values[b_name] = A_param.detach().clone(), torch.zeros_like(B_param)
            continue
        param_key = f"{site.name}.{param}"
        rank = int(_pattern_value(config.get("rank_pattern"), param_key, config.get("r", 8)))
        if rank != site.rank:
            raise ValueError(f"{config_path}: the LoRA of {param_key} has rank {rank}, the model's kt-moe lora_rank "
                             f"is {site.rank} (offload_experts(..., lora_rank={rank}) takes this adapter)")
        key_a, key_b = _keys(site.name, nesting[param])
        for key in (key_a, key_b):
            if key not in state:
                raise ValueError(f"{weights_path}: no {key} (the LoRA of {param_key}, which {config_path} targets)")
        A, B = _from_peft(state[key_a], state[key_b], E, rank, key_a, key_b, in_features, out_features, weights_path)
        if site.held_experts is not None:  # this rank's share
            A, B = A[site.held_experts], B[site.held_experts]
        alpha = float(_pattern_value(config.get("alpha_pattern"), param_key, config.get("lora_alpha", 8)))
        adapter_scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        model_scaling = site.alpha / site.rank
        if adapter_scaling != model_scaling:  # the same delta W = s B A with the model's s
            B = B.float() * (adapter_scaling / model_scaling)
        values[a_name], values[b_name] = A, B
        used.update((key_a, key_b))
    return values


def load_expert_adapter(model: torch.nn.Module, directory: str) -> None:
    """Read the routed experts' LoRA of the PEFT adapter in `directory` into `model` (offloaded with
    an SFT method): one saved by save_expert_adapter or one PEFT trained on the unpatched model with
    target_parameters on the experts' gate_up_proj / down_proj.

    The adapter's rank must be the model's lora_rank; another scaling (lora_alpha, use_rslora,
    alpha_pattern) is folded into B, so the model computes the adapter's function. A parameter the
    adapter does not target gets B = 0 (no change). Keys of other modules (attention LoRA of a
    combined adapter, modules_to_save, ...) are ignored: load those with PEFT. Nothing is written
    unless the whole adapter is read: ValueError, naming the file and key, for a missing file or
    key, another rank or size, an adapter that targets none of the experts or whose experts LoRA is
    on target_modules (per-expert Linear layers). Under expert parallelism each rank reads its
    experts' share."""
    sites = _offloaded_experts(model)
    config, state, config_path, weights_path = _read(directory)
    target_parameters = config.get("target_parameters") or []
    if not any(_is_targeted(f"{site.name}.{param}", target_parameters) for site in sites for param, _, _ in TARGETS):
        raise ValueError(f"{config_path}: target_parameters {target_parameters} targets none of the model's experts "
                         f"parameters ({sites[0].name}.gate_up_proj, ...down_proj)")
    used: set = set()
    values = [_site_tensors(site, config, state, used, config_path, weights_path) for site in sites]
    _check_keys(state, sites, used, [t.rpartition(".")[0] for t in target_parameters], weights_path)
    with torch.no_grad():
        for site, new in zip(sites, values):
            for name, value in new.items():
                site.params[name].copy_(value)
