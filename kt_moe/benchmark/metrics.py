"""What the bench measures: timing statistics, the work of one step (FLOPs and expert-weight
bytes) and the accuracy of a step's outputs against the fp32 reference."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from kt_moe.reference import relative_l2
from kt_moe.benchmark.problem import Outputs
from kt_moe.benchmark.shapes import Shape


def time_steps(step: Callable[[], object], warmup: int, repeats: int) -> List[float]:
    """Seconds of each of `repeats` timed calls of step(), after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


@dataclass(frozen=True)
class Stats:
    """Median and spread of a list of times, in seconds."""

    median: float
    min: float
    max: float
    p25: float
    p75: float

    @classmethod
    def of(cls, times: List[float]) -> "Stats":
        p25, _, p75 = statistics.quantiles(times, n=4) if len(times) > 1 else times * 3
        return cls(statistics.median(times), min(times), max(times), p25, p75)


def step_flops(shape: Shape, q: int, mode: str) -> float:
    """FLOPs of the base-weight GEMMs of one step, over the n = q * k routed slots.

    inference: the forward's gate, up and down GEMMs, 2*n*H*I each: 2 * n * 3*H*I.
    sft: that forward plus the backward's dz = W_d^T d, W_g^T dg and W_u^T du (the frozen base
    gets no weight gradient): 4 * n * 3*H*I.
    The rank-r LoRA GEMMs and the elementwise work are not counted.
    """
    passes = 1 if mode == "inference" else 2
    return passes * 2.0 * q * shape.top_k * 3 * shape.hidden * shape.intermediate


def weight_bytes(shape: Shape, distinct_experts: int, bytes_per_element: Optional[float],
                 mode: str) -> Optional[float]:
    """Expert-weight bytes one step reads: distinct experts hit x 3*H*I elements x the method's
    bytes per stored element, once for inference, twice for sft (the backward reads the base
    weights again). None when the method's storage size is not known."""
    if bytes_per_element is None:
        return None
    passes = 1 if mode == "inference" else 2
    return passes * distinct_experts * 3 * shape.hidden * shape.intermediate * bytes_per_element


def accuracy(outputs: Outputs, reference: Outputs) -> Tuple[Dict[str, float], List[str]]:
    """Relative L2 error of each output the reference has ("out", "grad_input", each gradient),
    and the names of the reference's gradients the case did not return."""
    errors = {"out": relative_l2(outputs.out, reference.out)}
    missing = []
    if reference.grad_input is not None:
        errors["grad_input"] = relative_l2(outputs.grad_input, reference.grad_input)
        for name, expected in reference.grads.items():
            if name in outputs.grads:
                errors[name] = relative_l2(outputs.grads[name], expected)
            else:
                missing.append(name)
    return errors, missing


def torch_gemm_gflops(threads: int, m: int = 512, k: int = 2048, n: int = 1408) -> float:
    """torch's bf16 GEMM rate on this machine, [m x k] @ [k x n], median of 20 runs, GFLOP/s."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    b = torch.randn(k, n, generator=gen).to(torch.bfloat16)
    median = Stats.of(time_steps(lambda: a @ b, warmup=3, repeats=20)).median
    return 2.0 * m * k * n / median / 1e9
