"""Benchmark of whole transformers models: a Qwen3-MoE with kt-moe experts against the same model
with transformers' own experts (experts_implementation="grouped_mm"), in the same run.

    python bench/bench_transformers.py [--layers 4 --experts 64 --top-k 8 --hidden 1024
        --intermediate 512 --vocab 32000] [--batch 2 --seq 128] [--new-tokens 16]
        [--threads 1,2] [--repeats 5 --warmup 1] [--rank 16] [--what train,decode]

train: one forward + backward of the causal-LM loss on [batch, seq] tokens, only the experts' LoRA
trainable (rank --rank, alpha 2 x rank): torch = grouped_mm experts with PEFT's LoRA on the experts
(target_parameters gate_up_proj, down_proj); kt-moe = AMXBF16_SFT with its LoRA of the same shape.
decode: generate() of --new-tokens greedy tokens after an 8-token prompt, batch 1: torch =
grouped_mm; kt-moe = the BF16, AMXINT8 and AMXINT4 inference methods; and the same model with experts
that return zeros ("no experts"): the time of everything else (attention, LM head, generate()'s
own work), which no experts implementation can go below. The model is bf16 with random
weights (routers scaled as in tests/transformers_models.py, so routing is not uniform noise). The
cases of one thread count are timed round-robin (one step of each per round, so their ratios hold
while the machine's speed drifts); rows give the median and min-max ms per step, tokens/s and the
ratio to torch's median (above 1: faster).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import Callable, Dict, List

import torch

from kt_moe.benchmark.arguments import HelpFormatter, csv_list
from kt_moe.benchmark.metrics import Stats
from kt_moe.benchmark.runner import cpu_model, isa_level

ROUTER_SCALE = 4.0
DECODE_METHODS = ("BF16", "AMXINT8", "AMXINT4")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    for name, default in (("layers", 4), ("experts", 64), ("top-k", 8), ("hidden", 1024), ("intermediate", 512),
                          ("vocab", 32000), ("batch", 2), ("seq", 128), ("new-tokens", 16), ("rank", 16),
                          ("repeats", 5), ("warmup", 1)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--threads", type=csv_list(int), default=[1, 2], help="comma list of thread counts")
    p.add_argument("--what", type=csv_list(str), default=["train", "decode"], help="comma list of train, decode")
    p.add_argument("--json-out", type=argparse.FileType("w"), default=None, help="write JSON lines here")
    args = p.parse_args(argv)
    if set(args.what) - {"train", "decode"}:
        p.error("--what takes train and decode")
    return args


def base_model(args) -> torch.nn.Module:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    config = Qwen3MoeConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                            moe_intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                            num_attention_heads=args.hidden // 64, num_key_value_heads=max(1, args.hidden // 256),
                            head_dim=64, num_experts=args.experts, num_experts_per_tok=args.top_k,
                            norm_topk_prob=True, initializer_range=0.02, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("mlp.gate"):
                module.weight.mul_(ROUTER_SCALE)
    model.set_experts_implementation("grouped_mm")
    return model


def train_cases(base, args, threads) -> Dict[str, Callable[[], None]]:
    from peft import LoraConfig, get_peft_model
    from kt_moe.integrations.transformers import expert_lora_parameters, offload_experts
    torch_model = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]))
    kt_model = offload_experts(copy.deepcopy(base), method="AMXBF16_SFT", lora_rank=args.rank,
                               lora_alpha=2 * args.rank, cpuinfer_threads=threads)
    for param in kt_model.parameters():
        param.requires_grad_(False)
    for _, param in expert_lora_parameters(kt_model):
        param.requires_grad_(True)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))

    def step(model):
        def run():
            model(ids, labels=ids).loss.backward()
            model.zero_grad(set_to_none=True)
        return run
    return {"torch grouped_mm + PEFT LoRA": step(torch_model), "kt-moe AMXBF16_SFT": step(kt_model)}


def no_experts(module, hidden_states, top_k_index, top_k_weights):
    return torch.zeros_like(hidden_states)


def decode_cases(base, args, threads) -> Dict[str, Callable[[], None]]:
    from transformers.integrations.moe import ExpertsInterface
    from kt_moe.integrations.transformers import offload_experts
    prompt = torch.randint(0, args.vocab, (1, 8), generator=torch.Generator().manual_seed(2))
    models = {"torch grouped_mm": base}
    for method in DECODE_METHODS:
        models[f"kt-moe {method}"] = offload_experts(copy.deepcopy(base), method=method, cpuinfer_threads=threads)
    ExpertsInterface.register("bench_no_experts", no_experts)
    models["no experts (the rest)"] = copy.deepcopy(base)
    models["no experts (the rest)"].set_experts_implementation("bench_no_experts")

    def step(model):
        def run():
            with torch.no_grad():
                model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               do_sample=False)
        return run
    return {name: step(model) for name, model in models.items()}


def time_round_robin(cases: Dict[str, Callable[[], None]], warmup: int, repeats: int) -> Dict[str, List[float]]:
    for _ in range(warmup):
        for run in cases.values():
            run()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"# {cpu_model()}, kt-moe ISA level {isa_level()}, torch {torch.__version__}")
    print(f"# Qwen3-MoE: {args.layers} layers, E={args.experts}, k={args.top_k}, H={args.hidden}, "
          f"I={args.intermediate}, vocab {args.vocab}, bf16")
    print(f"{'what':7} {'case':30} {'thr':>3} {'median ms':>10} {'min-max ms':>17} {'tok/s':>8} {'x torch':>7}")
    base = base_model(args)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for what in args.what:
            cases = train_cases(base, args, threads) if what == "train" else decode_cases(base, args, threads)
            tokens = args.batch * args.seq if what == "train" else args.new_tokens
            times = time_round_robin(cases, args.warmup, args.repeats)
            torch_median = None
            for name, values in times.items():
                stats = Stats.of(values)
                torch_median = torch_median or stats.median
                row = dict(what=what, case=name, threads=threads, median_ms=stats.median * 1e3,
                           min_ms=stats.min * 1e3, max_ms=stats.max * 1e3, tokens_per_s=tokens / stats.median,
                           vs_torch=torch_median / stats.median)
                print(f"{what:7} {name:30} {threads:3d} {row['median_ms']:10.1f} "
                      f"{row['min_ms']:8.1f}-{row['max_ms']:<8.1f} {row['tokens_per_s']:8.1f} {row['vs_torch']:7.2f}",
                      flush=True)
                if args.json_out:
                    args.json_out.write(json.dumps(row) + "\n")
            del cases
    return 0


if __name__ == "__main__":
    sys.exit(main())
