"""Hugging Face checkpoints (docs/design.md section 4): read one MoE layer's routed experts, one expert at
a time, from a directory as save_pretrained writes it.

The directory holds either `model.safetensors` or shards listed by `model.safetensors.index.json`
(its "weight_map": tensor name -> shard file). Two naming schemes, detected from the layer's names:
  deepseek (DeepSeek, Qwen-MoE): model.layers.{L}.mlp.experts.{e}.{gate,up,down}_proj.weight
  mixtral:                       model.layers.{L}.block_sparse_moe.experts.{e}.{w1,w3,w2}.weight
with gate and up [I, H] and down [H, I]; BF16, F16 or F32 on disk, returned as bf16. A quantized
checkpoint (kt_moe.weights.checkpoint_formats: FP8, pack-quantized INT4) keeps each matrix as the
tensors `{module}.{suffix}` of its format's parts, returned as the parts the engine takes.

Files are opened with safetensors' safe_open (a memory map plus the JSON header): construction
reads headers only (names, shapes, dtypes); expert(e) reads that expert's three tensors and nothing
else, so peak memory stays near one expert whatever the size of the files. A file safetensors
cannot read (truncated, corrupt header) is a ValueError naming it (safetensors_errors).

list_moe_layers(directory) finds every layer with routed experts, its naming scheme, expert count
and sizes, from the tensor names and one header per layer.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from safetensors import safe_open

from kt_moe.weights.checkpoint_formats import StoredPart
from kt_moe.weights.safetensors_errors import damaged_file_errors

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# scheme -> (prefix of a layer's experts, with {L}; names of gate, up and down after "{e}.")
SCHEMES: Dict[str, Tuple[str, Tuple[str, str, str]]] = {
    "deepseek": ("model.layers.{L}.mlp.experts.", ("gate_proj", "up_proj", "down_proj")),
    "mixtral": ("model.layers.{L}.block_sparse_moe.experts.", ("w1", "w3", "w2")),
}
SUPPORTED_DTYPES = ("BF16", "F16", "F32")
MISSING_NAMES_SHOWN = 5
# an unquantized checkpoint: each matrix is its `weight`, handed out as contiguous bf16
BF16_WEIGHT = StoredPart("weight", SUPPORTED_DTYPES, lambda n, k: [(n, k)],
                         lambda t: t.to(torch.bfloat16).contiguous())


def read_weight_map(directory: Path) -> Tuple[Dict[str, Path], Optional[Path]]:
    """Tensor name -> file for every tensor of the checkpoint, and the index path (None without one)."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index with a 'weight_map' ({e!r})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise ValueError(f"{index}: 'weight_map' must map tensor names to shard file names")
        return {name: directory / file for name, file in weight_map.items()}, index
    single = directory / SINGLE_FILE
    if not single.is_file():
        raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")
    with damaged_file_errors(single), safe_open(single, framework="pt") as f:
        return {name: single for name in f.keys()}, None


def _detect_scheme(names: Iterable[str], layer_idx: int, directory: Path) -> str:
    found = [scheme for scheme, (prefix, _) in SCHEMES.items()
             if any(n.startswith(prefix.format(L=layer_idx)) for n in names)]
    if not found:
        examples = " or ".join(f"{prefix.format(L=layer_idx)}0.{projs[0]}.weight"
                               for prefix, projs in SCHEMES.values())
        raise ValueError(f"no expert weights for layer {layer_idx} in {directory}: expected names like {examples}")
    if len(found) > 1:
        raise ValueError(f"layer {layer_idx} in {directory} has expert weights under both naming schemes "
                         f"({' and '.join(found)})")
    return found[0]


