"""Write small Hugging Face checkpoints for the tests, the way save_pretrained lays them out: one
`model.safetensors`, or shards `model-0000k-of-0000n.safetensors` listed by
`model.safetensors.index.json`. Tests import it as `from hf_fixtures import write_hf_checkpoint`.

The tensor names are spelled here independently of kt_moe.weights, so the tests check the
reader's naming against a second copy of docs/design.md section 4.
"""

import json
import math
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
from safetensors.torch import save_file

EXPERT_NAMES = {
    "deepseek": tuple(f"model.layers.{{L}}.mlp.experts.{{e}}.{p}.weight"
                      for p in ("gate_proj", "up_proj", "down_proj")),
    "mixtral": tuple(f"model.layers.{{L}}.block_sparse_moe.experts.{{e}}.{w}.weight" for w in ("w1", "w3", "w2")),
}


def expert_tensor_names(layer: int, e: int, scheme: str = "deepseek") -> Tuple[str, str, str]:
    """Names of (gate, up, down) of expert e of a layer under a naming scheme."""
    return tuple(name.format(L=layer, e=e) for name in EXPERT_NAMES[scheme])


def random_layers(layers: Iterable[int], experts: int, hidden: int, inter: int, seed: int = 0
                  ) -> Dict[int, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """{layer: (gate [E, I, H], up [E, I, H], down [E, H, I])} of N(0, 1) fp32 values, different per
    layer, for write_hf_checkpoint."""
    g = torch.Generator().manual_seed(seed)
    return {layer: (torch.randn(experts, inter, hidden, generator=g), torch.randn(experts, inter, hidden, generator=g),
                    torch.randn(experts, hidden, inter, generator=g)) for layer in layers}


def write_hf_checkpoint(directory, layers: Mapping[int, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                        scheme: str = "deepseek", dtype: torch.dtype = torch.bfloat16, shards: int = 1,
                        extra: Optional[Dict[str, torch.Tensor]] = None, drop: Iterable[str] = ()) -> Path:
    """Write `layers` ({layer: (gate [E, I, H], up [E, I, H], down [E, H, I])}, stored per expert in
    `dtype`) plus the `extra` tensors (stored as given) into `directory`, leaving out the names in
    `drop`. shards > 1 splits the tensors, in order (layers, then extra), into that many files of
    consecutive names, so a layer's experts span files. Returns the directory."""
    tensors: Dict[str, torch.Tensor] = {}
    for layer, stacked in layers.items():
        for e in range(stacked[0].shape[0]):
            for name, w in zip(expert_tensor_names(layer, e, scheme), stacked):
                tensors[name] = w[e].to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)
    tensors.update(extra or {})
    for name in drop:
        del tensors[name]
    return save_tensors(directory, tensors, shards)


def save_tensors(directory, tensors: Mapping[str, torch.Tensor], shards: int = 1) -> Path:
    """Write `tensors` (name -> contiguous tensor, stored as given) into `directory` as save_pretrained
    does: one `model.safetensors`, or (shards > 1) that many files of consecutive names listed by
    `model.safetensors.index.json`. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if shards == 1:
        save_file(dict(tensors), directory / "model.safetensors", metadata={"format": "pt"})
        return directory
    names, weight_map = list(tensors), {}
    per_shard = math.ceil(len(names) / shards)
    for k in range(shards):
        file, part = f"model-{k + 1:05d}-of-{shards:05d}.safetensors", names[k * per_shard:(k + 1) * per_shard]
        save_file({n: tensors[n] for n in part}, directory / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total_size = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return directory
