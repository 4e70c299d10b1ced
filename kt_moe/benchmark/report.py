"""How the bench reports: a table row per case on stdout as it finishes (a failed case's
whole reason on the lines below it), what runs meanwhile on stderr, and one JSON object per case
(and per GEMM-rate probe) as a line in --json-out, or after the table prefixed "JSON "."""

from __future__ import annotations

import json
import sys
import textwrap
from typing import List, Optional, TextIO

from kt_moe.status_line import StatusLine

COLUMNS = (("shape", "<10"), ("q", ">5"), ("mode", "<9"), ("method", "<20"), ("thr", ">3"), ("pools", ">5"),
           ("isa", "<13"), ("median ms", ">10"), ("min-max ms", ">17"), ("tok/s", ">9"), ("GB/s", ">6"),
           ("read%", ">5"), ("GFLOP/s", ">8"), ("x torch", ">7"), ("x gmm", ">6"), ("err out", ">8"),
           ("err grad", ">8"), ("bound", ">8"))
TABLE_WIDTH = sum(int(fmt[1:]) for _, fmt in COLUMNS) + len(COLUMNS) - 1
ERRORS_NOTE = "\n".join((
    "'pools': threadpool_count (the kt-moe methods' cpuinfer_threads split into that many subpools); 'x torch' /",
    "'x gmm': the torch loop's / transformers' grouped_mm experts' median over the row's (above 1: faster);",
    "'err out' / 'err grad': relative L2 error of the output / of the worst gradient against the fp32 reference;",
    "'GB/s': expert-weight bytes read per step (scales included) / median; 'read%': that as a share of a streaming",
    "read of a buffer larger than the last-level cache with the same threads, timed in the same rounds;",
    "'bound': the error the tests allow the method (bf16: 5e-3 to 2e-2, INT8 weights: 3e-2, FP8 weights: 7e-2 to",
    "0.12, INT4 weights: 0.15 to 0.3, as 4-bit weights are coarse: ~0.1 to 0.17 is normal for them); '!' marks an",
    "error above the bound (with a few tokens, q < 8, the quantized methods' gradients are noisier)"))


def _number(value: Optional[float], fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _error(value: Optional[float], bound: Optional[float]) -> str:
    """The error, with '!' when it is above the case's bound."""
    flag = "!" if value is not None and bound is not None and value > bound else ""
    return _number(value, ".1e") + flag


def _cells(r: dict) -> List[str]:
    cells = [r["shape"], str(r["q"]), r["mode"], r["method"], str(r["threads"]), _number(r["pools"], "d"), r["isa"]]
    if r["status"] != "ok":
        return cells
    return cells + [
        f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}-{r['max_ms']:.2f}", f"{r['tokens_per_s']:.0f}",
        _number(r["gb_per_s"], ".1f"), _number(None if r["read_share"] is None else 100 * r["read_share"], ".0f"),
        f"{r['gflop_per_s']:.1f}", _number(r["vs_torch"], ".2f"), _number(r["vs_grouped_mm"], ".2f"),
        _error(r["err_out"], r["err_bound"]), _error(r["err_grad"], r["err_bound"]), _number(r["err_bound"], ".1e")]


class Reporter:
    def __init__(self, json_out: Optional[TextIO], progress_stream: Optional[TextIO] = None):
        self.json_out = json_out
        self.pending: List[str] = []
        self.progress_stream = sys.stderr if progress_stream is None else progress_stream
        self.status = StatusLine(self.progress_stream) if self.progress_stream.isatty() else None

    def _json(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True)
        if self.json_out is None:
            self.pending.append(line)
        else:
            self.json_out.write(line + "\n")
            self.json_out.flush()

    def _print(self, text: str) -> None:
        if self.status is not None:
            self.status.clear()
        print(text, flush=True)

    def progress(self, text: str, transient: bool = False) -> None:
        """What runs now, on stderr: on a terminal one line redrawn in place and erased by the next
        line of the table; elsewhere a line each, transient steps (timing rounds) left out."""
        if self.status is not None:
            self.status.show(text)
        elif not transient:
            print(text, file=self.progress_stream, flush=True)

    def note(self, text: str, record: Optional[dict] = None) -> None:
        """A free line above the table (machine, GEMM rate), with its JSON record if any."""
        self._print(text)
        if record is not None:
            self._json(record)

    def header(self) -> None:
        line = " ".join(format(name, fmt) for name, fmt in COLUMNS)
        self._print(line + "\n" + "-" * len(line))

    def case(self, record: dict) -> None:
        cells = " ".join(format(c, fmt) for c, (_, fmt) in zip(_cells(record), COLUMNS))
        if record["status"] != "ok":
            reason = textwrap.fill(record["reason"], TABLE_WIDTH, initial_indent="    ", subsequent_indent="    ",
                                   break_long_words=False, break_on_hyphens=False)
            cells += f" {record['status']}:\n{reason}"
        elif record["grads_missing"]:
            cells += f" (not returned: {', '.join(record['grads_missing'])})"
        self._print(cells)
        self._json(record)

    def close(self) -> None:
        """Print the JSON lines held back for stdout."""
        if self.pending:
            self._print("")
        for line in self.pending:
            print("JSON " + line)
