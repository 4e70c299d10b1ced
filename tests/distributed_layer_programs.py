"""What each rank runs in tests/test_distributed_layer.py, and the layer and batch every rank and the
single-process side build alike (same seeds)."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch

import kt_moe
from kt_moe.distributed import ExpertParallelMoE
from kt_moe.reference import random_experts, random_lora, random_routing

E, H, I, K, RANK, ALPHA = 8, 64, 48, 3, 4, 8.0


@dataclasses.dataclass(frozen=True)
class Case:
    method: str
    tokens: tuple            # tokens of each rank's batch (its part of the single-process batch)
    placement: Optional[tuple] = None
    collective: str = "auto"
    chunk: int = 64

    @property
    def sft(self) -> bool:
        return self.method.endswith("_SFT")

    def arguments(self, num_experts: int = E) -> dict:
        options = dict(lora_rank=RANK, lora_alpha=ALPHA, max_cache_depth=2) if self.sft else {}
        return dict(layer_idx=0, num_experts=num_experts, num_experts_per_tok=K, hidden_size=H,
                    moe_intermediate_size=I, num_gpu_experts=0, cpuinfer_threads=1, threadpool_count=1,
                    weight_path="", chunked_prefill_size=self.chunk, method=self.method,
                    mode="sft" if self.sft else "inference", **options)


def layer_data(case: Case) -> dict:
    """Weights, LoRA (fp32), the whole batch (x, ids with some -1, weights, grad_output)."""
    q = sum(case.tokens)
    gate, up, down = random_experts(E, H, I, seed=3)
    lora = [t.float() for t in random_lora(E, H, I, RANK, seed=4)]
    ids, weights = random_routing(q, E, K, seed=5)
    if q > 2:
        ids[1, 0] = -1  # an empty slot
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(q, H, generator=gen).to(torch.bfloat16)
    grad = torch.randn(q, H, generator=gen).to(torch.bfloat16)
    return dict(gate=gate, up=up, down=down, lora=lora, x=x, ids=ids, weights=weights, grad=grad)


def rank_slice(case: Case, rank: int) -> slice:
    start = sum(case.tokens[:rank])
    return slice(start, start + case.tokens[rank])


def single_process(case: Case) -> Dict[str, torch.Tensor]:
    """One wrapper holding every expert, the whole batch: what the ranks together must give."""
    data = layer_data(case)
    wrapper = kt_moe.KTMoEWrapper(**dict(case.arguments(), cpuinfer_threads=2,
                                         chunked_prefill_size=max(sum(case.tokens), 1)))
    wrapper.load_weights_from_tensors(data["gate"], data["up"], data["down"], torch.arange(E))
    if not case.sft:
        return dict(out=wrapper.forward(data["x"], data["ids"], data["weights"]))
    wrapper.init_lora_weights(*data["lora"])
    out = wrapper.forward_sft(data["x"], data["ids"], data["weights"])
    grad_input, grads = wrapper.backward(data["grad"])
    return dict(out=out, grad_input=grad_input, **grads)


def expert_parallel(rank: int, world: int, case: Case) -> Dict[str, object]:
    """This rank's part of the batch through an ExpertParallelMoE; its outputs, its experts' LoRA
    gradients and its resident bytes."""
    data = layer_data(case)
    layer = ExpertParallelMoE(placement=case.placement, collective=case.collective, **case.arguments())
    layer.load_weights_from_tensors(data["gate"], data["up"], data["down"])
    part = rank_slice(case, rank)
    x, ids, weights = data["x"][part], data["ids"][part], data["weights"][part]
    result = dict(experts=layer.local_experts, resident=layer.resident_bytes_per_expert() * len(layer.local_experts))
    if not case.sft:
        result["out"] = layer.forward(x, ids, weights)
        return result
    mine = torch.tensor(layer.local_experts)
    layer.init_lora_weights(*[t[mine].contiguous() for t in data["lora"]])
    result["out"] = layer.forward_sft(x, ids, weights)
    result["grad_input"], grads = layer.backward(data["grad"][part])
    result.update(grads)
    return result


def micro_batches(rank: int, world: int, case: Case) -> List[torch.Tensor]:
    """Two saved forwards, backward in reverse order (the forward cache across ranks): the summed
    LoRA gradients of this rank's experts."""
    data = layer_data(case)
    layer = ExpertParallelMoE(placement=case.placement, **case.arguments())
    layer.load_weights_from_tensors(data["gate"], data["up"], data["down"])
    mine = torch.tensor(layer.local_experts)
    lora = [t[mine].contiguous().requires_grad_(True) for t in data["lora"]]
    layer.init_lora_weights(*lora)
    part = rank_slice(case, rank)
    half = (part.stop - part.start) // 2
    first, second = slice(part.start, part.start + half), slice(part.start + half, part.stop)
    for piece in (first, second):
        layer.forward_sft(data["x"][piece], data["ids"][piece], data["weights"][piece])
    for piece in (second, first):
        layer.backward(data["grad"][piece])
    return [t.grad for t in lora]


def lost_peer(rank: int, world: int, case: Case, how: str) -> Dict[str, object]:
    """Rank 1 leaves after the first call ("exit": its process ends; "stall": it stops calling for 6 s,
    then ends); rank 0 makes a second call and reports how long it took to raise, and the error."""
    import os
    import time
    data = layer_data(case)
    layer = ExpertParallelMoE(**case.arguments())
    layer.load_weights_from_tensors(data["gate"], data["up"], data["down"])
    part = rank_slice(case, rank)
    layer.forward(data["x"][part], data["ids"][part], data["weights"][part])
    if rank == 1:
        if how == "stall":
            time.sleep(6)
        os._exit(0)
    start = time.monotonic()
    try:
        layer.forward(data["x"][part], data["ids"][part], data["weights"][part])
    except RuntimeError as exc:
        return dict(seconds=time.monotonic() - start, error=str(exc))
    return dict(seconds=time.monotonic() - start, error="")
