"""Inference wrappers: BaseMoEWrapper (spec 1.3) and its backends, one per method family.

The engines behind these classes are built by later work; until a method's engine exists the
factory refuses it at construction (see kt_moe.wrapper.ENGINES_NOT_BUILT).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from kt_moe.backend import MoEWrapperBase


class BaseMoEWrapper(MoEWrapperBase):
    """One MoE layer's CPU experts for inference (spec 1.3)."""

    mode = "inference"

    def load_weights(self, physical_to_logical_map: torch.Tensor) -> None:
        """Load this layer's (pre-quantized or Hugging Face) weights from weight_path."""
        raise NotImplementedError(f"{type(self).__name__}.load_weights")

    def load_weights_from_tensors(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                                  physical_to_logical_map: torch.Tensor) -> None:
        """Load gate [E, I, H], up [E, I, H], down [E, H, I], quantizing online."""
        raise NotImplementedError(f"{type(self).__name__}.load_weights_from_tensors")

    def forward(self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                cuda_stream: Optional[int] = None) -> torch.Tensor:
        """Synchronous forward: bf16 [q, H] on the device of hidden_states."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def submit_forward(self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                       cuda_stream: Optional[int] = None) -> None:
        """Start a forward on the worker pool and return at once."""
        raise NotImplementedError(f"{type(self).__name__}.submit_forward")

    def sync_forward(self, hidden_states: torch.Tensor, cuda_stream: Optional[int] = None) -> torch.Tensor:
        """Wait for the submitted forward and return its output."""
        raise NotImplementedError(f"{type(self).__name__}.sync_forward")

    def select_deferred_experts(self, expert_ids: torch.Tensor, scores: torch.Tensor,
                                protected_k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Choose which experts of each token run deferred."""
        raise NotImplementedError(f"{type(self).__name__}.select_deferred_experts")


class AMXMoEWrapper(BaseMoEWrapper):
    """AMXINT4 / AMXINT8: weights quantized by kt-moe (online or by `kt-moe convert`)."""


class NativeMoEWrapper(BaseMoEWrapper):
    """RAWINT4 / FP8: pre-quantized weights in the format users download."""


class LlamafileMoEWrapper(BaseMoEWrapper):
    """LLAMAFILE: GGUF weights."""


class GeneralMoEWrapper(BaseMoEWrapper):
    """MOE_INT4 / MOE_INT8: portable INT4 / INT8 kernels."""
