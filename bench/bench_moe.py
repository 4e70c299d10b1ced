"""Benchmark of the MoE layer: the torch bf16 baselines and the kt-moe methods, on the same
inputs in the same run, each checked once against kt_moe.reference.

    python bench/bench_moe.py --shape small,dsv2-lite --q 1,128,512 --threads 2 --repeats 10 \
        --warmup 2 [--methods AMXINT4,...] [--mode inference|sft|both] [--rank 16] [--json-out FILE]

Per case: median and min-max of the timed steps, tokens/s, effective GB/s of the expert weights
read and GFLOP/s of the base GEMMs (formulas in metrics.py), the ratio to the torch baseline of
the same mode, shape, q and threads (baseline median / case median: above 1 is faster), and the
relative L2 error of the output (and, for sft, the worst of grad_input and the gradients).
A kt-moe method whose engine is not built prints a "skipped" row. Exit status 1 if a case errored.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import traceback
from typing import Dict, List, Optional

import torch

from methods import BASELINES, Skipped, make_case, mode_of, names
from metrics import Stats, accuracy, step_flops, time_steps, torch_gemm_gflops, weight_bytes
from problem import Problem
from report import Reporter
from shapes import SHAPES

MODES = ("inference", "sft")


def _csv(kind):
    return lambda text: [kind(item) for item in text.split(",") if item]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", type=_csv(str), default=["small"], help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--q", type=_csv(int), default=[1, 128], help="comma list of token counts")
    p.add_argument("--threads", type=_csv(int), default=[2], help="comma list of thread counts")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per case before timing")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (lora_alpha is 32)")
    p.add_argument("--mode", choices=MODES + ("both",), default=None,
                   help="default: the modes of --methods, else inference")
    p.add_argument("--methods", type=_csv(str), default=None,
                   help="comma list of cases (default: every case of the mode); each mode's torch "
                        "baseline always runs first")
    p.add_argument("--json-out", type=argparse.FileType("w"), default=None,
                   help="write the JSON lines here instead of after the table")
    args = p.parse_args(argv)
    for shape in args.shape:
        if shape not in SHAPES:
            p.error(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    if args.repeats < 1 or args.warmup < 0 or min(args.q) < 1 or min(args.threads) < 1 or args.rank < 1:
        p.error("--repeats, --q, --threads and --rank must be positive, --warmup not negative")
    try:
        method_modes = {m: mode_of(m) for m in args.methods or []}
    except KeyError as exc:
        p.error(f"unknown method {exc}; known: {', '.join(names('inference') + names('sft'))}")
    modes = (MODES if args.mode == "both" else (args.mode,) if args.mode
             else tuple(m for m in MODES if m in method_modes.values()) or ("inference",))
    for method, mode in method_modes.items():
        if mode not in modes:
            p.error(f"method {method} runs in mode {mode}; add --mode {mode} or --mode both")
    args.cases = {}  # mode -> case names, the mode's baseline first
    for mode in modes:
        chosen = [m for m in args.methods if method_modes[m] == mode] if args.methods else names(mode)
        args.cases[mode] = [BASELINES[mode]] + [m for m in chosen if m != BASELINES[mode]]
    return args


def isa_level() -> str:
    """kt-moe's active ISA level, or "n/a" when kt_moe cannot be imported."""
    try:
        import kt_moe
        return kt_moe.cpu_info()["active"]
    except (ImportError, AttributeError, KeyError):
        return "n/a"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return platform.processor() or "unknown"


def run_case(name: str, problem: Problem, threads: int, args: argparse.Namespace, isa: str,
             baseline_ms: Optional[float]) -> Dict:
    """Set up, check once against the reference, warm up and time one case; its JSON record."""
    torch.set_num_threads(threads)
    case = make_case(name)
    s = problem.shape
    record = dict(shape=s.name, num_experts=s.num_experts, top_k=s.top_k, hidden=s.hidden,
                  intermediate=s.intermediate, q=problem.q, mode=case.mode, method=name, threads=threads,
                  isa=f"torch:{torch.backends.cpu.get_cpu_capability()}" if name in BASELINES.values() else isa,
                  rank=problem.rank if case.mode == "sft" else None)
    try:
        case.setup(problem, threads)
        errors, missing = accuracy(case.step(), problem.reference(case.mode))
        times = time_steps(case.step, args.warmup, args.repeats)
    except Skipped as exc:
        return dict(record, status="skipped", reason=str(exc))
    except NotImplementedError as exc:
        return dict(record, status="skipped", reason=f"NotImplementedError: {exc}")
    except Exception as exc:  # one broken case must not hide the others: report it and go on
        traceback.print_exc()
        return dict(record, status="error", reason=f"{type(exc).__name__}: {exc}")
    st = Stats.of(times)
    nbytes = weight_bytes(s, problem.distinct_experts, case.bytes_per_element, case.mode)
    grad_errors = [v for k, v in errors.items() if k != "out"]
    return dict(
        record, status="ok", times_ms=[t * 1e3 for t in times], median_ms=st.median * 1e3, min_ms=st.min * 1e3,
        max_ms=st.max * 1e3, p25_ms=st.p25 * 1e3, p75_ms=st.p75 * 1e3, tokens_per_s=problem.q / st.median,
        distinct_experts=problem.distinct_experts, gb_per_s=None if nbytes is None else nbytes / st.median / 1e9,
        gflop_per_s=step_flops(s, problem.q, case.mode) / st.median / 1e9,
        vs_torch=None if baseline_ms is None else baseline_ms / (st.median * 1e3),
        err_out=errors["out"], err_grad=max(grad_errors) if grad_errors else None, errors=errors,
        grads_missing=missing)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    reporter = Reporter(args.json_out)
    isa = isa_level()
    reporter.note(f"cpu: {cpu_model()}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} "
                  f"(other processes skew the times); torch {torch.__version__} "
                  f"({torch.backends.cpu.get_cpu_capability()}); kt-moe isa: {isa}")
    for threads in args.threads:
        rate = torch_gemm_gflops(threads)
        reporter.note(f"torch bf16 GEMM [512 x 2048] @ [2048 x 1408], {threads} threads: {rate:.1f} GFLOP/s",
                      dict(kind="torch_gemm", m=512, k=2048, n=1408, dtype="bfloat16", threads=threads,
                           gflop_per_s=rate, cpu=cpu_model(), torch=torch.__version__))
    reporter.header()
    failed = False
    for shape_name in args.shape:
        for q in args.q:
            problem = Problem(SHAPES[shape_name], q, args.rank)
            for mode, case_names in args.cases.items():
                for threads in args.threads:
                    baseline_ms = None
                    for name in case_names:
                        record = run_case(name, problem, threads, args, isa, baseline_ms)
                        if name == BASELINES[mode] and record["status"] == "ok":
                            baseline_ms = record["median_ms"]
                            record["vs_torch"] = 1.0
                        failed |= record["status"] == "error"
                        reporter.case(dict(record, kind="case"))
    reporter.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
