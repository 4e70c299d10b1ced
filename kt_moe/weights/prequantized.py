"""Our pre-quantized expert files (docs/design.md section 4): one safetensors file per MoE layer holding
the layer's routed experts in a kt_moe.quant scheme, as `kt-moe convert` writes them.

    {directory}/layer_{L:04d}.safetensors       one file per layer L; one method per directory

Tensors, for expert e in 0..E-1, matrix m in gate, up, down and each part of the method's scheme
(int8_channel: q, scale; int4_group16: codes, scale, zero; int4_kgroup: codes, scale and, with zero
points, zero):

    experts.{e}.{m}.{part}      gate and up quantize W [I, H], down quantizes W [H, I]

Metadata (the safetensors __metadata__, every value a string):

    format             "kt-moe-prequantized"
    format_version     "2" (FORMAT_VERSION; a reader refuses any other version; version 1 held the
                       earlier int4_group32 scheme)
    method, scheme     e.g. "AMXINT4", "int4_group16"; AMXINT8_SFT and AMXINT4_SFT store the schemes of
                       AMXINT8 and AMXINT4 and share their files, which name the inference method
    group_size         inputs per scale: "16", or "0" for one scale per output channel
    zero_point         int4_kgroup only: "true" (a zero point per group) or "false" (symmetric)
    layer_idx, num_experts, hidden_size, intermediate_size
    tensor_parallel    "unsplit": every matrix is stored whole; engines slice it per subpool
    source             the identity of the checkpoint the layer was converted from (opaque here)
    checksum           "sha256:<hex>" of the tensors' bytes, taken in sorted tensor-name order

A reader checks the metadata against the settings it is asked for (PrequantizedMismatchError, a
ValueError listing every differing key) and every tensor's name, shape and dtype from the header
(PrequantizedCorruptError), all without reading data; verify() and verified_experts() also check the
checksum, and every expert read has its scales checked for NaN and infinity (ValueError). Files are
written to `<name>.partial` and renamed into place, so a file under the final name is complete
unless something damaged it afterwards.

The checksum covers the tensors in sorted name order, which groups them by expert: "experts.1." sorts
before "experts.10." ("." before digits), so the experts come in the order of the strings of their
ids (0, 1, 10, 11, ..., 2, 20, ...), each with its tensors sorted (down, gate, up; parts by name).
verified_experts() reads the file once in that order, hashing as it goes.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kt_moe.quant import QuantScheme, scheme_for_method
from kt_moe.quant.schemes import PartSpec
from kt_moe.tensor_checks import check_finite
from kt_moe.weights.safetensors_errors import damaged_file_errors

FORMAT = "kt-moe-prequantized"
FORMAT_VERSION = 2
MATRICES = ("gate", "up", "down")
TENSOR_PARALLEL = "unsplit"
PARTIAL_SUFFIX = ".partial"
SAFETENSORS_DTYPES = {torch.int8: "I8", torch.uint8: "U8", torch.float16: "F16", torch.float32: "F32"}
NAMES_SHOWN = 5
# SFT methods that store an inference method's scheme read and write that method's files.
FILE_METHODS = {"AMXINT8_SFT": "AMXINT8", "AMXINT4_SFT": "AMXINT4"}

ExpertParts = Dict[str, Tuple[torch.Tensor, ...]]  # matrix ("gate", "up", "down") -> the scheme's parts


class PrequantizedMismatchError(ValueError):
    """The file was written for other settings (method, scheme, shapes, layer, format version, ...)."""


class PrequantizedCorruptError(ValueError):
    """The file is unreadable, incomplete, or its contents do not match its header or checksum."""


def layer_file(directory: Union[str, os.PathLike], layer_idx: int) -> Path:
    """The file holding layer `layer_idx` in `directory`."""
    return Path(directory) / f"layer_{layer_idx:04d}.safetensors"


def tensor_name(e: int, matrix: str, part: str) -> str:
    return f"experts.{e}.{matrix}.{part}"


@dataclass(frozen=True)
class LayerSettings:
    """What a layer file is written for; the method (with the group_size and zero_point of AMXINT4
    and AMXINT4_KGroup_SFT, None for their defaults) decides the scheme."""

    method: str
    layer_idx: int
    num_experts: int
    hidden_size: int
    intermediate_size: int
    group_size: Optional[int] = None
    zero_point: Optional[bool] = None

    def __post_init__(self):
        scheme_for_method(self.method, self.group_size, self.zero_point)  # ValueError: no scheme, or bad options
        for name in ("layer_idx", "num_experts", "hidden_size", "intermediate_size"):
            value, low = getattr(self, name), 0 if name == "layer_idx" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    @property
    def scheme(self) -> QuantScheme:
        return scheme_for_method(self.method, self.group_size, self.zero_point)

    @property
    def file_method(self) -> str:
        """The method the file is written under (FILE_METHODS)."""
        return FILE_METHODS.get(self.method, self.method)

    def convert_command(self) -> str:
        """The `kt-moe convert` options that write a file for these settings."""
        scheme, options = self.scheme, f"--method {self.file_method}"
        if scheme.zero_point is not None:
            options += f" --group-size {scheme.group_size} --{'' if scheme.zero_point else 'no-'}zero-point"
        return options

    def matrix_shapes(self) -> Dict[str, Tuple[int, int]]:
        """matrix -> the [N, K] it quantizes."""
        H, I = self.hidden_size, self.intermediate_size
        return {"gate": (I, H), "up": (I, H), "down": (H, I)}

    def tensor_specs(self) -> Dict[str, PartSpec]:
        """Every tensor name of the file -> (shape, dtype)."""
        specs = {m: self.scheme.part_specs(*shape) for m, shape in self.matrix_shapes().items()}
        return {tensor_name(e, m, part): spec for e in range(self.num_experts)
                for m in MATRICES for part, spec in specs[m].items()}

    def metadata(self, source: str) -> Dict[str, str]:
        """The metadata keys a file for these settings holds, checksum aside."""
        scheme = self.scheme
        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "method": self.file_method,
                    "scheme": scheme.name, "group_size": str(scheme.group_size),
                    "layer_idx": str(self.layer_idx), "num_experts": str(self.num_experts),
                    "hidden_size": str(self.hidden_size), "intermediate_size": str(self.intermediate_size),
                    "tensor_parallel": TENSOR_PARALLEL, "source": source}
        if scheme.zero_point is not None:
            metadata["zero_point"] = "true" if scheme.zero_point else "false"
        return metadata


def _shown(names: List[str]) -> str:
    return ", ".join(names[:NAMES_SHOWN]) + (", ..." if len(names) > NAMES_SHOWN else "")


def _hash_tensors(digest, tensors: Iterable[torch.Tensor]) -> None:
    """Feed the tensors' bytes, in the order given, to a hashlib digest."""
    for tensor in tensors:
        digest.update(tensor.contiguous().view(torch.uint8).numpy())


