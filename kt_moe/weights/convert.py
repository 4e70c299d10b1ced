"""The converter behind `kt-moe convert`: quantize a Hugging Face checkpoint's routed experts into
our pre-quantized files (kt_moe.weights.prequantized), one layer at a time.

Per selected layer: read the experts one at a time with HFExpertReader (bf16, the values an online
load quantizes, so a converted file equals online quantization of the same checkpoint), quantize
gate, up and down with the method's scheme (kt_moe.quant), then write the layer's file, which
appears under its final name only once complete. Peak memory: one layer's quantized tensors plus
the expert being quantized.

Rerunning the same command resumes. For a layer whose file already exists:
  - metadata matching the settings and the source identity, checksum verified: skipped;
  - unreadable, incomplete or failing its checksum: rewritten;
  - written for other settings or from another source: every such file is reported in one
    ValueError before anything is converted; force=True rewrites them instead.
The source identity is the names and sizes of the checkpoint files holding the layer: it tells
another model or layout apart, not a same-shaped checkpoint with other values (convert that into
another directory, or with force).
"""

from __future__ import annotations

import bisect
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from kt_moe.config import INT32_MAX
from kt_moe.quant import METHOD_SCHEMES, scheme_for_method
from kt_moe.weights.checkpoint_formats import CHECKPOINT_METHODS
from kt_moe.weights.hf_checkpoint import HFExpertReader, MoELayerInfo, list_moe_layers
from kt_moe.weights.prequantized import (MATRICES, ExpertParts, LayerSettings, PrequantizedCorruptError,
                                         PrequantizedLayerReader, PrequantizedMismatchError, layer_file,
                                         write_layer)

Progress = Callable[[int, int, str], None]  # (experts done, experts in all, what is happening now)
# The methods convert writes files for: those with a scheme, but not FP8, AMXFP8_SFT and RAWINT4,
# which read the quantized checkpoints people download in place (kt_moe.weights.checkpoint_formats).
CONVERT_METHODS = tuple(m for m in METHOD_SCHEMES if m not in CHECKPOINT_METHODS)


@dataclass(frozen=True)
class LayerResult:
    """What the converter did with one layer. action: "written" (no file before), "skipped" (the
    file verified), "rewritten" (the file was damaged), "replaced" (other settings, with force).
    weight_bytes: the bf16 bytes of the experts read and quantized (0 when skipped); seconds: the
    time the layer took (reading, quantizing and writing it, or verifying its file)."""

    layer_idx: int
    action: str
    path: Path
    weight_bytes: int = 0
    seconds: float = 0.0


# what becomes of a layer, by the state of its existing file ("match" turns "rewritten" if it fails
# its checksum)
ACTIONS = {"none": "written", "corrupt": "rewritten", "mismatch": "replaced", "match": "skipped"}


@dataclass(frozen=True)
class _Plan:
    settings: LayerSettings
    reader: HFExpertReader  # checked; it opens the checkpoint's files only when experts are read
    source: str
    existing: str  # the layer's file: "none", "match" (header matches; verify), "corrupt" or "mismatch"
    problem: str = ""  # why, for "mismatch"


class LayerRanges:
    """Layer ids as sorted, disjoint inclusive ranges, never expanded: "0-400000000" is one pair.
    Iterating yields the ids in order; `in` and str() ("1-3, 7") work on the ranges."""

    def __init__(self, ranges: Iterable[Tuple[int, int]]):
        merged: List[List[int]] = []
        for low, high in sorted(ranges):
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        self.ranges = [(low, high) for low, high in merged]

    @classmethod
    def of(cls, layers: Iterable[int]) -> "LayerRanges":
        return cls((layer, layer) for layer in layers)

    def __iter__(self) -> Iterator[int]:
        for low, high in self.ranges:
            yield from range(low, high + 1)

    def __contains__(self, layer: int) -> bool:
        i = bisect.bisect_right(self.ranges, (layer, float("inf"))) - 1
        return i >= 0 and self.ranges[i][0] <= layer <= self.ranges[i][1]

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def without(self, layers: Iterable[int]) -> "LayerRanges":
        """The ids here that are not in `layers`."""
        gaps, present = [], sorted(set(layers))
        for low, high in self.ranges:
            for layer in present[bisect.bisect_left(present, low):bisect.bisect_right(present, high)]:
                if layer > low:
                    gaps.append((low, layer - 1))
                low = layer + 1
            if low <= high:
                gaps.append((low, high))
        return LayerRanges(gaps)

    def __str__(self) -> str:
        return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in self.ranges)


