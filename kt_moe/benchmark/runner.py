"""Runs one benchmark case: set up, check once against the fp32 reference, warm up, time; returns
the case's JSON record. Shared by bench/bench_moe.py and `kt-moe demo`."""

from __future__ import annotations

import platform
import traceback
from typing import Dict, Optional

import torch

from kt_moe.benchmark.cases import BASELINES, make_case
from kt_moe.benchmark.metrics import Stats, accuracy, step_flops, time_steps, weight_bytes
from kt_moe.benchmark.problem import Problem


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


def run_case(name: str, problem: Problem, threads: int, warmup: int, repeats: int, isa: str,
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
        times = time_steps(case.step, warmup, repeats)
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
