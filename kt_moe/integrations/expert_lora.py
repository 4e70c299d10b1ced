"""The routed experts' LoRA of one MoE layer as torch parameters, in PEFT's layout.

PEFT (`LoraConfig(target_parameters=["gate_up_proj", "down_proj"])`) gives each expert e of a 3-D
experts parameter one rank-r adapter, delta W_e = (alpha / r) B_e A_e:

    gate_up_proj [E, 2I, H]: lora_gate_up_A [E, r, H], lora_gate_up_B [E, 2I, r]  (gate and up share A)
    down_proj    [E, H, I]:  lora_down_A    [E, r, I], lora_down_B    [E, H, r]

kt-moe's engine takes a separate adapter for gate and up (docs/sft.md, "LoRA tensors"); the same
function is gate_a = up_a = A, gate_b = B[:, :I], up_b = B[:, I:], and the gradient of A is the sum
of the engine's gate_a and up_a gradients. The parameters are created as PEFT initializes them (A
Kaiming-uniform over its [E r, in] matrix, B zero), so training starts from the base model."""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

PARAMETER_NAMES = ("lora_gate_up_A", "lora_gate_up_B", "lora_down_A", "lora_down_B")


def parameter_shapes(num_experts: int, hidden: int, intermediate: int, rank: int) -> Dict[str, Tuple[int, ...]]:
    E, H, I, r = num_experts, hidden, intermediate, rank
    return {"lora_gate_up_A": (E, r, H), "lora_gate_up_B": (E, 2 * I, r),
            "lora_down_A": (E, r, I), "lora_down_B": (E, H, r)}


def new_parameters(num_experts: int, hidden: int, intermediate: int, rank: int,
                   dtype: torch.dtype) -> Dict[str, torch.nn.Parameter]:
    """Fresh parameters, initialized as PEFT initializes LoRA (A: kaiming_uniform_(a=sqrt(5)) of the
    [E r, in] matrix PEFT holds, B: zeros)."""
    params = {}
    for name, shape in parameter_shapes(num_experts, hidden, intermediate, rank).items():
        tensor = torch.zeros(shape, dtype=dtype)
        if name.endswith("_A"):
            torch.nn.init.kaiming_uniform_(tensor.view(-1, shape[-1]), a=math.sqrt(5))
        params[name] = torch.nn.Parameter(tensor)
    return params


class EngineLora:
    """The engine's six LoRA tensors (fp32, so the gradients come back in fp32), copied from the
    parameters whenever one of them changed since the last copy (an optimizer step, a loaded
    adapter: anything that writes the parameter in place or replaces it)."""

    def __init__(self, wrapper, params: Dict[str, torch.nn.Parameter], intermediate: int):
        self.wrapper = wrapper
        self.params = params
        self.intermediate = intermediate
        A, B = params["lora_gate_up_A"], params["lora_gate_up_B"]
        gate_a = torch.empty(A.shape, dtype=torch.float32)
        b_shape = (B.shape[0], intermediate, B.shape[2])
        self.tensors = (gate_a, torch.empty(b_shape), torch.empty(A.shape), torch.empty(b_shape),
                        torch.empty(params["lora_down_A"].shape), torch.empty(params["lora_down_B"].shape))
        self._seen = None
        self._copy()
        wrapper.init_lora_weights(*self.tensors)

    def _state(self):
        return tuple((p.data_ptr(), p._version) for p in self.params.values())

    @torch.no_grad()
    def _copy(self) -> None:
        gate_a, gate_b, up_a, up_b, down_a, down_b = self.tensors
        A, B = self.params["lora_gate_up_A"], self.params["lora_gate_up_B"]
        I = self.intermediate
        gate_a.copy_(A)
        up_a.copy_(A)
        gate_b.copy_(B[:, :I])
        up_b.copy_(B[:, I:])
        down_a.copy_(self.params["lora_down_A"])
        down_b.copy_(self.params["lora_down_B"])
        self._seen = self._state()

    def refresh(self) -> None:
        """Copy the parameters into the engine when they changed since the last copy."""
        if self._state() != self._seen:
            self._copy()
            self.wrapper.update_lora_weights()

    @staticmethod
    def parameter_grads(grads: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """The engine's gradients (wrapper.backward's dict) as gradients of the four parameters."""
        return (grads["gate_lora_a"] + grads["up_lora_a"],
                torch.cat([grads["gate_lora_b"], grads["up_lora_b"]], dim=1),
                grads["down_lora_a"], grads["down_lora_b"])
