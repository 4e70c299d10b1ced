"""`kt-moe demo`: the two usage examples (inference: forward; LoRA fine-tuning: forward_sft +
backward) at a layer size this machine holds, for the torch bf16 baseline and every kt-moe method:
what ran, how fast, and the relative L2 error against kt_moe.reference next to the error the tests
allow the method.
BF16 also walks through the asynchronous calls (submit_forward / sync_forward) and deferred experts,
which every inference method shares; each built SFT method runs a few training steps. What runs
meanwhile (setup, timing rounds) shows on stderr."""

from __future__ import annotations

import argparse
import os
import time

import torch

from kt_moe.benchmark.cases import BASELINES, ktmoe_wrapper, names
from kt_moe.benchmark.problem import LORA_ALPHA, Problem
from kt_moe.benchmark.report import ERRORS_NOTE, Reporter
from kt_moe.benchmark.runner import cpu_model, isa_level, run_cases
from kt_moe.benchmark.shapes import SHAPES
from kt_moe.reference import LoraWeights, lora_moe_forward, relative_l2

ASYNC_EXAMPLE_METHOD = "BF16"  # the walk-through runs once, on the method whose weights load at once

EXAMPLES = {
    "inference": "Inference: forward(hidden_states bf16 [q, H], topk_ids int64 [q, k], topk_weights fp32 [q, k])",
    "sft": "LoRA fine-tuning: forward_sft(..., save_for_backward=True) + backward(grad_output), "
           "LoRA r={rank} alpha={alpha}",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=sorted(SHAPES), default="dsv2-lite",
                        help="layer shape (default dsv2-lite: E=64, top-6, H=2048, I=1408)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per call")
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
                  f"of {args.repeats} calls")
    reporter.note(ERRORS_NOTE)
    reporter.progress("generating the layer's random weights and inputs")
    problem = Problem(shape, args.tokens, args.rank)
    failed = False
    for mode, example in EXAMPLES.items():
        reporter.note("\n" + example.format(rank=args.rank, alpha=LORA_ALPHA))
        reporter.header()
        for name, record in zip(names(mode), run_cases(names(mode), problem, args.threads, warmup=1,
                                                       repeats=args.repeats, isa=isa, progress=reporter.progress)):
            failed |= record["status"] == "error"
            reporter.case(record)
            if mode == "sft" and name not in BASELINES["sft"] and record["status"] == "ok":
                train(name, problem, args.threads, args.steps)
            if name == ASYNC_EXAMPLE_METHOD and record["status"] == "ok":
                serve(name, problem, args.threads)
    return 1 if failed else 0


def serve(method: str, problem: Problem, threads: int) -> None:
    """The inference call split in two: submit_forward returns at once, sync_forward waits;
    then the lowest-scored experts of each token deferred (select_deferred_experts) and fetched with
    sync_deferred_forward: immediate + deferred must match the reference."""
    k = problem.shape.top_k
    deferred_k = k // 2
    wrapper = ktmoe_wrapper(method, problem, threads, max_deferred_experts_per_token=deferred_k)
    reference = problem.reference("inference").out
    x, ids, weights = problem.x, problem.expert_ids, problem.weights
    start = time.perf_counter()
    wrapper.submit_forward(x, ids, weights, 0)
    submitted = time.perf_counter()
    wrapper.sync_forward(x, 0)
    synced = time.perf_counter()
    immediate, deferred = wrapper.select_deferred_experts(ids, weights, k - deferred_k)
    now = wrapper.forward(x, immediate, weights, 0, deferred_ids=deferred)
    first = time.perf_counter()
    later = wrapper.sync_deferred_forward(0)
    error = relative_l2(now.float() + later.float(), reference)
    print(f"  async {method}: submit_forward returned after {(submitted - start) * 1e3:.2f} ms, sync_forward "
          f"after {(synced - start) * 1e3:.1f} ms; {deferred_k} of {k} experts per token deferred: immediate "
          f"output after {(first - synced) * 1e3:.1f} ms, immediate + deferred err {error:.1e}", flush=True)


def train(method: str, problem: Problem, threads: int, steps: int) -> None:
    """A LoRA training loop: LoRA B starts at zero, AdamW fits the output of a teacher LoRA
    (the problem's), one forward_sft + backward + step + update_lora_weights per step."""
    print(f"  training {method}: {steps} steps of AdamW towards a teacher LoRA (MSE loss)", flush=True)
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
