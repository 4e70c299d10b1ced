"""Runs the benchmark cases of one problem: set up, check once against the fp32 reference, warm up,
time round-robin; returns the cases' JSON records. Shared by bench/bench_moe.py and `kt-moe demo`."""

from __future__ import annotations

import os
import platform
import time
import traceback
from typing import Callable, Dict, List, Optional

import torch

from kt_moe.benchmark.cases import BASELINE_NAMES, BASELINES, error_bound, make_case
from kt_moe.benchmark.metrics import Stats, accuracy, step_flops, weight_bytes
from kt_moe.benchmark.problem import Problem


# (what runs now, transient): transient steps (timing rounds) are worth showing only in place
Progress = Callable[[str, bool], None]


def isa_level(key: str = "active"):
    """kt-moe's active ISA level (or, key="levels", the levels this CPU runs), "n/a" when kt_moe
    cannot be imported."""
    try:
        import kt_moe
        return kt_moe.cpu_info()[key]
    except (ImportError, AttributeError, KeyError):
        return "n/a"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return platform.processor() or "unknown"


def omp_wait_policy() -> str:
    """OMP_WAIT_POLICY as set for this process ("default" when unset): with the default, torch's
    OpenMP threads spin for a while after each parallel op, taking cores from the kt-moe workers
    that run next (docs/threads.md)."""
    return os.environ.get("OMP_WAIT_POLICY", "default")


def machine() -> Dict:
    """What every JSON record carries, so that rows of different machines are not mixed up."""
    return dict(cpu=cpu_model(), cpus=os.cpu_count(), isa_levels=isa_level("levels"), torch=torch.__version__,
                omp_wait_policy=omp_wait_policy())


def run_cases(names: List[str], problem: Problem, threads: int, warmup: int, repeats: int,
              isa: str, evict_bytes: int = 0, progress: Optional[Progress] = None,
              pools: int = 1) -> List[Dict]:
    """Set up every case of `names` (the mode's torch baselines first; the kt-moe methods with
    cpuinfer_threads=threads split into threadpool_count=pools subpools), check each once against the
    fp32 reference, then time them round-robin: each round times one step of every case, so that
    all cases share the machine's slow and fast spells (this machine is shared and noisy) and their
    ratios compare like with like. With evict_bytes > 0, that many bytes of other memory are read
    before each timed step (not timed), so that the step finds its experts in memory, not in the
    last-level cache, as in a model whose other layers ran in between; that read is timed too (a
    streaming read of a buffer larger than the last-level cache, by torch with the same threads), and
    each record gets its median rate (read_gb_per_s) and the case's effective GB/s as a share of it
    (read_share: how close a decode is to the memory's read bandwidth). One JSON record per case, in
    order; vs_torch and vs_grouped_mm are the ratios to the mode's two baselines (their median over
    the case's: above 1 is faster) when they ran. progress(text, transient) hears what runs, as it
    starts."""
    progress = progress or (lambda text, transient: None)
    torch.set_num_threads(threads)
    records, ready = [], []
    for name in names:
        progress(f"{name}: setting up and checking once against the fp32 reference (q={problem.q})", False)
        record, case = _prepare(name, problem, threads, pools, isa)
        records.append(record)
        if case is not None:
            ready.append((len(records) - 1, case))
    times = {i: [] for i, _ in ready}
    progress(f"timing {len(ready)} cases: {warmup} warm-up and {repeats} timed round(s), one step of each per round",
             False)
    for r in range(warmup):
        progress(f"timing {len(ready)} cases: warm-up round {r + 1}/{warmup}", True)
        for _, case in ready:
            case.step()
    evict = torch.ones(evict_bytes // 8, dtype=torch.int64) if evict_bytes > 0 else None
    read_times = []
    for r in range(repeats):
        progress(f"timing {len(ready)} cases: round {r + 1}/{repeats}", True)
        for i, case in ready:
            if evict is not None:
                start = time.perf_counter()
                evict.sum()
                read_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            case.step()
            times[i].append(time.perf_counter() - start)
    read_gb_per_s = evict_bytes / Stats.of(read_times).median / 1e9 if read_times else None
    for i, case in ready:
        records[i] = _timed_record(records[i], case, problem, times[i], read_gb_per_s)
    medians = {r["method"]: r["median_ms"] for r in records if r["status"] == "ok"}
    for r in records:
        if r["status"] == "ok":
            for key, baseline in zip(("vs_torch", "vs_grouped_mm"), BASELINES[r["mode"]]):
                r[key] = medians[baseline] / r["median_ms"] if baseline in medians else None
    return records


def _prepare(name: str, problem: Problem, threads: int, pools: int, isa: str):
    """(record, case): the case set up and checked once, or (an error record, None)."""
    case = make_case(name)
    s = problem.shape
    baseline = name in BASELINE_NAMES
    record = dict(shape=s.name, num_experts=s.num_experts, top_k=s.top_k, hidden=s.hidden,
                  intermediate=s.intermediate, q=problem.q, mode=case.mode, method=name, threads=threads,
                  pools=None if baseline else pools,
                  isa=f"torch:{torch.backends.cpu.get_cpu_capability()}" if baseline else isa,
                  rank=problem.rank if case.mode == "sft" else None, err_bound=error_bound(name), **machine())
    try:
        case.setup(problem, threads, pools)
        case.errors, case.missing = accuracy(case.step(), problem.reference(case.mode))
    except Exception as exc:  # one broken case must not hide the others: report it and go on
        traceback.print_exc()
        return dict(record, status="error", reason=f"{type(exc).__name__}: {exc}"), None
    return record, case


def _timed_record(record: Dict, case, problem: Problem, times: List[float], read_gb_per_s: Optional[float]) -> Dict:
    st = Stats.of(times)
    s = problem.shape
    nbytes = weight_bytes(s, problem.distinct_experts, case.bytes_per_element, case.mode)
    gb_per_s = None if nbytes is None else nbytes / st.median / 1e9
    grad_errors = [v for k, v in case.errors.items() if k != "out"]
    return dict(
        record, status="ok", times_ms=[t * 1e3 for t in times], median_ms=st.median * 1e3, min_ms=st.min * 1e3,
        max_ms=st.max * 1e3, p25_ms=st.p25 * 1e3, p75_ms=st.p75 * 1e3, tokens_per_s=problem.q / st.median,
        distinct_experts=problem.distinct_experts, weight_bytes=nbytes, gb_per_s=gb_per_s,
        read_gb_per_s=read_gb_per_s,
        read_share=None if gb_per_s is None or read_gb_per_s is None else gb_per_s / read_gb_per_s,
        gflop_per_s=step_flops(s, problem.q, case.mode) / st.median / 1e9,
        err_out=case.errors["out"], err_grad=max(grad_errors) if grad_errors else None, errors=case.errors,
        grads_missing=case.missing)
