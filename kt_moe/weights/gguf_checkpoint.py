"""GGUF model files as llama.cpp writes them (the LLAMAFILE method): read one MoE layer's routed experts,
one expert at a time, in the ggml types they are stored in.

weight_path is a directory holding one GGUF model, the path of its `.gguf` file, or the path of a file
of a split set. A model is one file or a split set `<name>-00001-of-0000N.gguf` ...
`<name>-0000N-of-0000N.gguf` (llama.cpp's gguf-split, convert_hf_to_gguf.py --split-max-tensors): every
file of a set holds `split.no` (0-based), `split.count` (N) and `split.tensors.count` (the tensors of
all N files), the first also the model's metadata; each tensor is in one of the files. Metadata read
(from the first file; arch = `general.architecture`, e.g. "qwen3moe", "deepseek2"):

    {arch}.expert_count                E   routed experts per layer
    {arch}.expert_used_count           k   experts per token
    {arch}.embedding_length            H
    {arch}.expert_feed_forward_length  I   (a file without it, as Mixtral's with arch "llama":
                                            {arch}.feed_forward_length)

A layer L's routed experts are three tensors stacking the E experts along the outer dimension, each
in its own ggml type (Q4_K_M files: Q4_K gate and up, Q6_K down):

    blk.{L}.ffn_gate_exps.weight    [E, I, H]   GGUF lists dims innermost first: [H, I, E]
    blk.{L}.ffn_up_exps.weight      [E, I, H]
    blk.{L}.ffn_down_exps.weight    [E, H, I]   GGUF dims [I, H, E]

GGUFExperts.open(weight_path, layer_idx) finds the files and the layer's tensors and checks their
types (GGUF_TYPES) and shapes against the metadata; check_sizes compares the metadata with a layer's
constructor sizes. Each row of a matrix (its cols = H weights for gate and up, I for down) is cols /
block_size blocks of the type's bytes, an expert's rows one after the other, so raw(matrix, e) is a
view of the file's memory map, uint8 [rows, row_bytes], and nothing is copied; dequantized(matrix, e)
is gguf-py's gguf.quants.dequantize of those bytes, fp32 [rows, cols] (the oracle of the tests and the
reference).

Files are parsed with gguf-py's GGUFReader (a read-only memory map plus the header: metadata and
tensor infos); a file of the other byte order is refused. Parsing a real model's header takes
seconds (its tokenizer's 150k strings), so the most recently opened model stays parsed
(open_gguf_model, keyed by each file's path, inode, size and mtime) for the next layer. A file GGUFReader
cannot read (truncated, not GGUF) is a ValueError naming it (damaged_gguf_errors).

list_gguf_moe_layers(weight_path) lists the layers with routed expert tensors, from the names only.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf.gguf_reader import ReaderTensor
from gguf.quants import dequantize

SUPPORTED_TYPE_NAMES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
# ggml type name -> (weights per block, bytes per block), as gguf-py has them
GGUF_TYPES: Dict[str, Tuple[int, int]] = {
    name: tuple(GGML_QUANT_SIZES[GGMLQuantizationType[name]]) for name in SUPPORTED_TYPE_NAMES}

MATRICES = ("gate", "up", "down")
TENSOR_NAME = "blk.{L}.ffn_{matrix}_exps.weight"
EXPERT_TENSOR = re.compile(r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight")
SPLIT_FILE = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.gguf")  # llama.cpp's "%s-%05d-of-%05d.gguf"
ARCH_KEY = "general.architecture"
SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
# the layer's sizes: attribute -> (key after "{arch}.", the constructor parameter it is checked against)
SIZE_KEYS = {
    "expert_count": ("expert_count", "num_experts"),
    "expert_used_count": ("expert_used_count", "num_experts_per_tok"),
    "hidden": ("embedding_length", "hidden_size"),
    "intermediate": ("expert_feed_forward_length", "moe_intermediate_size"),
}
INTERMEDIATE_FALLBACK = "feed_forward_length"  # when a file has no expert_feed_forward_length
# matrix -> the size attributes of its logical dims [E, rows, cols], and how messages spell them
DIMS = {"gate": ("expert_count", "intermediate", "hidden"), "up": ("expert_count", "intermediate", "hidden"),
        "down": ("expert_count", "hidden", "intermediate")}
DIM_LETTERS = {"expert_count": "E", "intermediate": "I", "hidden": "H"}
# what GGUFReader raises on a file it cannot parse (bad magic, truncated header or data, garbage lengths)
READER_ERRORS = (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError)


@contextlib.contextmanager
def damaged_gguf_errors(path: Union[str, os.PathLike]) -> Iterator[None]:
    """Raise a ValueError naming `path` for an error GGUFReader raises inside the block (it never says
    which file it read)."""
    try:
        yield
    except READER_ERRORS as exc:
        raise ValueError(f"{path} is damaged: not a readable GGUF file ({type(exc).__name__}: {exc})") from None


# ---- finding the files ----

def _split_key(path: Path) -> Tuple[str, int]:
    """(name, file count) of the model a file belongs to: a split file's prefix and N, else (file name, 0)."""
    match = SPLIT_FILE.fullmatch(path.name)
    return (match[1], int(match[3])) if match else (path.name, 0)


