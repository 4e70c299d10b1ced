"""kt-moe: CPU Mixture-of-Experts operators for inference and LoRA fine-tuning."""

from kt_moe._native import cpu_info, set_isa

__version__ = "0.1.0"
__all__ = ["cpu_info", "set_isa", "__version__"]