def checksum(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 of the tensors' bytes in the order given (the file's: sorted by name), as "sha256:<hex>"."""
    digest = hashlib.sha256()
    _hash_tensors(digest, tensors)
    return f"sha256:{digest.hexdigest()}"


def checksum_order(num_experts: int) -> List[int]:
    """Expert ids in the order the checksum covers their tensors (module docstring)."""
    return sorted(range(num_experts), key=lambda e: f"experts.{e}.")


def write_layer(directory: Union[str, os.PathLike], settings: LayerSettings, experts: Sequence[ExpertParts],
                source: str) -> Path:
    """Write one layer's file: experts[e][matrix] holds the scheme's parts of that matrix (each a
    tensor of its own). The file appears under its final name only once complete. Returns its path."""
    if len(experts) != settings.num_experts:
        raise ValueError(f"experts must hold {settings.num_experts} experts, got {len(experts)}")
    parts = settings.scheme.parts
    tensors = {tensor_name(e, m, part): t for e, expert in enumerate(experts)
               for m in MATRICES for part, t in zip(parts, expert[m])}
    for name, (shape, dtype) in settings.tensor_specs().items():
        got = tensors.get(name)
        if got is None or tuple(got.shape) != shape or got.dtype != dtype:
            found = "missing" if got is None else f"{got.dtype} {tuple(got.shape)}"
            raise ValueError(f"{name} must be {dtype} {shape} for {settings.file_method}, got {found}")
    metadata = settings.metadata(source)
    metadata["checksum"] = checksum(tensors[name] for name in sorted(tensors))
    path = layer_file(directory, settings.layer_idx)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        save_file(tensors, partial, metadata=metadata)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


class PrequantizedLayerReader:
    """One layer's file, checked at construction against the settings asked for (and the source
    identity, when given) without reading any tensor data.

    `expert(e)` returns {matrix: parts} for expert e, read now through the memory map;
    `experts(order)` yields (e, {matrix: parts}); `stacked(order)` stacks them into [E', ...] parts.
    The file stays open until close() or the end of a `with` block."""

    def __init__(self, weight_path: Union[str, os.PathLike], layer_idx: int, num_experts: int, hidden_size: int,
                 intermediate_size: int, method: str, source: Optional[str] = None, group_size: Optional[int] = None,
                 zero_point: Optional[bool] = None):
        self.settings = LayerSettings(method, layer_idx, num_experts, hidden_size, intermediate_size, group_size,
                                      zero_point)
        self.path = layer_file(weight_path, layer_idx)
        if not self.path.is_file():
            raise FileNotFoundError(f"pre-quantized file for layer {layer_idx} not found: {self.path} "
                                    f"(write it with: kt-moe convert {self.settings.convert_command()})")
        self._stack = contextlib.ExitStack()
        with damaged_file_errors(self.path, PrequantizedCorruptError):
            self._file = self._stack.enter_context(safe_open(self.path, framework="pt"))
        try:
            self.metadata = self._file.metadata() or {}
            self._check_metadata(source)
            self._check_tensors()
        except ValueError:
            self.close()
            raise

    def _check_metadata(self, source: Optional[str]) -> None:
        expected = self.settings.metadata("" if source is None else source)
        if source is None:
            del expected["source"]
        differing = [f"{key}={self.metadata[key]!r} (expected {value!r})" if key in self.metadata
                     else f"{key} missing (expected {value!r})"
                     for key, value in expected.items() if self.metadata.get(key) != value]
        if differing:
            raise PrequantizedMismatchError(f"{self.path} was written for other settings: {', '.join(differing)}")
        if not self.metadata.get("checksum", "").startswith("sha256:"):
            raise PrequantizedCorruptError(f"{self.path}: no sha256 checksum in its metadata")

    def _check_tensors(self) -> None:
        specs = self.settings.tensor_specs()
        present = set(self._file.keys())
        missing = [name for name in specs if name not in present]
        unexpected = sorted(present - specs.keys())
        if missing or unexpected:
            problems = ([f"{len(missing)} tensor(s) missing: {_shown(missing)}"] if missing else []) + \
                       ([f"{len(unexpected)} unexpected tensor(s): {_shown(unexpected)}"] if unexpected else [])
            raise PrequantizedCorruptError(f"{self.path}: {'; '.join(problems)}")
        for name, (shape, dtype) in specs.items():
            info = self._file.get_slice(name)
            got_shape, got_dtype = tuple(info.get_shape()), info.get_dtype()
            if got_shape != shape or got_dtype != SAFETENSORS_DTYPES[dtype]:
                raise PrequantizedCorruptError(f"{self.path}: {name} is {got_dtype} {got_shape}, "
                                               f"expected {SAFETENSORS_DTYPES[dtype]} {shape}")

    def verify(self) -> None:
        """Read every tensor and compare the checksum; PrequantizedCorruptError when it differs."""
        for _ in self.verified_experts(()):
            pass

    def verified_experts(self, wanted: Iterable[int]) -> Iterator[Tuple[int, ExpertParts]]:
        """(e, expert(e)) for each distinct id e of `wanted`, while reading every tensor of the file
        once in checksum order (so the experts come in that order); after the last,
        PrequantizedCorruptError when the checksum differs (the experts handed out came from a
        damaged file: their consumer must drop them)."""
        wanted = set(self._check_id(e) for e in wanted)
        digest = hashlib.sha256()
        for e in checksum_order(self.settings.num_experts):
            tensors = self._read_tensors(e)
            _hash_tensors(digest, (tensors[name] for name in sorted(tensors)))
            if e in wanted:
                yield e, self._parts(e, tensors)
        got = f"sha256:{digest.hexdigest()}"
        if got != self.metadata["checksum"]:
            raise PrequantizedCorruptError(f"{self.path}: checksum mismatch (the file is damaged): "
                                           f"header {self.metadata['checksum']}, contents {got}")

    def _check_id(self, e: int) -> int:
        e = operator.index(e)
        if not 0 <= e < self.settings.num_experts:
            raise ValueError(f"expert id {e} out of range [0, {self.settings.num_experts})")
        return e

    def _read_tensors(self, e: int) -> Dict[str, torch.Tensor]:
        """Expert e's tensors by name, read now."""
        names = [tensor_name(e, m, part) for m in MATRICES for part in self.settings.scheme.parts]
        with damaged_file_errors(self.path, PrequantizedCorruptError):
            return {name: self._file.get_tensor(name) for name in names}

    def _parts(self, e: int, tensors: Dict[str, torch.Tensor]) -> ExpertParts:
        """Expert e's {matrix: parts} from its tensors; ValueError naming the file and the tensor when a
        scale holds NaN or infinity."""
        parts = self.settings.scheme.parts
        for m in MATRICES:
            check_finite(tensors[tensor_name(e, m, "scale")], f"{self.path}: {tensor_name(e, m, 'scale')} "
                                                              f"({m} scale of expert {e})")
        return {m: tuple(tensors[tensor_name(e, m, part)] for part in parts) for m in MATRICES}

    def expert(self, e: int) -> ExpertParts:
        """Expert e's {matrix: parts}, in the scheme's part order (scales checked as _parts says)."""
        e = self._check_id(e)
        return self._parts(e, self._read_tensors(e))

    def experts(self, order: Optional[Iterable[int]] = None) -> Iterator[Tuple[int, ExpertParts]]:
        """(e, expert(e)) for each id of `order` (default 0..E-1)."""
        for e in range(self.settings.num_experts) if order is None else order:
            yield e, self.expert(e)

    def stacked(self, order: Optional[Iterable[int]] = None) -> ExpertParts:
        """{matrix: parts stacked to [E', ...]} for the ids of `order` (default 0..E-1)."""
        experts = [parts for _, parts in self.experts(order)]
        count = len(self.settings.scheme.parts)
        return {m: tuple(torch.stack([parts[m][i] for parts in experts]) for i in range(count)) for m in MATRICES}

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "PrequantizedLayerReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
