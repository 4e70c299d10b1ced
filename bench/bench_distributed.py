"""Benchmark of an expert-parallel layer (kt_moe.distributed.ExpertParallelMoE) with its ranks as
processes on this machine: the time of the token exchange (torch.distributed collectives, gloo over
loopback) against the experts' compute, per layer step; and the traffic model of docs/distributed.md.

    python bench/bench_distributed.py [--shape dsv2-lite] [--ranks 2] [--q 128] [--method AMXBF16_SFT]
        [--threads 1] [--repeats 5] [--json-out FILE]
    python bench/bench_distributed.py --traffic [--shape deepseek-v3] [--q 128]

Each rank holds its share of the layer's experts (random bf16 weights, contiguous placement) and
sends --q tokens per step with random top-k routing; a step is forward (inference methods) or
forward_sft + backward (SFT methods). Per rank: median step ms, of which in the collectives (waiting
for the other ranks included) and in the local experts, and MB sent to other ranks per step. Ranks
on one machine share its cores, so this shows the exchange's overhead, not how steps scale.

--traffic prints the model instead: per token and layer, the expected number of other ranks that
hold one of its experts (k experts drawn uniformly from E spread evenly over N ranks), the bytes sent
to them and back (forward and backward, the row formats of kt_moe.distributed.token_exchange), and
the seconds per step that moving --q tokens' rows of every layer takes at 25 and 100 Gbit/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from typing import List, Optional

import torch

from kt_moe.benchmark.arguments import HelpFormatter
from kt_moe.benchmark.cases import KT_METHOD_MODES, LORA_ALPHA
from kt_moe.benchmark.runner import cpu_model, isa_level, machine
from kt_moe.benchmark.shapes import ARITHMETIC_SHAPES, SHAPES, Shape
from kt_moe.closed_pipe import quiet_on_closed_pipe

LORA_RANK = 16
LINKS_GBIT = (25, 100)
MODEL_LAYERS = {"deepseek-v3": 58, "dsv2-lite": 26, "qwen3-30b": 48, "small": 1}  # MoE layers of each model


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--shape", default=None, choices=sorted(ARITHMETIC_SHAPES),
                   help="the layer's shape (default dsv2-lite; --traffic: deepseek-v3)")
    p.add_argument("--ranks", type=int, default=2, help="processes of the process group")
    p.add_argument("--q", type=int, default=128, help="tokens per rank per step")
    p.add_argument("--method", default="AMXBF16_SFT", choices=sorted(KT_METHOD_MODES), help="the layer's method")
    p.add_argument("--threads", type=int, default=1, help="cpuinfer_threads of each rank")
    p.add_argument("--repeats", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--traffic", action="store_true", help="print the traffic model only")
    p.add_argument("--json-out", type=argparse.FileType("w"), default=None,
                   help="write the JSON lines here instead of after the table")
    args = p.parse_args(argv)
    args.shape = args.shape or ("deepseek-v3" if args.traffic else "dsv2-lite")
    if not args.traffic and args.shape not in SHAPES:
        p.error(f"--shape {args.shape} is for --traffic only (its weights do not fit here)")
    if min(args.ranks, args.q, args.threads, args.repeats) < 1:
        p.error("--ranks, --q, --threads and --repeats must be positive")
    if args.ranks > (ARITHMETIC_SHAPES[args.shape].num_experts):
        p.error(f"--ranks: at most one rank per expert ({ARITHMETIC_SHAPES[args.shape].num_experts})")
    return args


# ---- the traffic model --------------------------------------------------------------------------

def other_ranks_per_token(shape: Shape, ranks: int) -> float:
    """Expected number of other ranks holding at least one of a token's k experts."""
    per_rank = shape.num_experts // ranks
    none_there = math.comb(shape.num_experts - per_rank, shape.top_k) / math.comb(shape.num_experts, shape.top_k)
    return (ranks - 1) * (1 - none_there)


def bytes_per_destination(shape: Shape) -> dict:
    """Bytes one token moves to and from one rank per layer in a training step (token_exchange's
    rows): out bf16 hidden, expert ids and routing weights, back an fp32 partial output; in backward,
    out the bf16 grad_output, back an fp32 grad_input partial and the routing weights' gradient."""
    H, k = shape.hidden, shape.top_k
    return dict(forward=(2 * H + 8 * k) + 4 * H, backward=2 * H + (4 * H + 4 * k))


def traffic_rows(shape_name: str, q: int) -> List[dict]:
    shape = ARITHMETIC_SHAPES[shape_name]
    per_destination = bytes_per_destination(shape)
    rows = []
    for ranks in (2, 4, 8):
        d = other_ranks_per_token(shape, ranks)
        forward, backward = d * per_destination["forward"], d * per_destination["backward"]
        layers = MODEL_LAYERS[shape_name]
        step = q * layers * (forward + backward)
        rows.append(dict(kind="traffic", shape=shape_name, ranks=ranks, q=q, layers=layers, other_ranks=d,
                         forward_kb_per_token=forward / 1e3, backward_kb_per_token=backward / 1e3,
                         step_mb_per_rank=step / 1e6,
                         **{f"step_s_at_{g}gbit": step * 8 / (g * 1e9) for g in LINKS_GBIT}))
    return rows


