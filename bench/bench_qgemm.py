"""Benchmark of the quantized GEMM kernels (native/kernels/gemm_quant.hpp: INT8 per-channel, INT4
group-16 and INT4 groups of 64 or 128 (int4_kgroup with zero points) weights, activations quantized
per (row, 64 k)) at every ISA level this CPU runs, on
a DeepSeek-V2-Lite expert product, next to torch's bf16 matmul of the same shape in the same run.

    python bench/bench_qgemm.py [--tokens 1,48] [--formats int8_channel,int4_group16,int4_kgroup64,...]
        [--shapes gate,down] [--levels generic,avx512,...] [--threads 1] [--repeats 7] [--min-ms 20]
        [--cache-mb 512] [--json-out FILE]

Shapes (C[T, N] = A[T, K] W[N, K]^T, T = tokens):
  gate   x [T, 2048] x W_gate [1408, 2048]     (gate/up projection)
  down   z [T, 1408] x W_down [2048, 1408]

Per row: median ms per product (and min-max), GB/s of the weight bytes the kernel streams
(packed: codes, scales and zero points; bf16 for torch), GOP/s (2 T N K / time), the ratio to torch
(torch median / kt median: above 1 is faster), and two relative L2 errors, checked once per level:
against the float64 product of the dequantized operands (the compute: ~1e-7; ~6e-3 for INT4 on
AMX tiles, i.e. at the amx level from _native.quant_amx_min_rows rows on, which requantize the
weights to int8) and against the unquantized fp32 product (the scheme). The "quantize" row times
quantize_activations for the T rows (the engine does it once per token and call site). With --threads 2 each product is split in
two column halves run by two threads at once, as the engine splits N (torch gets 2 threads). Weights rotate through
enough copies to exceed --cache-mb (default 512 MB, more than the last-level cache) so that, as
in a MoE layer, they come from memory; --cache-mb 0 keeps one copy (cache-hot).
amx_emulated is left out unless named in --levels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

import torch

import kt_moe
from kt_moe import _native
from kt_moe.benchmark.arguments import HelpFormatter, csv_list, kernel_levels
from kt_moe.benchmark.runner import cpu_model
from kt_moe.closed_pipe import quiet_on_closed_pipe
from kt_moe.quant import (dequantize_int4_group16, dequantize_int8_channel, quantize_int4_group16,
                          quantize_int8_channel)
from kt_moe.quant.int4_groups import dequantize_int4, quantize_int4

SHAPES = {"gate": (1408, 2048), "down": (2048, 1408)}  # (N, K)
# int4_kgroup64 / int4_kgroup128: int4_kgroup with zero points, G = 64 / 128 (AMXINT4's group_size choice)
FORMATS = ("int8_channel", "int4_group16", "int4_kgroup64", "int4_kgroup128")



def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--tokens", type=csv_list(int), default=[1, 48], help="comma list of token counts T")
    p.add_argument("--formats", type=csv_list(str), default=list(FORMATS), help="comma list of weight formats")
    p.add_argument("--shapes", type=csv_list(str), default=["gate"], help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--levels", type=csv_list(str), default=None,
                   help="default: every level this CPU runs except amx_emulated")
    p.add_argument("--threads", type=int, default=1, choices=(1, 2), help="threads per product (column halves)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per row (median reported)")
    p.add_argument("--min-ms", type=float, default=20.0, help="each repeat loops calls for at least this long")
    p.add_argument("--cache-mb", type=float, default=512.0,
                   help="MB of weight copies to rotate through (0: one copy, cache-hot)")
    p.add_argument("--json-out", type=argparse.FileType("w"), default=None,
                   help="write the JSON lines here instead of after the table")
    args = p.parse_args(argv)
    args.levels = kernel_levels(p, args.levels)
    for f in args.formats:
        if f not in FORMATS:
            p.error(f"unknown format {f!r}; known: {', '.join(FORMATS)}")
    for s in args.shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
    if args.repeats < 1 or min(args.tokens) < 1 or args.min_ms <= 0 or args.cache_mb < 0:
        p.error("--repeats, --tokens and --min-ms must be positive, --cache-mb not negative")
    return args


def time_per_call(parts: List[Callable[[int], None]], repeats: int, min_ms: float) -> List[float]:
    """Seconds per call, one value per repeat. A call is parts[j](i) for every j at once: each repeat
    runs every part in its own thread (the kernels release the GIL), looping over i = 0, 1, ..., so
    that a thread is started once per repeat, not once per call."""
    def loop(part: Callable[[int], None], number: int) -> None:
        for i in range(number):
            part(i)

    def run(number: int) -> float:
        workers = [threading.Thread(target=loop, args=(part, number)) for part in parts[1:]]
        start = time.perf_counter()
        for w in workers:
            w.start()
        loop(parts[0], number)
        for w in workers:
            w.join()
        return time.perf_counter() - start

    run(3)
    number = max(1, int(min_ms / 1e3 / max(run(1), 1e-7)))
    return [run(number) / number for _ in range(repeats)]


class QuantCase:
    """One format and weight shape: the quantized weight, its packed copies and dequantized matrix."""

    def __init__(self, fmt: str, n: int, k: int, cache_bytes: float, gen: torch.Generator):
        self.fmt, self.n, self.k = fmt, n, k
        self.w = torch.randn(n, k, generator=gen) / k ** 0.5
        if fmt == "int8_channel":
            q, scale = quantize_int8_channel(self.w)
            pack = lambda: _native.quant_pack_int8(q, scale)
            self.dequant = dequantize_int8_channel(q, scale)
        elif fmt.startswith("int4_kgroup"):
            group = int(fmt[len("int4_kgroup"):])
            parts = quantize_int4(self.w, group, True)
            pack = lambda: _native.quant_pack("int4_kgroup", list(parts), k, group, True)
            self.dequant = dequantize_int4(*parts, group_size=group)[:, :k]
        else:
            codes, scale, zero = quantize_int4_group16(self.w)
            pack = lambda: _native.quant_pack_int4(codes, scale, zero, k)
            self.dequant = dequantize_int4_group16(codes, scale, zero)[:, :k]
        first = pack()
        self.nbytes = first.nbytes
        copies = max(1, min(512, int(-(-cache_bytes // self.nbytes)))) if cache_bytes > 0 else 1
        self.packed = [first] + [pack() for _ in range(copies - 1)]
        self.layout = _native.quant_act_layout(first.format, k)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    best = kt_moe.cpu_info()["best"]
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}; torch "
          f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()}); {args.threads} thread(s); weights "
          f"{'cache-hot' if args.cache_mb == 0 else f'rotated over {args.cache_mb:.0f} MB'}", flush=True)
    header = (f"{'format':<13} {'shape':<5} {'T':>4} {'impl':<12} {'median ms':>10} {'min-max ms':>15} "
              f"{'GB/s':>6} {'GOP/s':>7} {'x torch':>7} {'err':>8} {'vs fp32':>8}")
    print(header + "\n" + "-" * len(header), flush=True)
    records = []

    def emit(rec: Dict) -> None:
        records.append(rec)
        err = f"{rec['rel_err']:>8.1e}" if "rel_err" in rec else f"{'':>8}"
        scheme = f"{rec['scheme_err']:>8.1e}" if "scheme_err" in rec else f"{'':>8}"
        print(f"{rec['format']:<13} {rec['shape']:<5} {rec['tokens']:>4} {rec['impl']:<12} {rec['median_ms']:>10.4f} "
              f"{rec['min_ms']:>7.4f}-{rec['max_ms']:<7.4f} {rec['gb_per_s']:>6.1f} {rec['gop_per_s']:>7.1f} "
              f"{rec['vs_torch']:>7.2f} {err} {scheme}", flush=True)

    for shape in args.shapes:
        n, k = SHAPES[shape]
        bf16_copies = max(1, min(256, int(-(-args.cache_mb * 2**20 // (2 * n * k))))) if args.cache_mb > 0 else 1
        w_bf16 = [torch.randn(n, k, generator=gen).to(torch.bfloat16) for _ in range(bf16_copies)]
        for fmt in args.formats:
            case = QuantCase(fmt, n, k, args.cache_mb * 2**20, gen)
            for tokens in args.tokens:
                x = torch.randn(tokens, k, generator=gen)
                a = x.to(torch.bfloat16)
                base = dict(kind="gemm_quant", format=fmt, shape=shape, tokens=tokens, n=n, k=k, threads=args.threads)

                def row(impl: str, times: List[float], nbytes: int, torch_ms: float, **extra) -> Dict:
                    med = statistics.median(times)
                    return dict(base, impl=impl, median_ms=med * 1e3, min_ms=min(times) * 1e3,
                                max_ms=max(times) * 1e3, gb_per_s=nbytes / med / 1e9,
                                gop_per_s=2.0 * tokens * n * k / med / 1e9, vs_torch=torch_ms / (med * 1e3), **extra)

                times = time_per_call([lambda i: torch.matmul(a, w_bf16[i % len(w_bf16)].t())], args.repeats, args.min_ms)
                torch_ms = statistics.median(times) * 1e3
                emit(row("torch-bf16", times, 2 * n * k, torch_ms))

                records_q = torch.empty(tokens, case.layout["row_bytes"], dtype=torch.uint8)
                quantize = lambda i: _native.quantize_activations_test(best, case.packed[0].format, a, records_q)
                emit(row("quantize", time_per_call([quantize], args.repeats, args.min_ms), 0, torch_ms))
                q = records_q[:, :case.layout["k_padded"]].view(torch.int8).float()
                so, groups = case.layout["scale_offset"], case.layout["groups"]
                scale = records_q[:, so:so + 4 * groups].view(torch.float32)
                a_deq = (q * scale.repeat_interleave(case.layout["group"], dim=1))[:, :k]
                reference = a_deq.double() @ case.dequant.double().t()
                unquantized = a.float() @ case.w.t()

                half = (n // 2 + 15) // 16 * 16
                ranges = [(0, n)] if args.threads == 1 else [(0, half), (half, n)]
                for level in args.levels:
                    c = torch.zeros(tokens, n)
                    parts = [(lambda n0, n1: lambda i: _native.gemm_quant_test(
                        level, case.packed[i % len(case.packed)], records_q, c, n0, n1))(n0, n1) for n0, n1 in ranges]
                    times = time_per_call(parts, args.repeats, args.min_ms)
                    for part in parts:
                        part(0)
                    err = ((c.double() - reference).norm() / reference.norm()).item()
                    scheme = ((c - unquantized).norm() / unquantized.norm()).item()
                    emit(row(level, times, case.nbytes, torch_ms, rel_err=err, scheme_err=scheme))
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
