"""Shared pieces of the SFT tests (tests/test_sft_*.py): one place that builds an SFT wrapper
(AMXBF16_SFT unless told otherwise) together with the matching fp32 reference (kt_moe.reference),
runs a forward/backward step and compares the two by relative L2 error (docs/design.md section 8). For
the quantized methods, Layer.dequantized(scheme) gives the reference of the dequantized weights.

Conventions: expert ids refer to physical slots; slot p of the wrapper holds logical expert map[p],
so the reference is given the permuted weights gate[map], up[map], down[map]. The LoRA tensors are
per physical slot and are given to both sides unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch

import kt_moe
from kt_moe.quant import QuantScheme
from kt_moe.reference import (LoraWeights, lora_moe_backward, lora_moe_forward, random_experts, random_lora,
                              random_routing, relative_l2)

METHOD = "AMXBF16_SFT"
TOL = 1e-2  # relative L2 bound of AMXBF16_SFT against the fp32 reference (bf16 rounding)
MIN_NORM = 1e-2  # every tensor compared by relative error must have at least this norm
LORA_NAMES = LoraWeights._fields  # gate_lora_a, gate_lora_b, up_lora_a, up_lora_b, down_lora_a, down_lora_b
GRAD_NAMES = LORA_NAMES + ("routing_weights",)
START_ISA = kt_moe.cpu_info()["active"]  # the best level, unless KT_MOE_ISA forced another one


@dataclasses.dataclass(frozen=True)
class Shape:
    """Layer dimensions. The defaults are not multiples of the usual block sizes (16, 32, 64) and
    I / 2 is not either, so that tails are hit with threadpool_count 1 and 2."""

    num_experts: int = 10
    hidden: int = 200
    intermediate: int = 120
    rank: int = 8
    alpha: float = 20.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def lora_shapes(self) -> Dict[str, tuple]:
        E, H, I, r = self.num_experts, self.hidden, self.intermediate, self.rank
        return dict(gate_lora_a=(E, r, H), gate_lora_b=(E, I, r), up_lora_a=(E, r, H), up_lora_b=(E, I, r),
                    down_lora_a=(E, r, I), down_lora_b=(E, H, r))


MAIN = Shape()
SMALL = Shape(num_experts=8, hidden=56, intermediate=36, rank=6, alpha=15.0)  # for slow levels (amx_emulated)
TINY = Shape(num_experts=6, hidden=40, intermediate=24, rank=4, alpha=8.0)  # error and state tests


def make_wrapper(shape: Shape = TINY, *, top_k: int = 2, layer_idx: int = 0, num_gpu_experts: int = 0,
                 threads: int = 2, tp: int = 1, weight_path: str = "", chunk: int = 128, depth: int = 1,
                 method: str = METHOD, **options):
    """An SFT wrapper from the real factory (no weights loaded yet); `options` are further
    KTMoEWrapper arguments (group_size, zero_point)."""
    return kt_moe.KTMoEWrapper(
        layer_idx=layer_idx, num_experts=shape.num_experts, num_experts_per_tok=top_k,
        hidden_size=shape.hidden, moe_intermediate_size=shape.intermediate, num_gpu_experts=num_gpu_experts,
        cpuinfer_threads=threads, threadpool_count=tp, weight_path=weight_path, chunked_prefill_size=chunk,
        method=method, mode="sft", lora_rank=shape.rank, lora_alpha=shape.alpha, max_cache_depth=depth, **options)


class Batch(NamedTuple):
    x: torch.Tensor  # [q, H] bf16
    expert_ids: torch.Tensor  # [q, k] int64, physical slots
    weights: torch.Tensor  # [q, k] fp32
    grad_output: torch.Tensor  # [q, H] bf16

    @property
    def q(self) -> int:
        return self.x.shape[0]


def make_batch(shape: Shape, q: int, top_k: int, seed: int = 0, expert_ids: Optional[torch.Tensor] = None) -> Batch:
    """x and grad_output ~ N(0, 1) in bf16, router-like routing (or the given expert_ids)."""
    ids, weights = random_routing(q, shape.num_experts, top_k, seed=seed + 1000)
    if expert_ids is not None:
        ids = expert_ids.to(torch.int64)
    gen = torch.Generator().manual_seed(seed + 2000)
    x = torch.randn(q, shape.hidden, generator=gen).to(torch.bfloat16)
    grad_output = torch.randn(q, shape.hidden, generator=gen).to(torch.bfloat16)
    return Batch(x, ids, weights, grad_output)


def cat_batches(batches: Sequence[Batch]) -> Batch:
    return Batch(*(torch.cat(parts) for parts in zip(*batches)))


class Result(NamedTuple):
    out: torch.Tensor  # [q, H]
    grad_input: torch.Tensor  # [q, H]
    grads: Dict[str, torch.Tensor]  # GRAD_NAMES -> tensor


@dataclasses.dataclass
class Layer:
    """Base weights (logical experts), the physical-to-logical map and the LoRA tensors."""

    shape: Shape
    gate: torch.Tensor  # [E_logical, I, H] bf16
    up: torch.Tensor  # [E_logical, I, H]
    down: torch.Tensor  # [E_logical, H, I]
    physical_map: torch.Tensor  # [E] int64
    lora: LoraWeights

    def physical(self):
        """gate, up, down as the wrapper's physical slots hold them."""
        return self.gate[self.physical_map], self.up[self.physical_map], self.down[self.physical_map]

    def reference(self, batch: Batch, num_gpu_experts: int = 0, lora: Optional[LoraWeights] = None) -> Result:
        """fp32 autograd of the same bf16 weights and inputs."""
        out, grad_input, grads = lora_moe_backward(
            batch.x, batch.expert_ids.to(torch.int64), batch.weights, *self.physical(),
            self.lora if lora is None else lora, self.shape.scale, batch.grad_output, num_gpu_experts)
        return Result(out, grad_input, grads)

    def batch(self, q: int, top_k: int, seed: int = 0, expert_ids: Optional[torch.Tensor] = None,
              num_gpu_experts: int = 0) -> Batch:
        """make_batch with a loss-like grad_output: noise plus the reference output. Then each
        routing-weight gradient <dy, y_e> has a part w_e ||y_e||^2 > 0 and cannot be ~0 by chance
        (with noise alone a single slot's <dy, y_e> can nearly cancel and its relative error explode)."""
        batch = make_batch(self.shape, q, top_k, seed, expert_ids)
        with torch.no_grad():
            out = lora_moe_forward(batch.x, batch.expert_ids, batch.weights, *self.physical(), self.lora,
                                   self.shape.scale, num_gpu_experts)
        return batch._replace(grad_output=(batch.grad_output.float() + out).to(torch.bfloat16))

    def load(self, wrapper) -> None:
        wrapper.load_weights_from_tensors(self.gate, self.up, self.down, self.physical_map)
        wrapper.init_lora_weights(*self.lora)

    def dequantized(self, scheme: QuantScheme) -> "Layer":
        """The same layer with every base weight quantized and dequantized by a kt_moe.quant scheme
        (fp32, cut back to the original width where the scheme pads K)."""
        def round_trip(w: torch.Tensor) -> torch.Tensor:
            return scheme.dequantize(*scheme.quantize(w))[..., :w.shape[-1]]

        return dataclasses.replace(self, gate=round_trip(self.gate), up=round_trip(self.up), down=round_trip(self.down))


