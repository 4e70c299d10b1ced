"""The cases the bench can run, by name: the torch baselines and every kt-moe method (spec 1.2).

A case is built for one problem by setup(problem, threads, pools) and run once by step(). A kt-moe case
goes through kt_moe.KTMoEWrapper.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import List, Optional

import torch

from kt_moe.config import GGUF_QUANTIZE_TYPES, METHODS
from kt_moe.wrapper import KTMoEWrapper
from kt_moe.reference import LoraWeights, lora_moe
from kt_moe.benchmark.grouped_mm import GroupedExperts, grouped_mm_moe
from kt_moe.benchmark.problem import LORA_ALPHA, Outputs, Problem
from kt_moe.benchmark.shapes import Shape
from kt_moe.quant import scheme_for_method

# The kt-moe methods that keep their experts in bf16; the others store the parts of their
# kt_moe.quant scheme (its default options: FP8 blocks of 128, RAWINT4 groups of 32,
# AMXINT4_KGroup_SFT groups of 128 with zero points), LLAMAFILE its GGUF blocks.
BF16_METHODS = ("BF16", "AMXBF16_SFT")


def bytes_per_element(method: str, shape: Shape) -> float:
    """Bytes per expert-weight element of the method's stored experts at `shape`, scales and zero
    points included (the bytes a step really reads): bf16 2; a quantized method its scheme's parts of
    gate, up [I, H] and down [H, I] over their 3 H I elements (INT4 in groups of 16: 0.6875)."""
    if method in BF16_METHODS:
        return 2.0
    parts = scheme_for_method(method).part_specs
    total = 0
    for n, k, count in ((shape.intermediate, shape.hidden, 2), (shape.hidden, shape.intermediate, 1)):
        total += count * sum(math.prod(part_shape) * torch.empty((), dtype=dtype).element_size()
                             for part_shape, dtype in parts(n, k).values())
    return total / (3 * shape.hidden * shape.intermediate)


# The relative L2 error to expect against the fp32 reference of the bf16 weights: the bound the tests
# hold each case to (BF16: tests/inference_helpers.py TOL; AMXBF16_SFT: tests/sft_helpers.py TOL; the
# quantized methods: VS_ORIGINAL of tests/test_inference_quantized.py and tests/test_sft_quantized.py,
# AMXINT4_KGroup_SFT at its default groups of 128; LLAMAFILE: Q8_0_VS_ORIGINAL of tests/test_llamafile.py,
# the bench quantizing to Q8_0; the torch baselines: bf16 compute). 4-bit weights
# are coarse: ~0.1 is their normal error (RAWINT4's symmetric groups of 32 ~0.17); FP8's 3 mantissa
# bits give ~0.05. A method without an engine has no bound yet.
ERROR_BOUNDS = {
    "torch-bf16": 2e-2, "torch-bf16-autograd": 2e-2, "torch-grouped_mm": 2e-2, "torch-grouped_mm-sft": 2e-2, "BF16": 5e-3, "AMXINT8": 3e-2, "AMXINT4": 0.15,
    "FP8": 7e-2, "RAWINT4": 0.3, "AMXBF16_SFT": 1e-2, "AMXINT8_SFT": 3e-2, "AMXINT4_SFT": 0.15,
    "AMXINT4_KGroup_SFT": 0.2, "AMXFP8_SFT": 0.12, "LLAMAFILE": 2e-2, "MOE_INT8": 3e-2, "MOE_INT4": 0.15,
}
KT_METHOD_MODES = {method: mode for mode, methods in METHODS.items() for method in methods}
# A LLAMAFILE case with its GGUF types, "LLAMAFILE:Q4_K/Q4_K/Q8_0" (gate/up/down, or one type for all):
# its weights quantized to them (gguf_type). Its bound is the worst of its types' own error on the
# bench's random weights (4-bit ~0.08-0.1, Q6_K ~0.02, Q8_0 ~0.005, measured with kt_moe.quant and gguf).
GGUF_CASE_PREFIX = "LLAMAFILE:"
GGUF_TYPE_BOUNDS = {"F32": 5e-3, "F16": 5e-3, "BF16": 5e-3, "Q8_0": 2e-2, "Q6_K": 5e-2, "Q5_0": 0.1, "Q5_1": 0.1,
                    "Q4_0": 0.15, "Q4_1": 0.15, "Q4_K": 0.15}
# An AMXINT4 case with its coarser group choice, "AMXINT4:64" or "AMXINT4:128" (int4_kgroup with zero
# points; "AMXINT4:64-sym", "AMXINT4:128-sym": symmetric groups). Bounds: VS_ORIGINAL_GROUPED of
# tests/test_inference_quantized.py for "64" and "128-sym"; "128" and "64-sym", whose errors lie
# between those two (docs/quantization.md), take "128-sym"'s.
GROUP_CASE_PREFIX = "AMXINT4:"
GROUP_CASE_BOUNDS = {"64": 0.21, "128": 0.26, "64-sym": 0.26, "128-sym": 0.26}


def case_method(name: str) -> str:
    """The kt-moe method (or baseline) a case name runs."""
    return name.split(":", 1)[0]


def gguf_case_types(name: str) -> List[str]:
    """The gate, up and down GGUF types of a "LLAMAFILE:<types>" case."""
    types = name[len(GGUF_CASE_PREFIX):].upper().split("/")
    return types * 3 if len(types) == 1 else types


def group_case_options(name: str) -> dict:
    """The KTMoEWrapper options (group_size, zero_point) of an "AMXINT4:<G>[-sym]" case; KeyError for
    another suffix."""
    suffix = name[len(GROUP_CASE_PREFIX):]
    if suffix not in GROUP_CASE_BOUNDS:
        raise KeyError(name)
    group, _, sym = suffix.partition("-")
    return dict(group_size=int(group), zero_point=not sym)


def case_options(name: str) -> dict:
    """The KTMoEWrapper options a kt-moe case name carries: a LLAMAFILE case's gguf_type, an AMXINT4
    case's group_size and zero_point, none for a plain method."""
    if name.startswith(GGUF_CASE_PREFIX):
        return dict(gguf_type=",".join(gguf_case_types(name)))
    if name.startswith(GROUP_CASE_PREFIX):
        return group_case_options(name)
    return {}