class HFExpertReader:
    """One layer's routed experts of a Hugging Face checkpoint directory, validated at construction.

    `expert(e)` returns expert e's (gate [I, H], up [I, H], down [H, I]) as contiguous bf16 tensors
    of their own, or with `parts` (a quantized checkpoint's StoredPart list) each matrix as the list
    of its format's parts; `experts(order)` yields (e, gate, up, down) for the logical ids in
    `order`. Files are opened on first use and stay open until close(), the end of an experts()
    iteration or the end of a `with` block.
    """

    def __init__(self, weight_path: Union[str, os.PathLike], layer_idx: int, num_experts: int,
                 hidden_size: int, intermediate_size: int, parts: Optional[Sequence[StoredPart]] = None):
        self.directory = Path(weight_path)
        self.layer_idx, self.num_experts = layer_idx, num_experts
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.parts = tuple(parts) if parts is not None else None
        if not self.directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {self.directory}")
        weight_map, index = read_weight_map(self.directory)
        self.scheme = _detect_scheme(weight_map, layer_idx, self.directory)
        self._files: Dict[str, Path] = {}  # every needed tensor name -> its file, once validated
        self._check_tensors(weight_map, index)
        self._stack = contextlib.ExitStack()
        self._handles: Dict[Path, safe_open] = {}

    def _stored_parts(self) -> Tuple[StoredPart, ...]:
        return self.parts if self.parts is not None else (BF16_WEIGHT,)

    def tensor_names(self, e: int) -> Tuple[str, str, str]:
        """The checkpoint's names of expert e's gate, up and down weights (their first part)."""
        return tuple(names[0] for names in self.part_names(e))

    def part_names(self, e: int) -> Tuple[Tuple[str, ...], ...]:
        """The checkpoint's names of each part of expert e's gate, up and down."""
        prefix, projs = SCHEMES[self.scheme]
        return tuple(tuple(f"{prefix.format(L=self.layer_idx)}{e}.{proj}.{p.suffix}" for p in self._stored_parts())
                     for proj in projs)

    def _check_tensors(self, weight_map: Dict[str, Path], index: Optional[Path]) -> None:
        """Every needed name present in its file, with a supported dtype and an expected shape."""
        I, H = self.intermediate_size, self.hidden_size
        expected: Dict[str, Tuple[StoredPart, List[List[int]]]] = {}
        for e in range(self.num_experts):
            for names, (n, k) in zip(self.part_names(e), ((I, H), (I, H), (H, I))):
                for name, part in zip(names, self._stored_parts()):
                    expected[name] = (part, [list(shape) for shape in part.shapes(n, k)])
        missing = [name for name in expected if name not in weight_map]
        by_file: Dict[Path, List[str]] = {}
        for name in expected:
            if name in weight_map:
                by_file.setdefault(weight_map[name], []).append(name)
        for path, names in by_file.items():
            if not path.is_file():
                raise FileNotFoundError(f"shard {path} named by {index} not found")
            with damaged_file_errors(path), safe_open(path, framework="pt") as f:
                present = set(f.keys())
                for name in names:
                    if name not in present:
                        missing.append(name)
                        continue
                    tensor = f.get_slice(name)
                    dtype, shape = tensor.get_dtype(), list(tensor.get_shape())
                    part, shapes = expected[name]
                    if dtype not in part.dtypes:
                        raise ValueError(f"{name} in {path}: dtype {dtype} not supported "
                                         f"(expected one of {', '.join(part.dtypes)})")
                    if shape not in shapes:
                        raise ValueError(f"{name} in {path}: expected shape {' or '.join(map(str, shapes))}, "
                                         f"got {shape}")
                    self._files[name] = path
        if missing:
            shown = ", ".join(missing[:MISSING_NAMES_SHOWN]) + (", ..." if len(missing) > MISSING_NAMES_SHOWN else "")
            raise ValueError(f"{len(missing)} expert tensor(s) missing for layer {self.layer_idx} "
                             f"in {self.directory}: {shown}")

    def files(self) -> List[Path]:
        """The checkpoint files holding this layer's expert tensors, sorted."""
        return sorted(set(self._files.values()))

    def _check_id(self, e: int) -> int:
        if not 0 <= e < self.num_experts:
            raise ValueError(f"expert id {e} out of range [0, {self.num_experts})")
        return e

    def _read(self, name: str, part: StoredPart) -> torch.Tensor:
        path = self._files[name]
        with damaged_file_errors(path):
            if path not in self._handles:
                self._handles[path] = self._stack.enter_context(safe_open(path, framework="pt"))
            return part.to_part(self._handles[path].get_tensor(name))

    def describe(self, e: int) -> Tuple[str, str, str]:
        """How messages name expert e's gate, up and down: "gate of expert e (<tensor name> in <file>)"."""
        return tuple(names[0] for names in self.describe_parts(e))

    def describe_parts(self, e: int) -> Tuple[Tuple[str, ...], ...]:
        """The same for each part of each matrix (its own tensor name)."""
        return tuple(tuple(f"{matrix} of expert {e} ({name} in {self._files[name]})" for name in names)
                     for matrix, names in zip(("gate", "up", "down"), self.part_names(e)))

    def expert(self, e: int) -> Tuple:
        """Expert e's (gate [I, H], up [I, H], down [H, I]), read now: bf16 and contiguous, or with
        `parts` each matrix as the list of its parts."""
        matrices = [[self._read(name, part) for name, part in zip(names, self._stored_parts())]
                    for names in self.part_names(self._check_id(operator.index(e)))]
        return tuple(m if self.parts is not None else m[0] for m in matrices)

    def experts(self, order: Optional[Iterable[int]] = None
                ) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (e, gate, up, down) for each logical id e of `order` (default 0..E-1), repeats
        included; the ids are checked here, before any read. The files close when the iteration ends."""
        ids = [self._check_id(operator.index(e)) for e in (range(self.num_experts) if order is None else order)]
        return self._iterate(ids)

    def _iterate(self, ids: List[int]) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        try:
            for e in ids:
                yield (e, *self.expert(e))
        finally:
            self.close()

    def close(self) -> None:
        """Close the open files; a later read opens them again."""
        self._handles.clear()
        self._stack.close()

    def __enter__(self) -> "HFExpertReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@dataclass(frozen=True)
class MoELayerInfo:
    """A layer with routed experts, as found in a checkpoint's tensor names and headers."""

    layer_idx: int
    scheme: str  # "deepseek" or "mixtral"
    num_experts: int  # highest expert id + 1
    hidden_size: int
    intermediate_size: int


