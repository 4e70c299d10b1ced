"""SFT wrappers: BaseSFTMoEWrapper (spec 1.4) and AMXSFTMoEWrapper (LoRA on frozen experts).

The engine behind these classes is built by later work; until a method's engine exists the
factory refuses it at construction (see kt_moe.wrapper.ENGINES_NOT_BUILT).
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from kt_moe.backend import MoEWrapperBase


class BaseSFTMoEWrapper(MoEWrapperBase):
    """One MoE layer's CPU experts with LoRA adapters for fine-tuning (spec 1.4)."""

    mode = "sft"

    def load_weights(self, physical_to_logical_map: torch.Tensor) -> None:
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
                    save_for_backward: bool = True) -> torch.Tensor:
        """LoRA MoE forward: bf16 [q, H]; with save_for_backward pushes one forward-cache entry."""
        raise NotImplementedError(f"{type(self).__name__}.forward_sft")

    def backward(self, grad_output: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Pop the latest forward-cache entry: (grad_input [q, H], LoRA and routing gradients)."""
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def update_lora_weights(self) -> None:
        """Make the engine see LoRA tensors the optimizer changed in place."""
        raise NotImplementedError(f"{type(self).__name__}.update_lora_weights")


class AMXSFTMoEWrapper(BaseSFTMoEWrapper):
    """AMXBF16_SFT, AMXINT8_SFT, AMXINT4_SFT, AMXINT4_KGroup_SFT."""
