"""`kt-moe finetune`: LoRA fine-tuning of a small Qwen3-MoE with kt-moe experts, end to end.

Builds a small Qwen3-MoE with transformers (random weights, saved with save_pretrained: the base
model), offloads its experts to kt-moe with an SFT method, trains the experts' LoRA with AdamW on
text that ships with Python (the docstrings of standard-library modules, read as bytes: a 256-token
byte vocabulary, so no tokenizer or download is needed), printing the loss, tokens/s and the
process's memory; then saves the adapter in PEFT's format, loads it into the base model with plain
transformers + PEFT (experts in torch, no kt-moe) and prints both models' loss on held-out text.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import tempfile
import time
import warnings
from typing import List

import torch

TEXT_MODULES = ("collections", "itertools", "functools", "json", "pathlib", "argparse", "subprocess",
                "threading", "logging", "unittest", "datetime", "decimal", "fractions", "statistics", "textwrap")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="AMXBF16_SFT", help="kt-moe SFT method")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq", type=int, default=128, help="bytes per sequence")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="cpuinfer_threads")
    parser.add_argument("--output", default=None, help="directory for the base model and the adapter "
                                                       "(default: a temporary directory)")


def corpus() -> bytes:
    """Docstrings of standard-library modules, their classes and functions: about 200 KB of English."""
    parts: List[str] = []
    for name in TEXT_MODULES:
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and getattr(obj, "__module__", name) == name and len(doc) > 80:
                parts.append(doc.strip())
    return "\n\n".join(dict.fromkeys(parts)).encode("utf-8")


def batches(data: torch.Tensor, batch: int, seq: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, data.numel() - seq, (batch,), generator=gen)
        yield torch.stack([data[s:s + seq] for s in starts.tolist()])


def build_base(path: str) -> None:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    config = Qwen3MoeConfig(vocab_size=256, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                            num_experts=16, num_experts_per_tok=4, norm_topk_prob=True, tie_word_embeddings=False,
                            max_position_embeddings=1024)
    torch.manual_seed(0)
    Qwen3MoeForCausalLM(config).save_pretrained(path)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loss_of(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


def run(args: argparse.Namespace) -> int:
    try:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as transformers_logging
    except ImportError as exc:
        print(f"kt-moe finetune needs transformers and peft: pip install 'kt-moe[transformers]' ({exc})")
        return 1
    transformers_logging.disable_progress_bar()
    # PEFT reads an attribute transformers 5 deprecates; not ours to fix
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    from kt_moe.integrations.peft_adapters import save_expert_adapter
    from kt_moe.integrations.transformers import expert_lora_parameters, offload_experts

    with tempfile.TemporaryDirectory() as scratch:
        out = args.output or scratch
        base_dir, adapter_dir = os.path.join(out, "base"), os.path.join(out, "adapter")
        build_base(base_dir)
        data = torch.frombuffer(bytearray(corpus()), dtype=torch.uint8).long()
        split = int(data.numel() * 0.9)
        held_out = next(batches(data[split:], args.batch, args.seq, seed=1))
        print(f"text: {data.numel()} bytes of standard-library docstrings ({split} to train on)")

        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        offload_experts(model, method=args.method, lora_rank=args.rank, lora_alpha=2 * args.rank,
                        cpuinfer_threads=args.threads)
        for param in model.parameters():
            param.requires_grad_(False)
        params = [param.requires_grad_(True) for _, param in expert_lora_parameters(model)]
        print(f"{args.method}: {sum(p.numel() for p in params)} LoRA parameters on the experts of "
              f"{len(params) // 4} layers, rank {args.rank}")
        optimizer = torch.optim.AdamW(params, lr=args.lr)
        model.train()
        start, tokens = time.perf_counter(), 0
        for step, ids in zip(range(1, args.steps + 1), batches(data[:split], args.batch, args.seq, seed=0)):
            loss = model(ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            tokens += ids.numel()
            if step == 1 or step % 10 == 0 or step == args.steps:
                elapsed = time.perf_counter() - start
                print(f"step {step:4d}  loss {loss.item():.4f}  {tokens / elapsed:8.0f} tokens/s  "
                      f"peak RSS {rss_mb():.0f} MB")
        model.eval()
        kt_loss = loss_of(model, held_out)
        save_expert_adapter(model, adapter_dir)
        print(f"adapter saved to {adapter_dir} ({', '.join(sorted(os.listdir(adapter_dir)))})")

        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                          adapter_dir).eval()
        untrained = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        peft_loss = loss_of(plain, held_out)
        print(f"held-out loss: base model {loss_of(untrained, held_out):.4f}, kt-moe {kt_loss:.4f}, "
              f"plain transformers + PEFT with the saved adapter {peft_loss:.4f}")
        return 0 if abs(peft_loss - kt_loss) <= 0.02 * abs(kt_loss) else 1
