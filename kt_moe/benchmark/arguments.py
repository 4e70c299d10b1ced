"""Command-line pieces the benchmark scripts in bench/ and `kt-moe demo` share: help that shows
each option's default, comma-separated lists and the choice of ISA levels for the kernel
benchmarks."""

from __future__ import annotations

import argparse
from typing import Callable, List, Optional

import kt_moe


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help with each option's default appended, "(default: 1,128)", lists written as they are
    typed; the description keeps its line breaks. Options whose help already speaks of the
    default, or whose default is None or False (absent, or a flag), get nothing appended."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if (not action.option_strings or default in (None, False, argparse.SUPPRESS)
                or "default" in text.lower()):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def csv_list(kind: Callable) -> Callable[[str], List]:
    """An argparse type: "a,b,c" -> [kind("a"), kind("b"), kind("c")] (empty items skipped)."""
    return lambda text: [kind(item) for item in text.split(",") if item]


def kernel_levels(parser: argparse.ArgumentParser, levels: Optional[List[str]]) -> List[str]:
    """The --levels to run: the given ones (each must be selectable here, else a parser error), or by
    default every level this CPU runs except the slow amx_emulated."""
    selectable = kt_moe.cpu_info()["selectable"]
    for level in levels or []:
        if level not in selectable:
            parser.error(f"level {level!r} is not available here; this CPU runs: {', '.join(selectable)}")
    return levels or [level for level in selectable if level != "amx_emulated"]
