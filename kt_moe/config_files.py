"""Config files: read the operator's parameters from YAML, TOML or JSON.

A file holds the KTMoEWrapper keyword arguments as one flat mapping, either at the top level or
under a top-level `kt_moe` table (so the parameters can share a file with other settings, which
are then ignored). Loading only parses; kt_moe.config validates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Union

import yaml

SECTION = "kt_moe"


class ConfigFileError(ValueError):
    """A config file that cannot be used: str() is '<path>: <reason>', one line."""

    def __init__(self, path: Union[str, os.PathLike], reason: str):
        self.path = os.fspath(path)
        self.reason = "; ".join(line.strip() for line in reason.splitlines() if line.strip())
        super().__init__(f"{self.path}: {self.reason}")


class _ParseError(ValueError):
    """A parser's own report of what is wrong in the text (its message is complete)."""


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise _ParseError(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def _parse_toml(text: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise _ParseError("reading TOML needs Python 3.11 or newer") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _ParseError(f"invalid TOML: {exc}") from None


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _ParseError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


FORMATS: dict[str, tuple[str, Callable[[str], Any]]] = {  # suffix -> (format name, parser)
    ".yaml": ("YAML", _parse_yaml),
    ".yml": ("YAML", _parse_yaml),
    ".toml": ("TOML", _parse_toml),
    ".json": ("JSON", _parse_json),
}


def _parse(path: Union[str, os.PathLike], text: str) -> Any:
    """The parsed text; ConfigFileError (one line) for anything the parser refuses, including a
    value it cannot convert (a 5000-digit integer, a bad date) and nesting deeper than it recurses."""
    name, parse = FORMATS[Path(path).suffix.lower()]
    try:
        return parse(text)
    except _ParseError as exc:
        reason = str(exc)
    except RecursionError:
        reason = (f"invalid {name}: nested too deeply to read (a config file holds a flat mapping of "
                  "parameters)")
    except ValueError as exc:
        reason = f"invalid {name}: {exc}"
    raise ConfigFileError(path, reason)


def load_config_file(path: Union[str, os.PathLike]) -> dict[Any, Any]:
    """The parameter mapping a config file holds, unvalidated; ConfigFileError when the file has an
    unknown suffix, cannot be read or parsed, or holds no mapping."""
    if Path(path).suffix.lower() not in FORMATS:
        raise ConfigFileError(path, f"unsupported file type '{Path(path).suffix}'; expected one of "
                                    f"{', '.join(FORMATS)}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(path, f"cannot read file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(path, "cannot read file: not UTF-8 text") from None
    data = _parse(path, text)
    if isinstance(data, dict) and isinstance(data.get(SECTION), dict):
        data = data[SECTION]
    if not isinstance(data, dict):
        found = "nothing" if data is None else type(data).__name__
        raise ConfigFileError(path, f"expected a mapping of parameters at the top level, found {found}")
    return data
