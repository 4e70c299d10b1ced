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
    """A config file that cannot be used: str() is '<path>: <reason>'."""

    def __init__(self, path: Union[str, os.PathLike], reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}")


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def _parse_toml(text: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ValueError("reading TOML needs Python 3.11 or newer") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"invalid TOML: {exc}") from None


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


PARSERS: dict[str, Callable[[str], Any]] = {
    ".yaml": _parse_yaml,
    ".yml": _parse_yaml,
    ".toml": _parse_toml,
    ".json": _parse_json,
}


def load_config_file(path: Union[str, os.PathLike]) -> dict[Any, Any]:
    """The parameter mapping a config file holds, unvalidated; ConfigFileError when the file has an
    unknown suffix, cannot be read or parsed, or holds no mapping."""
    parse = PARSERS.get(Path(path).suffix.lower())
    if parse is None:
        raise ConfigFileError(path, f"unsupported file type '{Path(path).suffix}'; expected one of "
                                    f"{', '.join(PARSERS)}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(path, f"cannot read file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(path, "cannot read file: not UTF-8 text") from None
    try:
        data = parse(text)
    except ValueError as exc:
        raise ConfigFileError(path, str(exc)) from None
    if isinstance(data, dict) and isinstance(data.get(SECTION), dict):
        data = data[SECTION]
    if not isinstance(data, dict):
        found = "nothing" if data is None else type(data).__name__
        raise ConfigFileError(path, f"expected a mapping of parameters at the top level, found {found}")
    return data
