"""Command-line pieces the benchmark scripts in bench/ share: comma-separated lists and the choice
of ISA levels for the kernel benchmarks."""

from __future__ import annotations

import argparse
from typing import Callable, List, Optional

import kt_moe


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
