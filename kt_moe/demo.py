"""`kt-moe demo`: the two usage examples of spec section 3 (inference forward; SFT forward_sft +
backward) at a layer size this machine holds, for the torch bf16 baseline and every kt-moe method:
what ran, how fast, and the relative L2 error against kt_moe.reference. A method whose engine is
not built yet shows as "skipped"."""

from __future__ import annotations

import argparse
import os
import time

import torch

from kt_moe.benchmark.cases import BASELINES, ktmoe_wrapper, names
from kt_moe.benchmark.problem import LORA_ALPHA, Problem
from kt_moe.benchmark.report import Reporter
from kt_moe.benchmark.runner import cpu_model, isa_level, run_case
from kt_moe.benchmark.shapes import SHAPES
from kt_moe.reference import LoraWeights, lora_moe_forward

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
    parser.add_argument("--steps", type=int, default=5, help="training steps of the SFT example")


def run(args: argparse.Namespace) -> int:
    if min(args.tokens, args.threads, args.rank, args.repeats, args.steps) < 1:
        raise SystemExit("kt-moe demo: --tokens, --threads, --rank, --repeats and --steps must be positive")
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
            if mode == "sft" and name != BASELINES["sft"] and record["status"] == "ok":
                train(name, problem, args.threads, args.steps)
    return 1 if failed else 0


def train(method: str, problem: Problem, threads: int, steps: int) -> None:
    """The spec 3.2 training loop: LoRA B starts at zero, AdamW fits the output of a teacher LoRA
    (the problem's), one forward_sft + backward + step + update_lora_weights per step."""
    wrapper = ktmoe_wrapper(method, problem, threads)
    teacher = problem.lora
    student = LoraWeights(*(t.clone() if "_a" in name else torch.zeros_like(t)
                            for name, t in teacher._asdict().items()))
    for t in student:
        t.requires_grad_()
    wrapper.init_lora_weights(*student)
    target = lora_moe_forward(problem.x, problem.expert_ids, problem.weights, *problem.experts, teacher,
                              problem.scale)
    optimizer = torch.optim.AdamW(student, lr=1e-3, weight_decay=0.0)
    print(f"  training {method}: {steps} steps of AdamW towards a teacher LoRA (MSE loss)")
    for step in range(steps):
        start = time.perf_counter()
        out = wrapper.forward_sft(problem.x, problem.expert_ids, problem.weights, save_for_backward=True)
        diff = out.float() - target
        loss = float(diff.pow(2).mean())
        wrapper.backward(2 * diff / diff.numel())
        optimizer.step()
        optimizer.zero_grad()
        wrapper.update_lora_weights()
        print(f"  step {step + 1}: loss {loss:.3e}, {(time.perf_counter() - start) * 1e3:.1f} ms", flush=True)
