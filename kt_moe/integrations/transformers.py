"""kt-moe as the routed experts of a Hugging Face transformers model (transformers >= 5).

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    offload_experts(model, method="AMXINT4")            # inference: generate() works unchanged
    offload_experts(model, method="AMXBF16_SFT", lora_rank=16, lora_alpha=32)   # LoRA training

offload_experts builds one KTMoEWrapper per MoE layer (kt_moe.integrations.architectures says
which), loads it from the module's own weights or, with weight_path=, from the checkpoint files,
deletes the module's gate_up_proj / down_proj parameters, attaches an OffloadedExperts as
`module.kt_moe`, registers "kt_moe" in transformers' ExpertsInterface and switches the model to
it (`model.set_experts_implementation("kt_moe")`), so the model's own routers, shared experts and
attention run in torch and each experts module calls kt-moe. load_offloaded
(kt_moe.integrations.model_loading) builds a model from a checkpoint without ever materializing its
experts as torch tensors."""

from __future__ import annotations

import os
from typing import Optional

import torch
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

from kt_moe.config import SFT_METHODS
from kt_moe.distributed import ExpertParallelMoE
from kt_moe.integrations.architectures import ExpertsSite, find_experts, text_config
from kt_moe.integrations.expert_lora import EngineLora, new_parameters
from kt_moe.integrations.model_loading import read_torch_experts
from kt_moe.integrations.offloaded_experts import OffloadedExperts
from kt_moe.wrapper import KTMoEWrapper

IMPLEMENTATION = "kt_moe"  # the name registered in transformers' ExpertsInterface


FALLBACK = "_kt_moe_fallback"  # module attribute: the implementation it ran before, while not offloaded


def kt_moe_experts_forward(module: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                           top_k_weights: torch.Tensor) -> torch.Tensor:
    """The "kt_moe" experts implementation: the module's OffloadedExperts; a module offload_experts
    did not get to (it failed on an earlier layer) runs the implementation it had before."""
    offloaded = getattr(module, "kt_moe", None)
    if offloaded is not None:
        return offloaded(module, hidden_states, top_k_index, top_k_weights)
    fallback = getattr(module, FALLBACK, None)
    if fallback is None:
        raise RuntimeError(f"{type(module).__name__}: experts_implementation is 'kt_moe' but this module's experts "
                           "were not offloaded; call kt_moe.integrations.transformers.offload_experts(model)")
    eager = type(module).forward.__wrapped__  # the class's own forward, under use_experts_implementation
    return ALL_EXPERTS_FUNCTIONS.get_interface(fallback, eager)(module, hidden_states, top_k_index, top_k_weights)


ExpertsInterface.register(IMPLEMENTATION, kt_moe_experts_forward)


def _available_cpus() -> int:
    return len(os.sched_getaffinity(0))


def _layer_wrapper(site: ExpertsSite, config, method: str, num_gpu_experts: int, cpuinfer_threads: int,
                   threadpool_count: int, weight_path: Optional[str], chunked_prefill_size: int, process_group,
                   placement, **kwargs):
    """A KTMoEWrapper for the layer, or an ExpertParallelMoE when a process group is given."""
    arguments = dict(layer_idx=site.layer_idx, num_experts=site.num_experts,
                     num_experts_per_tok=config.num_experts_per_tok, hidden_size=site.hidden_size,
                     moe_intermediate_size=site.intermediate_size, num_gpu_experts=num_gpu_experts,
                     cpuinfer_threads=cpuinfer_threads, threadpool_count=threadpool_count,
                     weight_path=weight_path or "", chunked_prefill_size=chunked_prefill_size, method=method,
                     mode="sft" if method in SFT_METHODS else "inference", **kwargs)
    if process_group is None:
        return KTMoEWrapper(**arguments)
    if isinstance(placement, dict):
        placement = placement.get(site.layer_idx)
    return ExpertParallelMoE(process_group=process_group, placement=placement, **arguments)


def _load(wrapper, module: torch.nn.Module, weight_path: Optional[str], num_experts: int) -> None:
    distributed = isinstance(wrapper, ExpertParallelMoE)  # it picks its own experts
    slots = () if distributed else (torch.arange(num_experts, dtype=torch.int64),)
    if weight_path:
        wrapper.load_weights(*slots)
        return
    gate_up, down = module.gate_up_proj.detach(), module.down_proj.detach()
    if gate_up.device.type == "meta":
        raise ValueError(f"model: the experts of layer {wrapper.config.layer_idx} are on the meta device (not "
                         "loaded); pass weight_path= to read them from the checkpoint")
    I = module.intermediate_dim
    gate_up, down = gate_up.cpu(), down.cpu()
    wrapper.load_weights_from_tensors(gate_up[:, :I], gate_up[:, I:], down, *slots)


