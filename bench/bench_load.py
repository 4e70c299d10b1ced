"""Benchmark of loading one MoE layer from bf16 tensors (load_weights_from_tensors: the online
quantization of the quantized methods, their packing and the copies), and the memory the loaded
layer holds.

    python bench/bench_load.py [--shape dsv2-lite] [--methods AMXINT4,AMXINT4:64,...] [--threads 2]
        [--repeats 3] [--json-out FILE]

Per method: median and min-max seconds of a whole layer's load (every expert; cpuinfer_threads and
torch's threads = --threads, which the quantizers use; LLAMAFILE quantizes to Q8_0 with gguf), the bf16 input's GB/s (3 H I E weights of
2 bytes / median) and the resident MiB of the loaded layer (resident_bytes_per_expert x E: codes,
scales and zero points of the quantized methods). Each load is the first of a fresh wrapper, as
when a model loads. Every JSON line names the machine (CPU model, ISA levels, torch version).
Methods may carry bench_moe.py's options: AMXINT4:64 (group_size 64), LLAMAFILE:Q4_K, ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import List, Optional

import torch

from kt_moe.benchmark.arguments import HelpFormatter, csv_list
from kt_moe.benchmark.cases import KT_METHOD_MODES, case_method, case_options, mode_of, unloaded_wrapper
from kt_moe.benchmark.problem import layer_weights
from kt_moe.benchmark.runner import cpu_model, isa_level, machine
from kt_moe.benchmark.shapes import SHAPES
from kt_moe.closed_pipe import quiet_on_closed_pipe

DEFAULT_METHODS = ("BF16", "AMXINT8", "AMXINT4", "MOE_INT8", "MOE_INT4", "FP8", "RAWINT4", "AMXBF16_SFT",
                   "AMXINT8_SFT", "AMXINT4_SFT", "AMXINT4_KGroup_SFT")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--shape", default="dsv2-lite", choices=sorted(SHAPES), help="the layer's shape")
    p.add_argument("--methods", type=csv_list(str), default=list(DEFAULT_METHODS), help="comma list of methods")
    p.add_argument("--threads", type=int, default=2, help="cpuinfer_threads and torch threads")
    p.add_argument("--repeats", type=int, default=3, help="timed loads per method (median reported)")
    p.add_argument("--json-out", type=argparse.FileType("w"), default=None,
                   help="write the JSON lines here instead of after the table")
    args = p.parse_args(argv)
    def known(name: str) -> bool:
        try:
            return case_method(name) in KT_METHOD_MODES and bool(mode_of(name))
        except KeyError:
            return False

    unknown = [m for m in args.methods if not known(m)]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(KT_METHOD_MODES)}")
    if args.threads < 1 or args.repeats < 1:
        p.error("--threads and --repeats must be positive")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    shape = SHAPES[args.shape]
    torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}; torch "
          f"{torch.__version__}; kt-moe isa: {isa_level()}; {args.shape} (E={shape.num_experts}, "
          f"H={shape.hidden}, I={shape.intermediate}), {args.threads} threads", flush=True)
    experts, _ = layer_weights(shape, rank=16)
    ids = torch.arange(shape.num_experts, dtype=torch.int64)
    input_bytes = 3 * shape.num_experts * shape.hidden * shape.intermediate * 2
    print(f"{'method':20s} {'median s':>9s} {'min-max s':>13s} {'bf16 GB/s':>9s} {'MiB/layer':>9s}", flush=True)
    records = []
    for method in args.methods:
        times = []
        for _ in range(args.repeats):
            wrapper = None  # the previous load's memory goes back first
            wrapper = unloaded_wrapper(case_method(method), shape, args.threads, **case_options(method))
            start = time.perf_counter()
            wrapper.load_weights_from_tensors(*experts, ids)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        mib = wrapper.resident_bytes_per_expert() * shape.num_experts / 2**20
        print(f"{method:20s} {median:9.2f} {min(times):6.2f}-{max(times):<6.2f} {input_bytes / median / 1e9:9.2f} "
              f"{mib:9.0f}", flush=True)
        records.append(dict(kind="load", shape=args.shape, method=method, threads=args.threads, median_s=median,
                            min_s=min(times), max_s=max(times), input_gb_per_s=input_bytes / median / 1e9,
                            resident_mib=mib, isa=isa_level(), **machine()))
        del wrapper
    out = args.json_out or sys.stdout
    for record in records:
        print(json.dumps(record), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
