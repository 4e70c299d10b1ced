"""Shared pieces of the inference tests (tests/test_inference_*.py): one place that builds an
inference wrapper (BF16 by default) with random experts and a non-identity physical-to-logical map,
its batches, and the fp32 reference (kt_moe.reference.moe_forward) of the same bf16 weights and
inputs, or of their quantized-and-dequantized version.

Conventions: expert ids refer to physical slots; slot p of the wrapper holds logical expert map[p],
so the reference is given gate[map], up[map], down[map]. Experts the wrapper treats as living on the
GPU are turned into -1 before the reference sees the ids.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import torch

import kt_moe
from kt_moe.reference import moe_forward, random_experts, random_routing, relative_l2

METHOD = "BF16"
TOL = 5e-3  # relative L2 bound of BF16 inference against the fp32 reference (bf16 rounding of z and out)
START_ISA = kt_moe.cpu_info()["active"]  # the best level, unless KT_MOE_ISA forced another one


@dataclasses.dataclass(frozen=True)
class Shape:
    """Layer dimensions; the defaults are not multiples of the usual block sizes, nor is I / 2."""

    num_experts: int = 10
    hidden: int = 200
    intermediate: int = 120


MAIN = Shape()
SMALL = Shape(num_experts=8, hidden=56, intermediate=36)  # for slow levels (amx_emulated)
TINY = Shape(num_experts=6, hidden=40, intermediate=24)  # error and state tests


def make_wrapper(shape: Shape = TINY, *, top_k: int = 2, layer_idx: int = 0, num_gpu_experts: int = 0,
                 threads: int = 2, tp: int = 1, weight_path: str = "", chunk: int = 128, cpu_save: bool = False,
                 max_deferred: Optional[int] = None, method: str = METHOD, **options):
    """An inference wrapper (BF16 unless `method` says otherwise) from the real factory, no weights
    loaded yet; `options`: the method's own (group_size, zero_point, gguf_type)."""
    return kt_moe.KTMoEWrapper(
        layer_idx=layer_idx, num_experts=shape.num_experts, num_experts_per_tok=top_k, hidden_size=shape.hidden,
        moe_intermediate_size=shape.intermediate, num_gpu_experts=num_gpu_experts, cpuinfer_threads=threads,
        threadpool_count=tp, weight_path=weight_path, chunked_prefill_size=chunk, cpu_save=cpu_save,
        max_deferred_experts_per_token=max_deferred, method=method, mode="inference", **options)


class Batch(NamedTuple):
    x: torch.Tensor  # [q, H] bf16, ~ N(0, 1)
    ids: torch.Tensor  # [q, k] int64 physical slots
    weights: torch.Tensor  # [q, k] fp32


@dataclasses.dataclass
class Layer:
    """bf16 experts (logical) and the physical-to-logical map."""

    shape: Shape
    gate: torch.Tensor  # [E_logical, I, H]
    up: torch.Tensor  # [E_logical, I, H]
    down: torch.Tensor  # [E_logical, H, I]
    physical_map: torch.Tensor  # [E] int64

    def load(self, wrapper) -> None:
        wrapper.load_weights_from_tensors(self.gate, self.up, self.down, self.physical_map)

    def batch(self, q: int, top_k: int, seed: int = 0) -> Batch:
        ids, weights = random_routing(q, self.shape.num_experts, top_k, seed=seed + 1000)
        x = torch.randn(q, self.shape.hidden, generator=torch.Generator().manual_seed(seed + 2000))
        return Batch(x.to(torch.bfloat16), ids, weights)

    def reference(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                  gpu_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """fp32 output of the physical slots' experts; slots of experts in gpu_mask contribute nothing."""
        ids = ids.to(torch.int64)
        if gpu_mask is not None:
            ids = ids.masked_fill((ids >= 0) & gpu_mask[ids.clamp(min=0)], -1)
        m = self.physical_map
        return moe_forward(x, ids, weights, self.gate[m], self.up[m], self.down[m])

    def dequantized(self, scheme) -> "Layer":
        """The same layer with every weight quantized and dequantized by a kt_moe.quant scheme (fp32)."""
        gate, up, down = (scheme.dequantize(*scheme.quantize(w))[..., :w.shape[-1]]  # without K's padding
                          for w in (self.gate, self.up, self.down))
        return dataclasses.replace(self, gate=gate, up=up, down=down)


def make_layer(shape: Shape, *, seed: int = 0, physical_map: Optional[torch.Tensor] = None,
               num_logical: Optional[int] = None) -> Layer:
    """Random bf16 experts ~ N(0, 1/fan_in); the default map is a fixed non-identity permutation."""
    num_logical = shape.num_experts if num_logical is None else num_logical
    gate, up, down = random_experts(num_logical, shape.hidden, shape.intermediate, seed=seed)
    if physical_map is None:
        physical_map = torch.randperm(num_logical, generator=torch.Generator().manual_seed(seed + 7))[:shape.num_experts]
    return Layer(shape, gate, up, down, physical_map.to(torch.int64))


def build(shape: Shape = TINY, *, seed: int = 0, physical_map=None, num_logical=None, **wrapper_kwargs):
    """(wrapper, layer): a wrapper with its weights loaded."""
    layer = make_layer(shape, seed=seed, physical_map=physical_map, num_logical=num_logical)
    wrapper = make_wrapper(shape, **wrapper_kwargs)
    layer.load(wrapper)
    return wrapper, layer


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    assert actual.shape == expected.shape
    err = relative_l2(actual, expected)
    assert err <= tol, f"relative L2 {err:.3g} above {tol}"