def print_traffic(rows: List[dict]) -> None:
    print(f"{'ranks':>5s} {'other ranks':>11s} {'fwd KB/tok':>10s} {'bwd KB/tok':>10s} {'MB/step':>9s} "
          + " ".join(f"{f's @{g}Gb':>8s}" for g in LINKS_GBIT))
    for r in rows:
        print(f"{r['ranks']:5d} {r['other_ranks']:11.2f} {r['forward_kb_per_token']:10.1f} "
              f"{r['backward_kb_per_token']:10.1f} {r['step_mb_per_rank']:9.0f} "
              + " ".join(f"{r[f'step_s_at_{g}gbit']:8.3f}" for g in LINKS_GBIT))


# ---- the measured steps -------------------------------------------------------------------------

def rank_main(rank: int, args: argparse.Namespace, folder: str) -> None:
    import torch.distributed as dist

    from kt_moe.distributed import ExpertParallelMoE
    from kt_moe.reference import random_experts, random_lora, random_routing

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=args.ranks,
                            timeout=datetime.timedelta(seconds=600))
    shape, mode = SHAPES[args.shape], KT_METHOD_MODES[args.method]
    sft = dict(lora_rank=LORA_RANK, lora_alpha=LORA_ALPHA) if mode == "sft" else {}
    layer = ExpertParallelMoE(layer_idx=0, num_experts=shape.num_experts, num_experts_per_tok=shape.top_k,
                              hidden_size=shape.hidden, moe_intermediate_size=shape.intermediate, num_gpu_experts=0,
                              cpuinfer_threads=args.threads, threadpool_count=1, weight_path="",
                              chunked_prefill_size=args.q, method=args.method, mode=mode, **sft)
    held = len(layer.local_experts)
    layer.load_weights_from_tensors(*random_experts(held, shape.hidden, shape.intermediate, seed=rank))
    if sft:
        layer.init_lora_weights(*random_lora(held, shape.hidden, shape.intermediate, LORA_RANK, seed=rank))
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(args.q, shape.hidden, generator=gen).to(torch.bfloat16)
    ids, weights = random_routing(args.q, shape.num_experts, shape.top_k, seed=100 + rank)

    def step():
        if not sft:
            return layer.forward(x, ids, weights)
        out = layer.forward_sft(x, ids, weights)
        return layer.backward(out)

    rows = []
    for repeat in range(args.repeats + 1):  # the first step warms up
        dist.barrier()
        times, compute = layer.exchange.times, layer.compute_seconds
        before = (times.seconds, times.bytes_sent, compute)
        start = time.perf_counter()
        step()
        total = time.perf_counter() - start
        if repeat:
            rows.append(dict(step=total, collective=times.seconds - before[0],
                             compute=layer.compute_seconds - before[2], sent=times.bytes_sent - before[1]))
    torch.save(dict(rows=rows, experts=held, calls=layer.exchange.times.calls // (args.repeats + 1)),
               os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


def run_ranks(args: argparse.Namespace) -> List[dict]:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        processes = [context.Process(target=rank_main, args=(rank, args, folder)) for rank in range(args.ranks)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        failed = [rank for rank, process in enumerate(processes) if process.exitcode]
        if failed:
            raise RuntimeError(f"ranks {failed} failed (their tracebacks are above)")
        return [torch.load(os.path.join(folder, f"rank{rank}.pt")) for rank in range(args.ranks)]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    out = args.json_out or sys.stdout
    if args.traffic:
        shape = ARITHMETIC_SHAPES[args.shape]
        print(f"traffic model: {args.shape} (E={shape.num_experts}, k={shape.top_k}, H={shape.hidden}), "
              f"{MODEL_LAYERS[args.shape]} MoE layers, q={args.q} tokens per rank per step")
        rows = traffic_rows(args.shape, args.q)
        print_traffic(rows)
        for row in rows:
            print(json.dumps(row), file=out)
        return 0
    shape = SHAPES[args.shape]
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}; torch "
          f"{torch.__version__}; kt-moe isa: {isa_level()}; {args.shape} (E={shape.num_experts}, k={shape.top_k}, "
          f"H={shape.hidden}, I={shape.intermediate}); {args.method}, {args.ranks} ranks x {args.threads} threads, "
          f"q={args.q} per rank; gloo over loopback", flush=True)
    results = run_ranks(args)
    print(f"{'rank':>4s} {'experts':>7s} {'step ms':>8s} {'exchange ms':>11s} {'share':>6s} {'experts ms':>10s} "
          f"{'MB sent':>8s} {'calls':>5s}")
    records = []
    for rank, result in enumerate(results):
        median = {key: statistics.median(r[key] for r in result["rows"]) for key in ("step", "collective", "compute",
                                                                                     "sent")}
        print(f"{rank:4d} {result['experts']:7d} {median['step'] * 1e3:8.1f} {median['collective'] * 1e3:11.1f} "
              f"{median['collective'] / median['step']:6.0%} {median['compute'] * 1e3:10.1f} "
              f"{median['sent'] / 1e6:8.2f} {result['calls']:5d}")
        records.append(dict(kind="expert_parallel", shape=args.shape, method=args.method, ranks=args.ranks,
                            rank=rank, q=args.q, threads=args.threads, experts=result["experts"],
                            step_ms=median["step"] * 1e3, exchange_ms=median["collective"] * 1e3,
                            experts_ms=median["compute"] * 1e3, sent_mb=median["sent"] / 1e6,
                            collective_calls=result["calls"], repeats=args.repeats, isa=isa_level(), **machine()))
    for record in records:
        print(json.dumps(record), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