def make_layer(shape: Shape, *, seed: int = 0, physical_map: Optional[torch.Tensor] = None,
               num_logical: Optional[int] = None, zero_b: bool = False, lora_dtype: torch.dtype = torch.bfloat16,
               requires_grad: bool = False) -> Layer:
    """Random bf16 experts (num_logical of them, default E) and LoRA tensors (nonzero B unless zero_b).
    The default map is a fixed non-identity permutation, so that every test checks it is honoured."""
    E = shape.num_experts
    num_logical = E if num_logical is None else num_logical
    gate, up, down = random_experts(num_logical, shape.hidden, shape.intermediate, seed=seed)
    if physical_map is None:
        physical_map = torch.randperm(num_logical, generator=torch.Generator().manual_seed(seed + 7))[:E]
    lora = random_lora(E, shape.hidden, shape.intermediate, shape.rank, dtype=lora_dtype, seed=seed + 1,
                       zero_b=zero_b)
    if requires_grad:
        lora = LoraWeights(*(t.requires_grad_() for t in lora))
    return Layer(shape, gate, up, down, physical_map.to(torch.int64), lora)


def build(shape: Shape = TINY, *, top_k: int = 2, seed: int = 0, physical_map=None, num_logical=None,
          zero_b: bool = False, lora_dtype: torch.dtype = torch.bfloat16, requires_grad: bool = False,
          **wrapper_kwargs):
    """(wrapper, layer): a wrapper with its base weights loaded and LoRA initialised."""
    layer = make_layer(shape, seed=seed, physical_map=physical_map, num_logical=num_logical, zero_b=zero_b,
                       lora_dtype=lora_dtype, requires_grad=requires_grad)
    wrapper = make_wrapper(shape, top_k=top_k, **wrapper_kwargs)
    layer.load(wrapper)
    return wrapper, layer


def step(wrapper, batch: Batch) -> Result:
    """forward_sft(save_for_backward=True) then backward."""
    out = wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=True)
    grad_input, grads = wrapper.backward(batch.grad_output)
    return Result(out, grad_input, grads)


def check_layout(result: Result, batch: Batch, lora: LoraWeights) -> None:
    """The documented shapes and dtypes of forward_sft's and backward's results."""
    q, H = batch.x.shape
    assert result.out.shape == (q, H) and result.out.dtype == torch.bfloat16
    assert result.grad_input.shape == (q, H) and result.grad_input.dtype == torch.bfloat16
    assert set(result.grads) == set(GRAD_NAMES)
    for name, tensor in lora._asdict().items():
        assert result.grads[name].shape == tensor.shape, name
        assert result.grads[name].dtype == tensor.dtype, name
    assert result.grads["routing_weights"].shape == batch.expert_ids.shape
    assert result.grads["routing_weights"].dtype == torch.float32


def errors(actual: Result, expected: Result, names: Sequence[str] = ("out", "grad_input") + GRAD_NAMES
           ) -> Dict[str, float]:
    """Relative L2 error per tensor; each expected tensor must be non-trivial (norm >= MIN_NORM)."""
    def pick(result: Result, name: str) -> torch.Tensor:
        return getattr(result, name) if name in ("out", "grad_input") else result.grads[name]

    rel = {}
    for name in names:
        ref = pick(expected, name)
        norm = ref.double().norm().item()
        assert norm >= MIN_NORM, f"{name}: reference norm {norm:.3g} too small for a relative error"
        rel[name] = relative_l2(pick(actual, name), ref)
    return rel


def assert_close(actual: Result, expected: Result, tol: float = TOL, names=None) -> None:
    rel = errors(actual, expected) if names is None else errors(actual, expected, names)
    bad = {name: f"{err:.3g}" for name, err in rel.items() if not err <= tol}
    assert not bad, f"relative L2 above {tol}: {bad}"


def assert_zero_rows(t: torch.Tensor, rows: List[int], what: str) -> None:
    if rows:
        assert torch.count_nonzero(t[rows]) == 0, f"{what}: rows {rows} must be exactly zero"
