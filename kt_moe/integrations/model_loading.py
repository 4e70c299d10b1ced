"""Build a transformers MoE model with its routed experts on kt-moe straight from a checkpoint,
without ever holding the experts as torch tensors (the way to run a model larger than RAM twice).

    model = load_offloaded("path/to/Qwen3-30B-A3B", method="AMXINT4")   # generate() works unchanged

`from_pretrained` + `offload_experts` first materializes every expert in torch (the model's dtype),
then hands them to kt-moe. load_offloaded instead builds the model on the meta device, loads every
tensor except the routed experts from the checkpoint's safetensors files (model.safetensors or the
shards of model.safetensors.index.json), rebuilds the non-persistent buffers (the rotary embedding's
inv_freq) on the CPU, ties the embeddings where the config says so, and lets offload_experts read
the experts from the checkpoint files one expert at a time (weight_path=). Checkpoint names become
the model's through transformers' own conversion mapping (Mixtral's `block_sparse_moe.` -> `mlp.`),
so the result is the model `from_pretrained(path, dtype=dtype)` + `offload_experts(model, method)`
gives.

read_torch_experts reads experts 0..n-1 of a layer as the experts module's torch tensors, for the
experts offload_experts keeps in torch (num_gpu_experts) when the module's own are on meta.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Set, Tuple, Union

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from kt_moe.integrations.architectures import find_experts, text_config
from kt_moe.weights.checkpoint_formats import StoredPart
from kt_moe.weights.hf_checkpoint import SUPPORTED_DTYPES, HFExpertReader, read_weight_map
from kt_moe.weights.safetensors_errors import damaged_file_errors

PathLike = Union[str, os.PathLike]
# An unquantized matrix as stored (no rounding to bf16), for the experts kept in torch.
STORED_WEIGHT = StoredPart("weight", SUPPORTED_DTYPES, lambda n, k: [(n, k)], lambda t: t.contiguous())


def load_offloaded(path: PathLike, method: str = "AMXINT4", dtype: torch.dtype = torch.bfloat16,
                   **offload_kwargs) -> torch.nn.Module:
    """The causal LM of the Hugging Face checkpoint directory `path` in `dtype`, its routed experts
    on kt-moe with `method`, in eval mode. offload_kwargs go to offload_experts (num_gpu_experts,
    cpuinfer_threads, lora_rank, ...). ValueError naming the tensor when the checkpoint lacks one
    the model needs."""
    from kt_moe.integrations.transformers import offload_experts  # here: that module imports this one

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    experts = {f"{site.name}.{name}" for site in find_experts(model) for name in ("gate_up_proj", "down_proj")}
    load_checkpoint_tensors(model, path, skip=experts)
    rebuild_meta_buffers(model)
    if getattr(text_config(model), "tie_word_embeddings", False):
        model.tie_weights()
    check_materialized(model, path, ignore=experts)  # before offloading: a missing tensor fails fast
    _load_generation_config(model, path)
    offload_experts(model, method=method, weight_path=str(path), **offload_kwargs)
    check_materialized(model, path)
    return model.eval()


def _checkpoint_names(model: torch.nn.Module, stored: Dict[str, Path], wanted: Set[str]) -> Dict[str, str]:
    """Model tensor name -> checkpoint tensor name for each wanted tensor the checkpoint holds, the
    checkpoint's names renamed the way from_pretrained renames them. Names a WeightConverter fuses
    (the routed experts' per-expert matrices) are left out: no wanted tensor is one of them."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    present = dict.fromkeys(wanted, True)  # rename_source_key looks names up with .get()
    names = {}
    for stored_name in stored:
        name, fused = rename_source_key(stored_name, renamings, converters, model.base_model_prefix, present)
        if name not in wanted and stored_name in wanted:
            name, fused = stored_name, None
        if fused is None and name in wanted:
            names[name] = stored_name
    return names


def _assign(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace the parameter or buffer `name` of `model` by `value` (a parameter keeps requires_grad)."""
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    if attr in module._parameters:
        old = module._parameters[attr]
        module._parameters[attr] = torch.nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        module._buffers[attr] = value


def load_checkpoint_tensors(model: torch.nn.Module, path: PathLike, skip: Set[str] = frozenset()) -> None:
    """Load every parameter and persistent buffer of `model` found in the checkpoint at `path`, except
    the names in `skip`, in place of the model's own (meta) tensors: floating tensors converted to the
    dtype of the tensor they replace, one tensor read at a time. A shape that differs from the
    model's is a ValueError naming the tensor; a tensor the checkpoint lacks stays as it was."""
    directory = Path(path)
    stored, _ = read_weight_map(directory)
    current = {name: tensor for name, tensor in model.state_dict(keep_vars=True).items() if name not in skip}
    by_file: Dict[Path, Dict[str, str]] = {}
    for name, stored_name in _checkpoint_names(model, stored, set(current)).items():
        by_file.setdefault(stored[stored_name], {})[name] = stored_name
    for file, names in by_file.items():
        if not file.is_file():
            raise FileNotFoundError(f"shard {file} named by the index of {directory} not found")
        with damaged_file_errors(file), safe_open(file, framework="pt") as f:
            for name, stored_name in names.items():
                value, target = f.get_tensor(stored_name), current[name]
                if value.shape != target.shape:
                    raise ValueError(f"{stored_name} in {file}: expected shape {list(target.shape)} for {name}, "
                                     f"got {list(value.shape)}")
                if value.is_floating_point() and target.is_floating_point():
                    value = value.to(target.dtype)
                _assign(model, name, value)


def rebuild_meta_buffers(model: torch.nn.Module) -> None:
    """Re-create on the CPU the non-persistent buffers still on the meta device (no checkpoint holds
    them: the rotary embedding's inv_freq), by constructing their module's class again from its
    config, as the model's constructor does. A module without a config, or whose class takes more
    than it, is left as it is (check_materialized names its buffer)."""
    for module in model.modules():
        meta = [name for name in module._non_persistent_buffers_set
                if module._buffers.get(name) is not None and module._buffers[name].is_meta]
        if not meta or getattr(module, "config", None) is None:
            continue
        try:
            with torch.device("cpu"):
                fresh = type(module)(module.config)
        except TypeError:
            continue
        for name in meta:
            module._buffers[name] = fresh._buffers[name].to(module._buffers[name].dtype)


def check_materialized(model: torch.nn.Module, path: PathLike, ignore: Set[str] = frozenset()) -> None:
    """ValueError naming the first parameter or buffer of `model` (outside `ignore`) still on the meta
    device, i.e. missing from the checkpoint at `path`."""
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    missing = [name for name, tensor in tensors if tensor.is_meta and name not in ignore]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{missing[0]}{more}: not in the checkpoint {path}")


def _load_generation_config(model: torch.nn.Module, path: Path) -> None:
    """The checkpoint's generation_config.json, as from_pretrained takes it, where there is one."""
    if model.can_generate() and (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)


def read_torch_experts(weight_path: PathLike, layer_idx: int, count: int, hidden: int, intermediate: int,
                       dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Experts 0..count-1 of layer `layer_idx` of the Hugging Face checkpoint at `weight_path` in the
    layout of a transformers experts module: (gate_up [count, 2I, H] (gate rows, then up rows),
    down [count, H, I]) in `dtype`, read one expert at a time by HFExpertReader."""
    I = intermediate
    gate_up = torch.empty(count, 2 * I, hidden, dtype=dtype)
    down = torch.empty(count, hidden, I, dtype=dtype)
    reader = HFExpertReader(weight_path, layer_idx, count, hidden, I, parts=[STORED_WEIGHT])
    for e, (gate,), (up,), (down_e,) in reader.experts():
        gate_up[e, :I], gate_up[e, I:], down[e] = gate, up, down_e
    return gate_up, down