def error_bound(name: str) -> Optional[float]:
    if name.startswith(GGUF_CASE_PREFIX):
        return max(GGUF_TYPE_BOUNDS.get(t, 0.3) for t in gguf_case_types(name))
    if name.startswith(GROUP_CASE_PREFIX):
        return GROUP_CASE_BOUNDS[name[len(GROUP_CASE_PREFIX):]]
    return ERROR_BOUNDS.get(name)
# Each mode's torch baselines, which run first: the plain torch loop (the ratio column "x torch" is
# against it) and transformers' grouped_mm experts ("x gmm").
BASELINES = {"inference": ("torch-bf16", "torch-grouped_mm"), "sft": ("torch-bf16-autograd", "torch-grouped_mm-sft")}
BASELINE_NAMES = tuple(name for names in BASELINES.values() for name in names)


class Case(ABC):
    """One way to run the layer. Subclasses set name, mode and bytes_per_element (of the stored
    expert weights, for the effective GB/s)."""

    name: str
    mode: str
    bytes_per_element: Optional[float]

    @abstractmethod
    def setup(self, problem: Problem, threads: int, pools: int = 1) -> None:
        """Build the case for `problem` (not timed): torch with `threads` threads, kt-moe with
        cpuinfer_threads=threads in threadpool_count=pools subpools."""

    @abstractmethod
    def step(self) -> Outputs:
        """Run the layer once (timed)."""


class TorchBF16(Case):
    """The plain torch bf16 loop a user writes: per expert with tokens, index them, F.linear gate
    and up, silu * up, F.linear down, scale by the routing weight, index_add_ (the reference's loop
    run in bf16)."""

    name, mode, bytes_per_element = BASELINES["inference"][0], "inference", 2.0

    def setup(self, problem: Problem, threads: int, pools: int = 1) -> None:
        self.p = problem

    def step(self) -> Outputs:
        p = self.p
        with torch.inference_mode():
            return Outputs(lora_moe(p.x, p.expert_ids, p.weights, *p.experts, dtype=torch.bfloat16))


class TorchBF16Autograd(Case):
    """One SFT step in torch bf16: the same loop with the LoRA terms, input, routing weights and
    the six LoRA tensors requiring grad, then .backward() of the problem's grad_output."""

    name, mode, bytes_per_element = BASELINES["sft"][0], "sft", 2.0

    def setup(self, problem: Problem, threads: int, pools: int = 1) -> None:
        self.p = problem
        self.x = problem.x.clone().requires_grad_()
        self.weights = problem.weights.clone().requires_grad_()
        self.lora = LoraWeights(*(t.clone().requires_grad_() for t in problem.lora))

    def forward(self) -> torch.Tensor:
        p = self.p
        return lora_moe(self.x, p.expert_ids, self.weights, *p.experts, self.lora, p.scale, dtype=torch.bfloat16)

    def step(self) -> Outputs:
        for t in (self.x, self.weights, *self.lora):
            t.grad = None
        out = self.forward()
        out.backward(self.p.grad_output)
        grads = {name: t.grad for name, t in self.lora._asdict().items()}
        grads["routing_weights"] = self.weights.grad
        return Outputs(out.detach(), self.x.grad, grads)


class TorchGroupedMM(Case):
    """transformers' grouped_mm experts implementation (grouped_mm.py): gate and up in one
    grouped_mm over the slots sorted by expert, then down."""

    name, mode, bytes_per_element = BASELINES["inference"][1], "inference", 2.0

    def setup(self, problem: Problem, threads: int, pools: int = 1) -> None:
        self.p = problem
        self.experts = GroupedExperts.of(*problem.experts)

    def step(self) -> Outputs:
        p = self.p
        with torch.inference_mode():
            return Outputs(grouped_mm_moe(p.x, p.expert_ids, p.weights, self.experts))


