"""The MoE layer shapes the bench knows, by name (--shape)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """One MoE layer: E experts, top-k per token, hidden size H, expert intermediate size I."""

    name: str
    num_experts: int
    top_k: int
    hidden: int
    intermediate: int


SHAPES = {s.name: s for s in (
    Shape("small", num_experts=8, top_k=2, hidden=1024, intermediate=512),
    Shape("dsv2-lite", num_experts=64, top_k=6, hidden=2048, intermediate=1408),  # DeepSeek-V2-Lite
    Shape("qwen3-30b", num_experts=128, top_k=8, hidden=2048, intermediate=768),  # Qwen3-30B-A3B
)}
# Shapes the bench computes with but does not build in full: a DeepSeek-V3 layer's bf16 experts are 22.5 GB.
ARITHMETIC_SHAPES = {**SHAPES, "deepseek-v3": Shape("deepseek-v3", num_experts=256, top_k=8, hidden=7168,
                                                    intermediate=2048)}
# Of those, the ones bench_moe runs with a few distinct experts (the count given) that fill every slot in
# turn: slot e holds built expert e % count. A method that stores its experts quantized then holds and
# reads the whole layer's slots (DeepSeek-V3 in INT4: 7.7 GB), while the bf16 source is `count` experts.
# Inference methods only, without the torch baselines (those would need the whole bf16 layer).
REPLICATED_SHAPES = {"deepseek-v3": 8}
