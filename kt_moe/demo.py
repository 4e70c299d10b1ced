"""`kt-moe demo`: the two usage examples of spec section 3 (inference forward; SFT forward_sft +
backward) at a layer size this machine holds, for the torch bf16 baseline and every kt-moe method:
what ran, how fast, and the relative L2 error against kt_moe.reference. A method whose engine is
not built yet shows as "skipped"."""

from __future__ import annotations

import argparse
import os

import torch

from kt_moe.benchmark.cases import names
from kt_moe.benchmark.problem import LORA_ALPHA, Problem
from kt_moe.benchmark.report import Reporter
from kt_moe.benchmark.runner import cpu_model, isa_level, run_case
from kt_moe.benchmark.shapes import SHAPES

EXAMPLES = {
    "inference": "spec 3.1: forward(hidden_states bf16 [q, H], topk_ids int64 [q, k], topk_weights fp32 [q, k])",
    "sft": "spec 3.2: forward_sft(..., save_for_backward=True) then backward(grad_output), LoRA r={rank} alpha={alpha}",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=sorted(SHAPES), default="dsv2-lite",
                        help="layer shape (default dsv2-lite: E=64, top-6, H=2048, I=1408)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per call (default 128)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cpuinfer_threads")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the SFT example")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per method (median shown)")


def run(args: argparse.Namespace) -> int:
    if min(args.tokens, args.threads, args.rank, args.repeats) < 1:
        raise SystemExit("kt-moe demo: --tokens, --threads, --rank and --repeats must be positive")
    with open(os.devnull, "w") as no_json:  # the demo prints the table only
        return _run(args, Reporter(no_json))


def _run(args: argparse.Namespace, reporter: Reporter) -> int:
    shape = SHAPES[args.shape]
    isa = isa_level()
    reporter.note(f"kt-moe demo on {cpu_model()} ({os.cpu_count()} cpus), kt-moe ISA level: {isa}, "
                  f"torch {torch.__version__}")
    reporter.note(f"layer {shape.name}: E={shape.num_experts} experts, top-{shape.top_k}, H={shape.hidden}, "
                  f"I={shape.intermediate}, {args.tokens} tokens, {args.threads} threads; times are medians "
                  f"of {args.repeats} calls; 'err' is the relative L2 error against the fp32 reference")
    problem = Problem(shape, args.tokens, args.rank)
    failed = False
    for mode, example in EXAMPLES.items():
        reporter.note("\n" + example.format(rank=args.rank, alpha=LORA_ALPHA))
        reporter.header()
        baseline_ms = None
        for name in names(mode):
            record = run_case(name, problem, args.threads, warmup=1, repeats=args.repeats, isa=isa,
                              baseline_ms=baseline_ms)
            if baseline_ms is None and record["status"] == "ok":
                baseline_ms, record["vs_torch"] = record["median_ms"], 1.0
            failed |= record["status"] == "error"
            reporter.case(record)
    return 1 if failed else 0
