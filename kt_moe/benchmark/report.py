"""How the bench reports: a table row per case on stdout as it finishes, and one JSON object
per case (and per GEMM-rate probe) as a line in --json-out, or after the table prefixed "JSON "."""

from __future__ import annotations

import json
from typing import List, Optional, TextIO

COLUMNS = (("shape", "<10"), ("q", ">5"), ("mode", "<9"), ("method", "<19"), ("thr", ">3"), ("isa", "<13"),
           ("median ms", ">10"), ("min-max ms", ">17"), ("tok/s", ">9"), ("GB/s", ">6"), ("GFLOP/s", ">8"),
           ("x torch", ">7"), ("err out", ">8"), ("err grad", ">8"))


def _number(value: Optional[float], fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _cells(r: dict) -> List[str]:
    cells = [r["shape"], str(r["q"]), r["mode"], r["method"], str(r["threads"]), r["isa"]]
    if r["status"] != "ok":
        return cells
    return cells + [
        f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}-{r['max_ms']:.2f}", f"{r['tokens_per_s']:.0f}",
        _number(r["gb_per_s"], ".1f"), f"{r['gflop_per_s']:.1f}", _number(r["vs_torch"], ".2f"),
        f"{r['err_out']:.1e}", _number(r["err_grad"], ".1e")]


class Reporter:
    def __init__(self, json_out: Optional[TextIO]):
        self.json_out = json_out
        self.pending: List[str] = []

    def _json(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True)
        if self.json_out is None:
            self.pending.append(line)
        else:
            self.json_out.write(line + "\n")
            self.json_out.flush()

    def note(self, text: str, record: Optional[dict] = None) -> None:
        """A free line above the table (machine, GEMM rate), with its JSON record if any."""
        print(text, flush=True)
        if record is not None:
            self._json(record)

    def header(self) -> None:
        line = " ".join(format(name, fmt) for name, fmt in COLUMNS)
        print(line + "\n" + "-" * len(line), flush=True)

    def case(self, record: dict) -> None:
        cells = " ".join(format(c, fmt) for c, (_, fmt) in zip(_cells(record), COLUMNS))
        if record["status"] != "ok":
            cells += f" {record['status']}: {record['reason'][:110]}"
        elif record["grads_missing"]:
            cells += f" (not returned: {', '.join(record['grads_missing'])})"
        print(cells, flush=True)
        self._json(record)

    def close(self) -> None:
        """Print the JSON lines held back for stdout."""
        if self.pending:
            print()
        for line in self.pending:
            print("JSON " + line)
