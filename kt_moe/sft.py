"""SFT wrappers: BaseSFTMoEWrapper (spec 1.4) and AMXSFTMoEWrapper (LoRA on frozen experts, bf16
or quantized, running on the native TP_MOE_SFT engine). User guide: docs/sft.md.
"""

from __future__ import annotations

import threading
from typing import Dict, Optional, Tuple

import torch

from kt_moe import _native
from kt_moe.backend import MoEWrapperBase
from kt_moe.tensor_checks import FLOAT_DTYPES, INDEX_DTYPES, as_contiguous, check_tensor
from kt_moe.weights.expert_source import base_scheme, load_from_path, load_from_tensors


class BaseSFTMoEWrapper(MoEWrapperBase):
    """One MoE layer's CPU experts with LoRA adapters for fine-tuning (spec 1.4)."""

    mode = "sft"

    def load_weights(self, physical_to_logical_map: torch.Tensor, verify_checksum: bool = True,
                     num_logical_experts: Optional[int] = None) -> None:
        """Load this layer's base weights from weight_path."""
        raise NotImplementedError(f"{type(self).__name__}.load_weights")

    def load_weights_from_tensors(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                                  physical_to_logical_map: torch.Tensor) -> None:
        """Load base weights gate [E, I, H], up [E, I, H], down [E, H, I] already in memory."""
        raise NotImplementedError(f"{type(self).__name__}.load_weights_from_tensors")

    def init_lora_weights(self, gate_a: torch.Tensor, gate_b: torch.Tensor, up_a: torch.Tensor,
                          up_b: torch.Tensor, down_a: torch.Tensor, down_b: torch.Tensor) -> None:
        """Attach the six LoRA tensors (read in place, not copied)."""
        raise NotImplementedError(f"{type(self).__name__}.init_lora_weights")

    def forward_sft(self, hidden_states: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
                    save_for_backward: bool = True, *, output_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """LoRA MoE forward: [q, H] in output_dtype (bf16, or fp32: the engine's sums unrounded); with
        save_for_backward pushes one forward-cache entry."""
        raise NotImplementedError(f"{type(self).__name__}.forward_sft")

    def backward(self, grad_output: torch.Tensor, *, grad_input_dtype: torch.dtype = torch.bfloat16
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Pop the latest forward-cache entry: (grad_input [q, H] in grad_input_dtype (bf16 or fp32),
        LoRA and routing gradients)."""
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def update_lora_weights(self) -> None:
        """Make the engine see LoRA tensors the optimizer changed in place."""
        raise NotImplementedError(f"{type(self).__name__}.update_lora_weights")


LORA_NAMES = ("gate_lora_a", "gate_lora_b", "up_lora_a", "up_lora_b", "down_lora_a", "down_lora_b")
LORA_DTYPES = (torch.bfloat16, torch.float32)
OUTPUT_DTYPES = (torch.bfloat16, torch.float32)  # forward_sft's output and backward's grad_input


def checked_output_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """dtype, when it is one of OUTPUT_DTYPES; else ValueError naming the argument `name`."""
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"{name} must be torch.bfloat16 or torch.float32, got {dtype}")
    return dtype


class AMXSFTMoEWrapper(BaseSFTMoEWrapper):
    """AMXBF16_SFT (bf16 base), AMXINT8_SFT, AMXINT4_SFT and AMXINT4_KGroup_SFT (the base quantized
    with the method's kt_moe.quant scheme: while loading, or read from a `kt-moe convert` file).

    Every call runs on the worker pool and returns when done. LoRA tensors are bf16 (read in place:
    an optimizer's in-place update is seen after update_lora_weights()) or fp32 (the engine then
    reads a bf16 copy that update_lora_weights() refreshes). forward_sft takes at most
    chunked_prefill_size tokens per call. A saved forward holds
    `engine.cached_bytes_per_routed_slot` bytes per routed (token, slot) pair.
    """

    def __init__(self, config):
        super().__init__(config)
        self.engine = _native.TP_MOE_SFT(self.native_config, self.pool)
        self.scheme = base_scheme(config, self.format_option, self.base_format)  # kt_moe.quant scheme of the base; None for AMXBF16_SFT
        self._load_lock = threading.Lock()  # one load at a time (they share the engine's staged base)
        self._lora: Optional[Tuple[torch.Tensor, ...]] = None  # the caller's tensors
        self._lora_bf16: Optional[Tuple[torch.Tensor, ...]] = None  # what the engine reads

    def lora_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """The six LoRA tensors' shapes, by name (LORA_NAMES order)."""
        c = self.config
        E, H, I, r = c.num_experts, c.hidden_size, c.moe_intermediate_size, c.lora_rank
        return dict(gate_lora_a=(E, r, H), gate_lora_b=(E, I, r), up_lora_a=(E, r, H), up_lora_b=(E, I, r),
                    down_lora_a=(E, r, I), down_lora_b=(E, H, r))

    def load_weights(self, physical_to_logical_map: torch.Tensor, verify_checksum: bool = True,
                     num_logical_experts: Optional[int] = None) -> None:
        """Read layer layer_idx from weight_path: for the quantized methods its pre-quantized file when
        there is one (its checksum verified unless verify_checksum=False), else the Hugging Face
        checkpoint (quantized while loading). Slot p gets logical expert physical_to_logical_map[p];
        num_logical_experts: the stored layer's expert count when it has more experts than this
        wrapper's num_experts slots (default num_experts).
        All or nothing (docs/sft.md, "Loading the base"); RuntimeError while saved forwards wait for
        backward()."""
        with self._load_lock:
            load_from_path(self.engine, self.config, self.scheme, physical_to_logical_map, verify_checksum,
                           num_logical_experts)

    def load_weights_from_tensors(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                                  physical_to_logical_map: torch.Tensor) -> None:
        """gate [E', I, H], up [E', I, H], down [E', H, I] (CPU; bf16, fp16, fp32 or fp64, finite),
        quantized while loading for the quantized methods; slot p gets logical expert
        physical_to_logical_map[p]. All or nothing, like load_weights."""
        with self._load_lock:
            load_from_tensors(self.engine, self.config, self.scheme, gate, up, down, physical_to_logical_map)

    def resident_bytes_per_expert(self) -> int:
        """Memory the engine holds for one expert's base weights (all tensor-parallel slices; scales and
        zero points included; no transposed copy exists)."""
        return self.engine.resident_bytes_per_expert

    def init_lora_weights(self, gate_a: torch.Tensor, gate_b: torch.Tensor, up_a: torch.Tensor,
                          up_b: torch.Tensor, down_a: torch.Tensor, down_b: torch.Tensor) -> None:
        tensors = (gate_a, gate_b, up_a, up_b, down_a, down_b)
        for name, tensor in zip(LORA_NAMES, tensors):
            check_tensor(tensor, name, self.lora_shapes()[name], LORA_DTYPES)
            if not tensor.is_contiguous():
                raise ValueError(f"{name} must be contiguous (the engine reads it in place)")
        self._lora = tensors
        self._lora_bf16 = tuple(t.detach() if t.dtype == torch.bfloat16 else t.detach().to(torch.bfloat16)
                                for t in tensors)
        self.engine.update_lora_weights_task(*self._lora_bf16)

    @property
    def lora_tensors(self) -> Optional[Tuple[torch.Tensor, ...]]:
        """The six tensors init_lora_weights() attached (LORA_NAMES order), None before."""
        return self._lora

    def discard_saved_forward(self) -> None:
        """Drop the latest saved forward without its backward (RuntimeError when none is saved)."""
        self.engine.discard_saved_forward()

    def update_lora_weights(self) -> None:
        if self._lora is None:
            raise RuntimeError("LoRA weights not initialized: call init_lora_weights() first")
        with torch.no_grad():
            for tensor, copy in zip(self._lora, self._lora_bf16):
                if copy.data_ptr() != tensor.data_ptr():
                    copy.copy_(tensor)
        self.engine.update_lora_weights_task(*self._lora_bf16)

    def forward_sft(self, hidden_states: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
                    save_for_backward: bool = True, *, output_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        c = self.config
        k = c.num_experts_per_tok
        check_tensor(hidden_states, "hidden_states", (-1, c.hidden_size), FLOAT_DTYPES)
        q = hidden_states.shape[0]
        if q < 1:
            raise ValueError("hidden_states must hold at least one token")
        if q > c.chunked_prefill_size:
            raise ValueError(f"hidden_states has {q} tokens, more than chunked_prefill_size "
                             f"({c.chunked_prefill_size}); split the batch or raise chunked_prefill_size")
        check_tensor(expert_ids, "expert_ids", (q, k), INDEX_DTYPES)
        check_tensor(weights, "weights", (q, k), FLOAT_DTYPES)
        output = torch.empty(q, c.hidden_size, dtype=checked_output_dtype("output_dtype", output_dtype))
        self.engine.forward_sft_task(q, k, as_contiguous(expert_ids, torch.int64),
                                     as_contiguous(weights.detach(), torch.float32),
                                     as_contiguous(hidden_states.detach(), torch.bfloat16), output,
                                     bool(save_for_backward))
        return output

    def backward(self, grad_output: torch.Tensor, *, grad_input_dtype: torch.dtype = torch.bfloat16
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        c = self.config
        check_tensor(grad_output, "grad_output", (-1, c.hidden_size), FLOAT_DTYPES)
        q = grad_output.shape[0]
        grad_input = torch.empty(q, c.hidden_size, dtype=checked_output_dtype("grad_input_dtype", grad_input_dtype))
        routing_grad = torch.empty(q, c.num_experts_per_tok, dtype=torch.float32)
        dtypes = [t.dtype for t in self._lora] if self._lora else [torch.float32] * len(LORA_NAMES)
        grads = {name: torch.empty(shape, dtype=dtype) for (name, shape), dtype in zip(self.lora_shapes().items(), dtypes)}
        self.engine.backward_task(q, c.num_experts_per_tok, as_contiguous(grad_output.detach(), torch.bfloat16),
                                  grad_input, *grads.values(), routing_grad)
        for name, tensor in zip(LORA_NAMES, self._lora):  # set: the engine had a saved forward
            if tensor.requires_grad:
                tensor.grad = grads[name].clone() if tensor.grad is None else tensor.grad.add_(grads[name])
        grads["routing_weights"] = routing_grad
        return grad_input, grads
