"""Weight readers and writers (docs/design.md section 4): Hugging Face safetensors checkpoints (hf_checkpoint)."""

from kt_moe.weights.hf_checkpoint import HFExpertReader

__all__ = ["HFExpertReader"]