def offload_experts(model: torch.nn.Module, method: str = "AMXINT4", num_gpu_experts: int = 0,
                    cpuinfer_threads: Optional[int] = None, threadpool_count: int = 1,
                    weight_path: Optional[str] = None, *, lora_rank: int = 16, lora_alpha: float = 32.0,
                    lora_dtype: torch.dtype = torch.float32, chunked_prefill_size: int = 4096,
                    max_cache_depth: int = 8, process_group=None, placement=None, **kwargs) -> torch.nn.Module:
    """Put every MoE layer's routed experts of `model` on kt-moe; returns `model`.

    method: any KTMoEWrapper method; an SFT method (AMXBF16_SFT, ...) adds LoRA parameters
    `lora_gate_up_A/B`, `lora_down_A/B` (PEFT's layout, expert_lora.py) of `lora_dtype` to each
    experts module, trained through loss.backward(). num_gpu_experts: experts 0..n-1 of each layer
    stay in torch on the model's device (inference methods only). cpuinfer_threads: default, every CPU
    this process may run on. weight_path: read the experts from these checkpoint files (Hugging Face
    safetensors, or kt-moe's pre-quantized files) instead of the modules. chunked_prefill_size:
    most tokens one call takes (inference chunks larger batches; training refuses them).
    max_cache_depth: training forwards that may wait for their backward (micro-batches in flight).
    process_group: expert parallelism (docs/distributed.md): each rank of this torch.distributed
    group keeps only its share of every layer's experts (an ExpertParallelMoE per layer; every rank
    runs the model in step with the others). placement: the logical expert ids of each rank of the
    group (a list of lists for every layer, or a dict layer_idx -> list of lists), default
    contiguous. Other keyword arguments go to KTMoEWrapper (group_size, zero_point, ...).

    Wrapping the offloaded model in peft.get_peft_model (a LoRA on the attention, say) freezes the
    experts' LoRA (PEFT leaves only its own adapter layers trainable): re-enable it afterwards,
    `for _, p in expert_lora_parameters(model): p.requires_grad_(True)`, and save it with
    kt_moe.integrations.peft_adapters.save_expert_adapter (PeftModel.save_pretrained leaves it out).
    """
    sites = find_experts(model)
    if any(hasattr(site.module, "kt_moe") for site in sites):
        raise ValueError("model: its experts are already offloaded to kt-moe")
    sft = method in SFT_METHODS
    if process_group is None and placement is not None:
        raise ValueError("placement: only used with process_group= (expert parallelism)")
    if sft and num_gpu_experts:
        raise ValueError(f"num_gpu_experts: must be 0 with the SFT method {method} (the LoRA of experts kept in "
                         f"torch is not trained here), got {num_gpu_experts}")
    if lora_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"lora_dtype: expected torch.float32 or torch.bfloat16, got {lora_dtype}")
    config = text_config(model)
    threads = _available_cpus() if cpuinfer_threads is None else cpuinfer_threads
    sft_kwargs = dict(lora_rank=lora_rank, lora_alpha=lora_alpha, max_cache_depth=max_cache_depth) if sft else {}
    # Every layer's wrapper first (parameter errors before anything changes), then layer by layer:
    # load, free the torch copies, attach. A failure part-way leaves a working model: the layers
    # done run on kt-moe, the others as before (FALLBACK).
    wrappers = [_layer_wrapper(site, config, method, num_gpu_experts, threads, threadpool_count, weight_path,
                               chunked_prefill_size, process_group, placement, **sft_kwargs, **kwargs)
                for site in sites]
    previous = config._experts_implementation
    for site in sites:
        setattr(site.module, FALLBACK, previous)
    model.set_experts_implementation(IMPLEMENTATION)
    for done, (site, wrapper) in enumerate(zip(sites, wrappers)):
        try:
            _offload_layer(site, wrapper, weight_path, num_gpu_experts, lora_rank, lora_dtype, sft)
        except (ValueError, RuntimeError) as exc:
            if not done:
                model.set_experts_implementation(previous)
            done_layers = ", ".join(str(s.layer_idx) for s in sites[:done])
            note = (f" (layers {done_layers} run on kt-moe, the others as before)" if done else " (nothing changed)")
            raise type(exc)(f"layer {site.layer_idx}: {exc}{note}") from exc
    return model


def _offload_layer(site: ExpertsSite, wrapper, weight_path: Optional[str], num_gpu_experts: int, lora_rank: int,
                   lora_dtype: torch.dtype, sft: bool) -> None:
    """Load one layer's wrapper, free the module's experts (keeping the first num_gpu_experts in
    torch), add its LoRA parameters (SFT methods) and attach the OffloadedExperts."""
    module = site.module
    _load(wrapper, module, weight_path, site.num_experts)
    gpu_gate_up = gpu_down = None
    if num_gpu_experts:
        gpu_gate_up = module.gate_up_proj.detach()[:num_gpu_experts].clone()
        gpu_down = module.down_proj.detach()[:num_gpu_experts].clone()
        if gpu_gate_up.is_meta and weight_path:  # a model built on meta (load_offloaded): read them
            gpu_gate_up, gpu_down = read_torch_experts(weight_path, site.layer_idx, num_gpu_experts,
                                                       site.hidden_size, site.intermediate_size, gpu_gate_up.dtype)
    del module.gate_up_proj, module.down_proj
    lora = None
    if sft:
        held = len(wrapper.local_experts) if isinstance(wrapper, ExpertParallelMoE) else site.num_experts
        params = new_parameters(held, site.hidden_size, site.intermediate_size, lora_rank, lora_dtype)
        for name, param in params.items():
            module.register_parameter(name, param)
        lora = EngineLora(wrapper, params, site.intermediate_size)
    module.kt_moe = OffloadedExperts(wrapper, lora, gpu_gate_up, gpu_down)


def expert_lora_parameters(model: torch.nn.Module):
    """The experts' LoRA parameters of an offloaded model (name, parameter), for an optimizer."""
    return [(name, param) for name, param in model.named_parameters() if ".experts.lora_" in name
            or name.startswith("experts.lora_")]