def _split_set(path: Path) -> List[Path]:
    """The files of the model `path` is a file of: itself, or every file of its split set, in order."""
    match = SPLIT_FILE.fullmatch(path.name)
    if match is None:
        return [path]
    prefix, count = match[1], int(match[3])
    files = [path.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    for i, file in enumerate(files, 1):
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: file {i} of the split set of {path}")
    return files


def find_gguf_files(weight_path: Union[str, os.PathLike]) -> List[Path]:
    """The files of the GGUF model at weight_path (see the module docstring), the first first."""
    path = Path(weight_path)
    if path.is_file():
        return _split_set(path)
    if not path.is_dir():
        raise FileNotFoundError(f"GGUF model not found: {path} is neither a directory nor a file")
    found = sorted(p for p in path.iterdir() if p.suffix == ".gguf" and p.is_file())
    if not found:
        raise FileNotFoundError(f"no .gguf file in {path}")
    models = sorted({_split_key(p) for p in found})
    if len(models) > 1:
        names = ", ".join(f"{name}-*-of-{n:05d}.gguf" if n else name for name, n in models)
        raise ValueError(f"{path} holds {len(models)} GGUF models ({names}): pass the path of the model's file "
                         "(or of the first file of its split set) as weight_path")
    return _split_set(found[0])


# ---- reading them ----

def _metadata(reader: GGUFReader, key: str):
    """The value of metadata key `key`, or None when the file has no such key."""
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _metadata_int(reader: GGUFReader, key: str, path: Path, required: bool = True) -> Optional[int]:
    value = _metadata(reader, key)
    if value is None and not required:
        return None
    if value is None:
        raise ValueError(f"{path}: metadata key {key} missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: metadata key {key} must be an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class GGUFModel:
    """A GGUF model's files, parsed: their readers and where each tensor is."""

    files: Tuple[Path, ...]
    readers: Tuple[GGUFReader, ...]
    tensors: Dict[str, Tuple[Path, ReaderTensor]]  # tensor name -> (its file, its gguf-py ReaderTensor)

    @property
    def first(self) -> GGUFReader:
        """The reader of the file holding the model's metadata."""
        return self.readers[0]

    def describe_files(self) -> str:
        """How messages name the model: its file, or the first of its split set."""
        if len(self.files) == 1:
            return str(self.files[0])
        return f"{self.files[0]} (and the {len(self.files) - 1} other files of its split set)"

    def moe_layers(self) -> List[int]:
        """The layers with routed expert tensors (any of the three), in order."""
        return sorted({int(m[1]) for m in map(EXPERT_TENSOR.fullmatch, self.tensors) if m})


def _check_split(files: Sequence[Path], readers: Sequence[GGUFReader]) -> None:
    """The split keys of every file agree with the file names: split.no i - 1 in file i, split.count
    N in each, split.tensors.count the tensors of all N; a file not named as a split file holds no
    more than one split."""
    count = len(files)
    if count == 1:
        n = _metadata_int(readers[0], SPLIT_COUNT, files[0], required=False)
        if n is not None and n > 1:
            raise ValueError(f"{files[0]}: {SPLIT_COUNT} is {n}, but the file is named as a single file: pass "
                             f"a split set named <name>-00001-of-{n:05d}.gguf ... <name>-{n:05d}-of-{n:05d}.gguf")
        return
    for i, (file, reader) in enumerate(zip(files, readers)):
        for key, want in ((SPLIT_NO, i), (SPLIT_COUNT, count)):
            got = _metadata_int(reader, key, file)
            if got != want:
                raise ValueError(f"{file}: {key} is {got}, but the file name says {want} "
                                 f"(file {i + 1} of a split set of {count})")
    total = _metadata_int(readers[0], SPLIT_TENSORS, files[0])
    found = sum(len(r.tensors) for r in readers)
    if total != found:
        raise ValueError(f"{files[0]}: {SPLIT_TENSORS} is {total}, but the {count} files hold {found} tensors")


@functools.lru_cache(maxsize=1)
def _parse(stamps: Tuple[Tuple[str, int, int, int], ...]) -> GGUFModel:
    """The model of the files in `stamps` ((path, inode, size, mtime_ns) each), parsed; cached, so that
    the layers of one model share one parse, and a file replaced or rewritten since is parsed again."""
    files = tuple(Path(stamp[0]) for stamp in stamps)
    readers = []
    for file in files:
        with damaged_gguf_errors(file):
            readers.append(GGUFReader(file, "r"))
        if readers[-1].byte_order != "I":  # blocks of the other byte order: every fp16 scale would be wrong
            raise ValueError(f"{file} is a {readers[-1].endianess.name.lower()}-endian GGUF file; this machine is "
                             f"{sys.byteorder}-endian and reads only files of its own byte order")
    _check_split(files, readers)
    tensors: Dict[str, Tuple[Path, ReaderTensor]] = {}
    for file, reader in zip(files, readers):
        for tensor in reader.tensors:
            if tensor.name in tensors:
                raise ValueError(f"tensor {tensor.name} is in both {tensors[tensor.name][0]} and {file}")
            tensors[tensor.name] = (file, tensor)
    return GGUFModel(files, tuple(readers), tensors)


def open_gguf_model(weight_path: Union[str, os.PathLike]) -> GGUFModel:
    """The GGUF model at weight_path, parsed (or the parse of the previous call, when it was this
    model's and no file changed since)."""
    stamps = []
    for file in find_gguf_files(weight_path):
        stat = file.stat()
        stamps.append((str(file), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return _parse(tuple(stamps))


def list_gguf_moe_layers(weight_path: Union[str, os.PathLike]) -> List[int]:
    """The layers of the GGUF model at weight_path with routed expert tensors
    (blk.{L}.ffn_{gate,up,down}_exps.weight, any of the three), in order; names only, GGUFExperts
    checks the rest."""
    return open_gguf_model(weight_path).moe_layers()


# ---- one layer's experts ----

class GGUFExperts:
    """One layer's routed experts of a GGUF model, validated when opened (GGUFExperts.open).

    architecture, expert_count (E), expert_used_count (k), hidden (H), intermediate (I): from the
    metadata, which the tensors' shapes agree with; types: matrix ("gate", "up", "down") -> ggml type
    name. raw(matrix, e) is expert e's stored rows, uint8 [rows, row_bytes] (rows I for gate and up, H
    for down) sharing the read-only memory map; dequantized(matrix, e) is their values, fp32 [rows,
    cols]. check_sizes compares the metadata with a layer's constructor sizes.
    """

    def __init__(self, model: GGUFModel, layer_idx: int):
        self.model, self.layer_idx = model, operator.index(layer_idx)
        self.files = list(model.files)
        self.architecture = self._architecture()
        self.size_keys: Dict[str, str] = {}  # attribute -> the metadata key it was read from
        self.expert_count, self.expert_used_count, self.hidden, self.intermediate = map(self._size, SIZE_KEYS)
        self.tensor_names = {m: TENSOR_NAME.format(L=self.layer_idx, matrix=m) for m in MATRICES}
        self._tensors = self._find_tensors()
        self.types = {m: t.tensor_type.name for m, t in self._tensors.items()}
        self._check_types()
        self._check_shapes()
        self._check_used_count()

    @classmethod
    def open(cls, weight_path: Union[str, os.PathLike], layer_idx: int) -> "GGUFExperts":
        """Layer layer_idx's experts of the GGUF model at weight_path (a directory, a .gguf file or a
        file of a split set). ValueError for a damaged file, missing metadata or tensor, an
        unsupported type or shapes that disagree with the metadata; FileNotFoundError for a missing
        file."""
        return cls(open_gguf_model(weight_path), layer_idx)

    # -- validation --

    def _architecture(self) -> str:
        arch = _metadata(self.model.first, ARCH_KEY)
        if not isinstance(arch, str) or not arch:
            raise ValueError(f"{self.files[0]}: metadata key {ARCH_KEY} missing or not a string (got {arch!r})")
        return arch

    def _size(self, attr: str) -> int:
        """The metadata value of a size attribute (SIZE_KEYS), remembering the key it came from."""
        key = f"{self.architecture}.{SIZE_KEYS[attr][0]}"
        if attr == "intermediate" and _metadata(self.model.first, key) is None:
            fallback = f"{self.architecture}.{INTERMEDIATE_FALLBACK}"
            if _metadata(self.model.first, fallback) is None:
                raise ValueError(f"{self.files[0]}: metadata key {key} missing (and no {fallback} either)")
            key = fallback
        value = _metadata_int(self.model.first, key, self.files[0])
        if value < 1:
            raise ValueError(f"{self.files[0]}: metadata key {key} must be at least 1, got {value}")
        self.size_keys[attr] = key
        return value

    def _find_tensors(self) -> Dict[str, ReaderTensor]:
        missing = [name for name in self.tensor_names.values() if name not in self.model.tensors]
        if missing:
            layers = self.model.moe_layers()
            have = (f"layers with routed experts: {', '.join(map(str, layers))}" if layers
                    else "it has no routed expert tensors (blk.{L}.ffn_gate_exps.weight ...)")
            raise ValueError(f"layer {self.layer_idx}: {', '.join(missing)} not found in "
                             f"{', '.join(map(str, self.files))} ({have})")
        return {m: self.model.tensors[name][1] for m, name in self.tensor_names.items()}

    def tensor_file(self, matrix: str) -> Path:
        """The file holding the matrix's tensor."""
        return self.model.tensors[self.tensor_names[self._check_matrix(matrix)]][0]

    def describe(self, matrix: str) -> str:
        """How messages name a matrix: "<tensor name> in <file>"."""
        return f"{self.tensor_names[self._check_matrix(matrix)]} in {self.tensor_file(matrix)}"

    def _check_types(self) -> None:
        for m, type_name in self.types.items():
            if type_name not in GGUF_TYPES:
                raise ValueError(f"{self.describe(m)}: ggml type {type_name} is not supported "
                                 f"(expected one of {', '.join(GGUF_TYPES)})")

    def shape(self, matrix: str) -> Tuple[int, int, int]:
        """The logical shape [E, rows, cols] of the matrix's tensor, from the metadata."""
        return tuple(getattr(self, attr) for attr in DIMS[self._check_matrix(matrix)])

    def _check_shapes(self) -> None:
        """Each tensor's dims (GGUF's innermost-first list, reversed) are the [E, rows, cols] of the metadata."""
        for m, tensor in self._tensors.items():
            got = [int(d) for d in reversed(tensor.shape.tolist())]
            layout = "[" + ", ".join(DIM_LETTERS[a] for a in DIMS[m]) + "]"
            if len(got) != 3:
                raise ValueError(f"{self.describe(m)}: expected 3 dims {layout}, got shape {got}")
            for size, attr in zip(got, DIMS[m]):
                if size != getattr(self, attr):
                    raise ValueError(f"{self.describe(m)} has shape {got} {layout}: {DIM_LETTERS[attr]} is {size}, "
                                     f"but {self.size_keys[attr]} is {getattr(self, attr)}")

    def _check_used_count(self) -> None:
        if self.expert_used_count > self.expert_count:
            raise ValueError(f"{self.files[0]}: {self.size_keys['expert_used_count']} is {self.expert_used_count}, "
                             f"more than {self.size_keys['expert_count']} ({self.expert_count})")

    def check_sizes(self, num_experts: int, num_experts_per_tok: int, hidden_size: int,
                    moe_intermediate_size: int) -> None:
        """ValueError naming every metadata key whose value differs from the constructor's size, with both values."""
        given = {"num_experts": num_experts, "num_experts_per_tok": num_experts_per_tok,
                 "hidden_size": hidden_size, "moe_intermediate_size": moe_intermediate_size}
        wrong = [f"{self.size_keys[attr]} is {getattr(self, attr)} but {param} is {given[param]}"
                 for attr, (_, param) in SIZE_KEYS.items() if getattr(self, attr) != given[param]]
        if wrong:
            raise ValueError(f"the GGUF model {self.model.describe_files()} does not match the layer: "
                             + "; ".join(wrong))

    def _check_matrix(self, matrix: str) -> str:
        if matrix not in MATRICES:
            raise ValueError(f"matrix must be one of {', '.join(MATRICES)}, got {matrix!r}")
        return matrix

    def _check_expert(self, expert: int) -> int:
        e = operator.index(expert)
        if not 0 <= e < self.expert_count:
            raise ValueError(f"expert id {e} out of range [0, {self.expert_count})")
        return e

    # -- reading --

    def tensor(self, matrix: str) -> ReaderTensor:
        """gguf-py's ReaderTensor of the matrix (name, tensor_type, shape, data_offset, data)."""
        return self._tensors[self._check_matrix(matrix)]

    def row_bytes(self, matrix: str) -> int:
        """Bytes of one stored row: cols / block_size blocks of the type's bytes."""
        block, size = GGUF_TYPES[self.types[self._check_matrix(matrix)]]
        return self.shape(matrix)[2] // block * size

    def _bytes(self, matrix: str) -> np.ndarray:
        """The matrix's stored bytes, uint8 [E, rows, row_bytes], a view of the memory map."""
        E, rows, _ = self.shape(matrix)
        return self.tensor(matrix).data.view(np.uint8).reshape(E, rows, self.row_bytes(matrix))

    def raw(self, matrix: str, expert: int) -> torch.Tensor:
        """Expert `expert`'s stored rows of `matrix`, uint8 [rows, row_bytes], contiguous, sharing the
        file's read-only memory map (no copy): read it, never write to it (clone() for a copy)."""
        data = self._bytes(matrix)[self._check_expert(expert)]
        with warnings.catch_warnings():  # torch warns that the array is read-only, which is the point
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(data)

    def dequantized(self, matrix: str, expert: int) -> torch.Tensor:
        """Expert `expert`'s `matrix` as values, fp32 [rows, cols] of its own: gguf.quants.dequantize of its bytes."""
        data = self._bytes(matrix)[self._check_expert(expert)]
        values = dequantize(data, GGMLQuantizationType[self.types[matrix]])
        return torch.from_numpy(np.array(values, dtype=np.float32, order="C"))
