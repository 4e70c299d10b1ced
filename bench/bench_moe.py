"""Benchmark of the MoE layer: the torch bf16 baselines and the kt-moe methods, on the same
inputs in the same run, each checked once against kt_moe.reference.

    python bench/bench_moe.py --shape small,dsv2-lite --q 1,128,512 --threads 1,2 --repeats 10 \
        --warmup 2 [--pools 1,2] [--methods AMXINT4,...] [--mode inference|sft|both] [--rank 16]
        [--evict-mb 512] [--json-out FILE]

Each mode has two torch baselines: the plain loop over experts (torch-bf16, torch-bf16-autograd)
and transformers' grouped_mm experts (torch-grouped_mm; for sft torch-grouped_mm-sft, its LoRA
products done with grouped_mm too: kt_moe/benchmark/grouped_mm.py). The cases of one shape, q,
thread count and pool count are set up together and timed round-robin (one step of each per
round), so that their ratios hold while the machine's speed drifts. Per case: median and min-max
of the timed steps, tokens/s, effective GB/s of the expert weights read (scales included) and its
share of a streaming read timed in the same rounds, GFLOP/s of the base GEMMs (formulas in
kt_moe/benchmark/metrics.py), the ratios to both baselines (baseline median / case median: above 1
is faster), and the relative L2 error of the output (and, for sft, the worst of grad_input and the
gradients) next to the bound the tests hold the method to ('!' when above). Every JSON line names
the machine (CPU model, ISA levels, torch version, OpenMP wait policy). --shape deepseek-v3 builds
8 distinct experts that fill its 256 slots in turn (kt_moe/benchmark/shapes.py): a quantized method
then holds and reads the whole layer (INT4: 7.7 GB); inference methods only, without baselines.
torch's OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless the environment sets a policy), so that they do not spin
on the cores of the case timed after the cache-evicting read. A case that fails prints an "error"
row with the reason below it. What runs meanwhile shows on stderr. Exit status 1 if a case errored.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

# Before torch starts its OpenMP threads: without this they spin after the cache-evicting read and
# take cores from the step timed next (docs/threads.md). A policy set in the environment is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from kt_moe.benchmark.arguments import HelpFormatter, csv_list
from kt_moe.benchmark.cases import BASELINE_NAMES, BASELINES, mode_of, names
from kt_moe.benchmark.metrics import torch_gemm_gflops
from kt_moe.benchmark.problem import Problem
from kt_moe.benchmark.report import ERRORS_NOTE, Reporter
from kt_moe.benchmark.runner import cpu_model, isa_level, machine, omp_wait_policy, run_cases
from kt_moe.benchmark.shapes import ARITHMETIC_SHAPES, REPLICATED_SHAPES, SHAPES
from kt_moe.closed_pipe import quiet_on_closed_pipe

MODES = ("inference", "sft")



def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--shape", type=csv_list(str), default=["small"],
                   help=f"comma list of {', '.join(SHAPES)}; {', '.join(REPLICATED_SHAPES)} with a few distinct experts "
                        "filling its slots (inference methods only)")
    p.add_argument("--q", type=csv_list(int), default=[1, 128], help="comma list of token counts")
    p.add_argument("--threads", type=csv_list(int), default=[2], help="comma list of thread counts")
    p.add_argument("--pools", type=csv_list(int), default=[1],
                   help="comma list of threadpool_count values for the kt-moe methods (each thread count "
                        "split into that many subpools; a count below the pools is skipped)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per case before timing")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (lora_alpha is 32)")
    p.add_argument("--evict-mb", type=float, default=512.0,
                   help="MB of other memory read before each timed step (untimed), so that a step's "
                        "experts come from memory as in a whole model; 0 keeps what the cache holds")
    p.add_argument("--mode", choices=MODES + ("both",), default=None,
                   help="default: the modes of --methods, else inference")
    p.add_argument("--methods", type=csv_list(str), default=None,
                   help="comma list of cases (default: every case of the mode); each mode's torch "
                        "baselines always run first. LLAMAFILE:Q4_K/Q4_K/Q8_0 runs LLAMAFILE with its "
                        "weights quantized to those GGUF types (gate/up/down, or one for all; default Q8_0); "
                        "AMXINT4:64, AMXINT4:128 (and -sym: symmetric) run AMXINT4 with that group_size")
    p.add_argument("--json-out", type=argparse.FileType("w"), default=None,
                   help="write the JSON lines here instead of after the table")
    args = p.parse_args(argv)
    for shape in args.shape:
        if shape not in SHAPES and shape not in REPLICATED_SHAPES:
            p.error(f"unknown shape {shape!r}; known: {', '.join([*SHAPES, *REPLICATED_SHAPES])}")
    if (args.repeats < 1 or args.warmup < 0 or min(args.q) < 1 or min(args.threads) < 1 or min(args.pools) < 1
            or args.rank < 1):
        p.error("--repeats, --q, --threads, --pools and --rank must be positive, --warmup not negative")
    if args.evict_mb < 0:
        p.error("--evict-mb must not be negative")
    try:
        method_modes = {m: mode_of(m) for m in args.methods or []}
    except KeyError as exc:
        p.error(f"unknown method {exc}; known: {', '.join(names('inference') + names('sft'))}")
    modes = (MODES if args.mode == "both" else (args.mode,) if args.mode
             else tuple(m for m in MODES if m in method_modes.values()) or ("inference",))
    for method, mode in method_modes.items():
        if mode not in modes:
            p.error(f"method {method} runs in mode {mode}; add --mode {mode} or --mode both")
    replicated = [shape for shape in args.shape if shape in REPLICATED_SHAPES]
    if replicated and (modes != ("inference",) or not args.methods):
        p.error(f"--shape {replicated[0]} runs inference methods only, named in --methods "
                f"({REPLICATED_SHAPES[replicated[0]]} distinct experts fill its slots; it has no torch baselines)")
    args.cases = {}  # mode -> case names, the mode's baselines first
    for mode in modes:
        chosen = [m for m in args.methods if method_modes[m] == mode] if args.methods else names(mode)
        args.cases[mode] = list(BASELINES[mode]) + [m for m in chosen if m not in BASELINES[mode]]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    reporter = Reporter(args.json_out)
    isa = isa_level()
    reporter.note(f"cpu: {cpu_model()}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} "
                  f"(other processes skew the times); torch {torch.__version__} "
                  f"({torch.backends.cpu.get_cpu_capability()}, OMP_WAIT_POLICY {omp_wait_policy()}); "
                  f"kt-moe isa: {isa}")
    for threads in args.threads:
        rate = torch_gemm_gflops(threads)
        reporter.note(f"torch bf16 GEMM [512 x 2048] @ [2048 x 1408], {threads} threads: {rate:.1f} GFLOP/s",
                      dict(kind="torch_gemm", m=512, k=2048, n=1408, dtype="bfloat16", threads=threads,
                           gflop_per_s=rate, **machine()))
    reporter.note(ERRORS_NOTE)
    reporter.header()
    failed = False
    for shape_name in args.shape:
        for q in args.q:
            reporter.progress(f"generating the random weights and inputs of {shape_name}, q={q}")
            built = REPLICATED_SHAPES.get(shape_name)
            problem = Problem(ARITHMETIC_SHAPES[shape_name], q, args.rank, built)
            for mode, case_names in args.cases.items():
                if built:
                    case_names = [name for name in case_names if name not in BASELINE_NAMES]
                for threads, pools in ((t, n) for t in args.threads for n in args.pools if n <= t):
                    for record in run_cases(case_names, problem, threads, args.warmup, args.repeats, isa,
                                            evict_bytes=int(args.evict_mb * 2**20), progress=reporter.progress,
                                            pools=pools):
                        failed |= record["status"] == "error"
                        reporter.case(dict(record, kind="case"))
    reporter.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