class TorchGroupedMMSFT(TorchBF16Autograd):
    """The SFT step with grouped_mm for the base and for the LoRA products (split LoRA: x A^T B^T,
    B A never materialized), differentiated by autograd: what a user of transformers' grouped_mm
    experts with a LoRA on them can do at best."""

    name = BASELINES["sft"][1]

    def setup(self, problem: Problem, threads: int, pools: int = 1) -> None:
        super().setup(problem, threads, pools)
        self.experts = GroupedExperts.of(*problem.experts)

    def forward(self) -> torch.Tensor:
        p = self.p
        return grouped_mm_moe(self.x, p.expert_ids, self.weights, self.experts, self.lora, p.scale)


def unloaded_wrapper(method: str, shape: Shape, threads: int, pools: int = 1, chunk: int = 1, rank: int = 16,
                     **options):
    """The kt-moe wrapper of `method` for `shape`, no weights loaded yet: cpuinfer_threads=threads in
    `pools` subpools, batches up to `chunk` tokens, LoRA rank `rank` for the SFT methods; `options`
    are further KTMoEWrapper arguments (e.g. max_deferred_experts_per_token)."""
    mode = KT_METHOD_MODES[method]
    sft = dict(lora_rank=rank, lora_alpha=LORA_ALPHA) if mode == "sft" else {}
    return KTMoEWrapper(layer_idx=0, num_experts=shape.num_experts, num_experts_per_tok=shape.top_k,
                        hidden_size=shape.hidden, moe_intermediate_size=shape.intermediate, num_gpu_experts=0,
                        cpuinfer_threads=threads, threadpool_count=pools, weight_path="", chunked_prefill_size=chunk,
                        method=method, mode=mode, **sft, **options)


def ktmoe_wrapper(method: str, problem: Problem, threads: int, pools: int = 1, **options):
    """unloaded_wrapper for the problem's shape and rank (batches up to its q tokens, the largest
    sent), its base weights loaded."""
    s = problem.shape
    wrapper = unloaded_wrapper(method, s, threads, pools, problem.q, problem.rank, **options)
    wrapper.load_weights_from_tensors(*problem.experts, problem.expert_map)
    return wrapper


class KTMoEInference(Case):
    mode = "inference"

    def __init__(self, name: str):
        self.name, self.options = name, case_options(name)

    def setup(self, problem: Problem, threads: int, pools: int = 1) -> None:
        self.p = problem
        method, s = case_method(self.name), problem.shape
        self.wrapper = ktmoe_wrapper(method, problem, threads, pools, **self.options)
        # a quantized method reads its experts as it keeps them: packed blocks (int4_kgroup's units
        # hold a scale and a zero point per 64 inputs whatever the group size), GGUF blocks, scales
        # and alignment included
        self.bytes_per_element = 2.0 if method in BF16_METHODS else \
            self.wrapper.resident_bytes_per_expert() / (3 * s.hidden * s.intermediate)

    def step(self) -> Outputs:
        p = self.p
        return Outputs(self.wrapper.forward(p.x, p.expert_ids, p.weights))


class KTMoESFT(Case):
    """forward_sft(save_for_backward=True) then backward(grad_output): one training step."""

    mode = "sft"

    def __init__(self, method: str):
        self.name = method

    def setup(self, problem: Problem, threads: int, pools: int = 1) -> None:
        self.p = problem
        self.bytes_per_element = bytes_per_element(self.name, problem.shape)
        self.wrapper = ktmoe_wrapper(self.name, problem, threads, pools)
        self.wrapper.init_lora_weights(*problem.lora)

    def step(self) -> Outputs:
        p = self.p
        out = self.wrapper.forward_sft(p.x, p.expert_ids, p.weights, save_for_backward=True)
        grad_input, grads = self.wrapper.backward(p.grad_output)
        return Outputs(out, grad_input, grads)


def mode_of(name: str) -> str:
    """The mode a case name runs in; KeyError for an unknown name (or GGUF types LLAMAFILE cannot
    quantize to)."""
    if name.startswith(GGUF_CASE_PREFIX):
        types = name[len(GGUF_CASE_PREFIX):].upper().split("/")
        if len(types) not in (1, 3) or any(t not in GGUF_QUANTIZE_TYPES for t in types):
            raise KeyError(name)
    if name.startswith(GROUP_CASE_PREFIX):
        group_case_options(name)
    baselines = {baseline: mode for mode, names in BASELINES.items() for baseline in names}
    return baselines[name] if name in baselines else KT_METHOD_MODES[case_method(name)]


def names(mode: str) -> List[str]:
    """Every case of `mode`: its baselines first, then the kt-moe methods in spec order."""
    return list(BASELINES[mode]) + list(METHODS[mode])


BASELINE_CASES = {case.name: case for case in (TorchBF16, TorchBF16Autograd, TorchGroupedMM, TorchGroupedMMSFT)}


def make_case(name: str) -> Case:
    if name in BASELINE_CASES:
        return BASELINE_CASES[name]()
    return KTMoEInference(name) if mode_of(name) == "inference" else KTMoESFT(name)
