"""What each rank runs in tests/test_distributed_model.py: a tiny Qwen3-MoE (transformers_models)
with kt-moe experts, expert parallel over the world group or data parallel under
DistributedDataParallel, and the same program on one process (world = 1, no process group) for the
results the ranks must reproduce. Every rank builds the same model and batch (same seeds) and runs
its rows of the batch."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kt_moe.integrations.model_loading import load_offloaded
from kt_moe.integrations.peft_adapters import load_expert_adapter, save_expert_adapter
from kt_moe.integrations.transformers import expert_lora_parameters, offload_experts
from transformers_models import tiny_model, tokens

RANK, ALPHA, BATCH, LENGTH = 4, 8.0, 4, 10


@dataclasses.dataclass(frozen=True)
class Plan:
    mode: str = "expert"          # "expert" (experts split over the ranks) or "data" (DDP, all experts everywhere)
    placement: Optional[tuple] = None
    steps: int = 0                # > 0: AdamW steps, the global loss of each returned
    adapter_dir: str = ""         # save the experts' adapter there, then load it back
    checkpoint: str = ""          # build the model with load_offloaded from this checkpoint folder


def base_model() -> torch.nn.Module:
    """fp32, so that the torch layers add no rounding of their own: the ranks and one process then
    differ only by the order of kt-moe's fp32 additions (the ranks' partial outputs are summed in
    fp32 and rounded once, as one process's engine does)."""
    return tiny_model("qwen3_moe", dtype=torch.float32)


def _model(world: int, plan: Plan, process_group):
    expert_parallel = plan.mode == "expert" and process_group is not None
    options = dict(method="AMXBF16_SFT", lora_rank=RANK, lora_alpha=ALPHA, cpuinfer_threads=1,
                   **(dict(process_group=process_group, placement=plan.placement) if expert_parallel else {}))
    if plan.checkpoint:
        model = load_offloaded(plan.checkpoint, dtype=torch.float32, **options)
    else:
        model = offload_experts(base_model(), **options)
    for param in model.parameters():  # LoRA training: only the experts' LoRA learns
        param.requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the same whole-layer values everywhere (B non-zero), each rank takes its rows
        for name, param in expert_lora_parameters(model):
            module = model.get_submodule(name.rsplit(".", 1)[0])
            whole = torch.randn((module.num_experts,) + tuple(param.shape[1:]), generator=gen) * 0.05
            rows = getattr(module.kt_moe.wrapper, "local_experts", list(range(module.num_experts)))
            param.copy_(whole[rows])
            param.requires_grad_(True)
    return model


def _loss(logits: torch.Tensor, ids: torch.Tensor, total: int) -> torch.Tensor:
    """Next-token cross entropy summed over these rows, divided by `total` tokens."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum") / total


def _rows(rank: int, world: int) -> slice:
    per = BATCH // world
    return slice(rank * per, (rank + 1) * per)


def run(rank: int, world: int, plan: Plan) -> Dict[str, object]:
    group = dist.group.WORLD if world > 1 else None
    model = _model(world, plan, group)
    batch = tokens(BATCH, LENGTH, seed=3)
    ids = batch[_rows(rank, world)]
    total = batch[:, 1:].numel()  # the loss of every rank is over the whole batch's tokens ...
    if plan.mode == "data" and group is not None:
        with torch.no_grad():  # another start on rank 1: DDP's broadcast must reach the engine
            for _, param in expert_lora_parameters(model):
                param.add_(rank * 0.01)
        model = torch.nn.parallel.DistributedDataParallel(model)
        total //= world  # ... but DDP averages the ranks' gradients: then over its rows
    if plan.steps:
        return dict(losses=_train(model, ids, total, plan.steps, group, total / batch[:, 1:].numel()))
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    embeds = inner.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits
    _loss(logits, ids, total).backward()
    result = dict(logits=logits.detach(), grad_embeds=embeds.grad,
                  grads={name: param.grad.clone() for name, param in expert_lora_parameters(inner)},
                  experts={name: getattr(m.kt_moe.wrapper, "local_experts", None)
                           for name, m in inner.named_modules() if hasattr(m, "kt_moe")})
    if plan.adapter_dir:
        save_expert_adapter(inner, plan.adapter_dir)
        params = dict(expert_lora_parameters(inner))
        before = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for p in params.values():
                p.zero_()
        load_expert_adapter(inner, plan.adapter_dir)
        result["reloaded"] = all(torch.equal(before[n], p) for n, p in params.items())
    return result


def _train(model, ids: torch.Tensor, total: int, steps: int, group, share: float) -> List[float]:
    """AdamW on the experts' LoRA; each step's loss over the whole batch (the ranks' losses summed,
    times `share`, the part of the batch each rank's loss is divided by)."""
    params = [p for _, p in expert_lora_parameters(model)]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = _loss(model(ids).logits, ids, total)
        loss.backward()
        optimizer.step()
        value = loss.detach().clone()
        if group is not None:
            dist.all_reduce(value)
        losses.append(float(value) * share)
    return losses


def attention_and_experts(rank: int, world: int) -> Dict[str, object]:
    """docs/distributed.md's recipe for training more than the experts under expert parallelism: the
    first attention's q_proj trained too, under DDP with the experts' LoRA left out of its
    all-reduce, each rank's loss its own rows' mean, the experts' gradients divided by the world size."""
    group = dist.group.WORLD if world > 1 else None
    model = _model(world, Plan(), group)
    q_proj = model.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)
    experts = [name for name, _ in expert_lora_parameters(model)]
    trained = model
    if group is not None:
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, experts)
        trained = torch.nn.parallel.DistributedDataParallel(model)
    batch = tokens(BATCH, LENGTH, seed=3)
    ids = batch[_rows(rank, world)]
    _loss(trained(ids).logits, ids, ids[:, 1:].numel()).backward()
    grads = {name: param.grad / world for name, param in expert_lora_parameters(model)}
    return dict(q_proj=q_proj.grad.clone(), grads=grads,
                experts={name: getattr(m.kt_moe.wrapper, "local_experts", None)
                         for name, m in model.named_modules() if hasattr(m, "kt_moe")})
