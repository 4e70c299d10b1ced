"""Benchmark of the bf16 GEMM kernels (native/kernels/gemm_bf16.hpp) at every ISA level this CPU
runs, on the products the MoE engines make per expert (DeepSeek-V2-Lite sizes, H=2048, I=1408,
LoRA rank 16), next to torch's bf16 matmul of the same shape in the same run. Single thread.

    python bench/bench_gemm.py [--tokens 1,12,48,128] [--shapes fwd,down,bwd,lora_a,lora_b,lora_grad]
        [--levels generic,avx512,...] [--repeats 15] [--min-ms 20] [--cache-mb 512] [--json-out FILE]

Shapes (C[M, N] = A B, A's and B's layout as the kernel API names them; T = tokens):
  fwd        x [T, 2048] mk  x  W_gate [1408, 2048] nk            (gate/up projection)
  down       z [T, 1408] mk  x  W_down [2048, 1408] nk, a column half of a [2048, 2816] tensor (ldb > K)
  bwd        dg [T, 1408] mk x  W_gate read as [K=1408, N=2048] kn (grad_input = dg W_gate)
  lora_a     x [T, 2048] mk  x  lora_A [16, 2048] nk
  lora_b     (A x) [T, 16] mk x lora_B [1408, 16] nk
  lora_grad  dg read as [K=T, M=1408] km x (A x) [K=T, N=16] kn (the lora_B gradient)

Per row: median ms per call (and min-max), GFLOP/s (2 M N K / time), effective GB/s (bytes of the
streamed operand / time: the weight, or dg for lora_grad) and the ratio to torch (torch median /
kt median: above 1 is faster). The streamed operand rotates through enough copies to exceed
--cache-mb (default 512 MB, more than this machine's last-level cache) so that, as in a MoE layer,
it comes from memory; --cache-mb 0 keeps one copy (cache-hot). Each level's result is checked once
against the fp32 product (relative L2 error). amx_emulated is left out unless named in --levels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

from kt_moe import _native
from kt_moe.benchmark.arguments import HelpFormatter, csv_list, kernel_levels
from kt_moe.benchmark.runner import cpu_model
from kt_moe.closed_pipe import quiet_on_closed_pipe

H, I, R = 2048, 1408, 16


class Shape:
    """One product: operand shapes per layout, which operand streams, and the torch equivalent."""

    def __init__(self, name: str, m, n, k, a_layout: str, b_layout: str, streamed: str, ldb_factor: int = 1):
        self.name, self.m, self.n, self.k = name, m, n, k
        self.a_layout, self.b_layout, self.streamed, self.ldb_factor = a_layout, b_layout, streamed, ldb_factor

    def dims(self, tokens: int):
        f = lambda d: d(tokens) if callable(d) else d
        return f(self.m), f(self.n), f(self.k)


SHAPES = {
    "fwd": Shape("fwd", lambda t: t, I, H, "mk", "nk", "b"),
    "down": Shape("down", lambda t: t, H, I, "mk", "nk", "b", ldb_factor=2),
    "bwd": Shape("bwd", lambda t: t, H, I, "mk", "kn", "b"),
    "lora_a": Shape("lora_a", lambda t: t, R, H, "mk", "nk", "b"),
    "lora_b": Shape("lora_b", lambda t: t, I, R, "mk", "nk", "b"),
    "lora_grad": Shape("lora_grad", I, R, lambda t: t, "km", "kn", "a"),
}



def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--tokens", type=csv_list(int), default=[1, 12, 48, 128], help="comma list of token counts T")
    p.add_argument("--shapes", type=csv_list(str), default=list(SHAPES), help="comma list of products")
    p.add_argument("--levels", type=csv_list(str), default=None,
                   help="default: every level this CPU runs except amx_emulated")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per row (median reported)")
    p.add_argument("--min-ms", type=float, default=20.0, help="each repeat loops calls for at least this long")
    p.add_argument("--cache-mb", type=float, default=512.0,
                   help="MB of streamed-operand copies to rotate through (0: one copy, cache-hot)")
    p.add_argument("--json-out", type=argparse.FileType("w"), default=None,
                   help="write the JSON lines here instead of after the table")
    args = p.parse_args(argv)
    args.levels = kernel_levels(p, args.levels)
    for s in args.shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
    if args.repeats < 1 or min(args.tokens) < 1 or args.min_ms <= 0 or args.cache_mb < 0:
        p.error("--repeats, --tokens and --min-ms must be positive, --cache-mb not negative")
    return args


def operands(shape: Shape, tokens: int, cache_bytes: float, gen: torch.Generator):
    """(list of A copies, list of B copies): the streamed operand has enough copies to exceed cache_bytes."""
    m, n, k = shape.dims(tokens)
    a_shape = (m, k) if shape.a_layout == "mk" else (k, m)
    b_rows, b_cols = (n, k) if shape.b_layout == "nk" else (k, n)

    def make_a():
        return torch.randn(*a_shape, generator=gen).to(torch.bfloat16)

    def make_b():
        full = torch.randn(b_rows, b_cols * shape.ldb_factor, generator=gen).to(torch.bfloat16)
        return full[:, :b_cols]

    streamed_bytes = 2 * (a_shape[0] * a_shape[1] if shape.streamed == "a" else b_rows * b_cols)
    copies = max(1, min(256, int(-(-cache_bytes // streamed_bytes)))) if cache_bytes > 0 else 1
    a = [make_a() for _ in range(copies if shape.streamed == "a" else 1)]
    b = [make_b() for _ in range(copies if shape.streamed == "b" else 1)]
    return a, b, streamed_bytes


def time_per_call(call: Callable[[int], None], copies: int, repeats: int, min_ms: float) -> List[float]:
    """Seconds per call, one value per repeat; each repeat loops call(i) over rotating copies."""
    for i in range(min(copies, 3)):
        call(i)
    start = time.perf_counter()
    call(0)
    once = max(time.perf_counter() - start, 1e-7)
    number = max(1, int(min_ms / 1e3 / once))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(number):
            call(i % copies)
        times.append((time.perf_counter() - start) / number)
    return times


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}; torch "
          f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()}); 1 thread; streamed operand "
          f"{'cache-hot' if args.cache_mb == 0 else f'rotated over {args.cache_mb:.0f} MB'}", flush=True)
    header = (f"{'shape':<9} {'T':>4} {'M':>5} {'N':>5} {'K':>5} {'impl':<14} {'median ms':>10} {'min-max ms':>15} "
              f"{'GFLOP/s':>8} {'GB/s':>6} {'x torch':>7} {'err':>8}")
    print(header + "\n" + "-" * len(header), flush=True)
    records = []
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        for tokens in args.tokens:
            m, n, k = shape.dims(tokens)
            a, b, streamed_bytes = operands(shape, tokens, args.cache_mb * 2**20, gen)
            copies = max(len(a), len(b))
            am = lambda i: a[i % len(a)] if shape.a_layout == "mk" else a[i % len(a)].t()
            bm = lambda i: b[i % len(b)].t() if shape.b_layout == "nk" else b[i % len(b)]
            reference = am(0).float() @ bm(0).float()
            impls: Dict[str, Callable[[int], None]] = {"torch-bf16": lambda i: torch.matmul(am(i), bm(i))}
            outs = {}
            for level in args.levels:
                c = torch.zeros(m, n)
                outs[level] = c
                impls[level] = (lambda lv, c: lambda i: _native.gemm_bf16_test(
                    lv, a[i % len(a)], shape.a_layout, b[i % len(b)], shape.b_layout, c, 1.0, False, m, n, k))(level, c)
            torch_ms = None
            for name, call in impls.items():
                times = time_per_call(call, copies, args.repeats, args.min_ms)
                med = statistics.median(times)
                if name == "torch-bf16":
                    torch_ms = med * 1e3
                    out = torch.matmul(am(0), bm(0)).float()
                else:
                    call(0)
                    out = outs[name]
                err = ((out - reference).norm() / reference.norm().clamp_min(1e-30)).item()
                rec = dict(kind="gemm_bf16", shape=shape_name, tokens=tokens, m=m, n=n, k=k, impl=name,
                           median_ms=med * 1e3, min_ms=min(times) * 1e3, max_ms=max(times) * 1e3,
                           gflop_per_s=2.0 * m * n * k / med / 1e9, gb_per_s=streamed_bytes / med / 1e9,
                           vs_torch=torch_ms / (med * 1e3), rel_err=err, threads=1)
                records.append(rec)
                print(f"{shape_name:<9} {tokens:>4} {m:>5} {n:>5} {k:>5} {name:<14} {rec['median_ms']:>10.4f} "
                      f"{rec['min_ms']:>7.4f}-{rec['max_ms']:<7.4f} {rec['gflop_per_s']:>8.1f} {rec['gb_per_s']:>6.1f} "
                      f"{rec['vs_torch']:>7.2f} {err:>8.1e}", flush=True)
    lines = [json.dumps(r, sort_keys=True) for r in records]
    if args.json_out is not None:
        args.json_out.write("\n".join(lines) + "\n")
    else:
        print()
        for line in lines:
            print("JSON " + line)
    return 0


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