def parse_layers(text: str) -> LayerRanges:
    """Layer ids from "A", "A-B" (inclusive) or a comma-separated list of those; ids above
    INT32_MAX (what a layer_idx can be) are refused."""
    ranges = []
    for item in text.split(","):
        bounds = [b.strip() for b in item.strip().split("-")]
        if len(bounds) > 2 or not all(b.isascii() and b.isdigit() for b in bounds):
            raise ValueError(f"expected a layer, a range A-B or a comma-separated list of them, got {text!r}")
        for b in bounds:
            if len(b) > len(str(INT32_MAX)) or int(b) > INT32_MAX:
                raise ValueError(f"layer {b} is out of range: layer ids go up to {INT32_MAX}")
        low, high = int(bounds[0]), int(bounds[-1])
        if low > high:
            raise ValueError(f"range {item.strip()!r} is empty (start after end)")
        ranges.append((low, high))
    return LayerRanges(ranges)


def format_layers(layers: Iterable[int]) -> str:
    """Layer ids as ranges: [1, 2, 3, 7] -> "1-3, 7"."""
    return str(LayerRanges.of(layers))


def source_identity(directory: Path, files: Sequence[Path]) -> str:
    """The recorded identity of a layer's source: its files' names (relative to the checkpoint
    directory) and sizes, as compact JSON."""
    return json.dumps({"files": {str(f.relative_to(directory)): f.stat().st_size for f in files}},
                      sort_keys=True, separators=(",", ":"))


def _select(infos: List[MoELayerInfo], layers: Optional[Iterable[int]], directory: Path) -> List[MoELayerInfo]:
    if not infos:
        raise ValueError(f"no routed-expert weights found in {directory} (expected names like "
                         "model.layers.{L}.mlp.experts.{e}.gate_proj.weight or "
                         "model.layers.{L}.block_sparse_moe.experts.{e}.w1.weight)")
    if layers is None:
        return infos
    by_layer = {info.layer_idx: info for info in infos}
    wanted = layers if isinstance(layers, LayerRanges) else LayerRanges.of(layers)
    absent = wanted.without(by_layer)
    if absent:
        raise ValueError(f"layer(s) {absent} have no routed experts in {directory}; "
                         f"its MoE layers are {format_layers(by_layer)}")
    return [by_layer[layer] for layer in sorted(by_layer) if layer in wanted]


def _open_existing(output: Path, settings: LayerSettings, source: str) -> PrequantizedLayerReader:
    return PrequantizedLayerReader(output, settings.layer_idx, settings.num_experts, settings.hidden_size,
                                   settings.intermediate_size, settings.method, source=source,
                                   group_size=settings.group_size, zero_point=settings.zero_point)


def _plan(source_dir: Path, output: Path, method: str, options: dict, info: MoELayerInfo) -> _Plan:
    """The layer's settings, checked source reader and identity, and the state of its file in
    `output` (from the header only)."""
    settings = LayerSettings(method, info.layer_idx, info.num_experts, info.hidden_size, info.intermediate_size,
                             **options)
    reader = HFExpertReader(source_dir, info.layer_idx, info.num_experts, info.hidden_size, info.intermediate_size)
    source = source_identity(source_dir, reader.files())
    try:
        _open_existing(output, settings, source).close()
    except FileNotFoundError:
        return _Plan(settings, reader, source, "none")
    except PrequantizedMismatchError as exc:
        return _Plan(settings, reader, source, "mismatch", str(exc))
    except PrequantizedCorruptError:
        return _Plan(settings, reader, source, "corrupt")
    return _Plan(settings, reader, source, "match")


