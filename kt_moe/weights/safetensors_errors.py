"""Errors of reading safetensors files, named after the file: safetensors raises SafetensorError
("invalid header length", "incomplete metadata, file not fully covered", ...) without saying which
file it read, which leaves a checkpoint of many shards without a clue. Every read of the weight
readers runs inside damaged_file_errors(path), which turns that error into a ValueError (or the
reader's own subclass of it) naming the file and saying it is damaged."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Type, Union

from safetensors import SafetensorError


@contextlib.contextmanager
def damaged_file_errors(path: Union[str, os.PathLike], error: Type[ValueError] = ValueError) -> Iterator[None]:
    """Raise `error` naming `path` for a SafetensorError raised inside the block."""
    try:
        yield
    except SafetensorError as exc:
        raise error(f"{path} is damaged: not a readable safetensors file ({exc})") from None