def _gate_pattern(scheme: str) -> "re.Pattern[str]":
    """Matches the gate weight names of a naming scheme, capturing (layer, expert)."""
    prefix, projs = SCHEMES[scheme]
    return re.compile(re.escape(prefix).replace(re.escape("{L}"), r"(\d+)") + rf"(\d+)\.{projs[0]}\.weight")


def list_moe_layers(weight_path: Union[str, os.PathLike]) -> List[MoELayerInfo]:
    """Every layer of the checkpoint directory with routed experts, in layer order. The expert count
    is the highest expert id + 1 and the sizes come from the lowest id's gate weight [I, H]; only
    tensor names and one header per layer are read (HFExpertReader checks the rest)."""
    directory = Path(weight_path)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    weight_map, index = read_weight_map(directory)
    experts: Dict[int, Dict[str, List[int]]] = {}  # layer -> scheme -> expert ids
    for scheme in SCHEMES:
        pattern = _gate_pattern(scheme)
        for name in weight_map:
            match = pattern.fullmatch(name)
            if match:
                experts.setdefault(int(match[1]), {}).setdefault(scheme, []).append(int(match[2]))
    layers = []
    for layer_idx in sorted(experts):
        scheme = _detect_scheme(weight_map, layer_idx, directory)
        ids = experts[layer_idx][scheme]
        prefix, projs = SCHEMES[scheme]
        gate = f"{prefix.format(L=layer_idx)}{min(ids)}.{projs[0]}.weight"
        if not weight_map[gate].is_file():
            raise FileNotFoundError(f"shard {weight_map[gate]} named by {index} not found")
        with damaged_file_errors(weight_map[gate]), safe_open(weight_map[gate], framework="pt") as f:
            shape = f.get_slice(gate).get_shape()
        if len(shape) != 2:
            raise ValueError(f"{gate} in {weight_map[gate]}: expected a matrix [I, H], got shape {list(shape)}")
        layers.append(MoELayerInfo(layer_idx, scheme, max(ids) + 1, hidden_size=shape[1], intermediate_size=shape[0]))
    return layers