def _verified(output: Path, plan: _Plan) -> bool:
    """Whether the layer's file (whose header matched) passes its checksum."""
    with _open_existing(output, plan.settings, plan.source) as existing:
        try:
            existing.verify()
        except PrequantizedCorruptError:
            return False
    return True


def _mismatch_message(plans: List[_Plan]) -> str:
    """The first mismatching file's problem, the other such layers and what to do."""
    others = [plan.settings.layer_idx for plan in plans[1:]]
    more = f" (so were the files of layer(s) {format_layers(others)})" if others else ""
    return f"{plans[0].problem}{more}; use another output directory, or --force to overwrite"


def _quantized_experts(plan: _Plan, report: Progress, done: int, total: int) -> Tuple[List[ExpertParts], int]:
    """(the layer's experts, read one at a time and quantized, the bf16 bytes read); progress
    reported after each expert."""
    L, E = plan.settings.layer_idx, plan.settings.num_experts
    quantize, experts, weight_bytes = plan.settings.scheme.quantize, [], 0
    report(done, total, f"layer {L}: quantizing (0/{E})")
    for _, *weights in plan.reader.experts():
        experts.append({m: quantize(w) for m, w in zip(MATRICES, weights)})
        weight_bytes += sum(w.numel() * w.element_size() for w in weights)
        report(done + len(experts), total, f"layer {L}: quantizing ({len(experts)}/{E})")
    return experts, weight_bytes


def convert_checkpoint(input_dir: Union[str, os.PathLike], output_dir: Union[str, os.PathLike], method: str,
                       layers: Optional[Iterable[int]] = None, force: bool = False,
                       progress: Optional[Progress] = None, group_size: Optional[int] = None,
                       zero_point: Optional[bool] = None) -> List[LayerResult]:
    """Convert the routed experts of the checkpoint in `input_dir` (every MoE layer, or `layers`:
    ids, or a LayerRanges such as parse_layers("0-60"); each must be a MoE layer there) to
    `method` (one of CONVERT_METHODS; AMXINT8_SFT and AMXINT4_SFT write the files
    of AMXINT8 and AMXINT4) in `output_dir` (created if needed), resuming as the module docstring
    describes. group_size and zero_point: the scheme options of AMXINT4 and AMXINT4_KGroup_SFT
    (None for the defaults; ValueError with another method). `progress(done, total, message)` is called as
    experts are quantized. Returns one LayerResult per layer, in layer order."""
    scheme_for_method(method, group_size, zero_point)  # ValueError before anything is read
    if method not in CONVERT_METHODS:
        raise ValueError(f"method '{method}' reads quantized checkpoints in place with load_weights (nothing to "
                         f"convert); convert writes files for {', '.join(CONVERT_METHODS)}")
    options = dict(group_size=group_size, zero_point=zero_point)
    source_dir, output = Path(input_dir), Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} exists and is not a directory")
    report = progress or (lambda done, total, message: None)
    plans = [_plan(source_dir, output, method, options, info)
             for info in _select(list_moe_layers(source_dir), layers, source_dir)]
    mismatched = [plan for plan in plans if plan.existing == "mismatch"]
    if mismatched and not force:
        raise ValueError(_mismatch_message(mismatched))
    output.mkdir(parents=True, exist_ok=True)

    results, done, total = [], 0, sum(plan.settings.num_experts for plan in plans)
    for plan in plans:
        L, E, action = plan.settings.layer_idx, plan.settings.num_experts, ACTIONS[plan.existing]
        start = time.perf_counter()
        if plan.existing == "match":
            report(done, total, f"layer {L}: verifying the existing file")
            if _verified(output, plan):
                done += E
                report(done, total, f"layer {L}: verified, skipped")
                results.append(LayerResult(L, action, layer_file(output, L), seconds=time.perf_counter() - start))
                continue
            action = "rewritten"
        experts, weight_bytes = _quantized_experts(plan, report, done, total)
        done += E
        report(done, total, f"layer {L}: writing")
        path = write_layer(output, plan.settings, experts, plan.source)
        results.append(LayerResult(L, action, path, weight_bytes, time.perf_counter() - start))
    return results
