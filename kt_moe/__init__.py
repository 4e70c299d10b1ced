"""kt-moe: CPU Mixture-of-Experts operators for inference and LoRA fine-tuning.

Public entry: `KTMoEWrapper(...)` returns an inference or SFT backend for one MoE layer.
"""

from kt_moe._native import MOEConfig, MOESFTConfig, cpu_info, set_isa
from kt_moe.config import ConfigError, KTMoEConfig, validate_config
from kt_moe.inference import AMXMoEWrapper, BaseMoEWrapper, GeneralMoEWrapper, NativeMoEWrapper
from kt_moe.llamafile import LlamafileMoEWrapper
from kt_moe.sft import AMXSFTMoEWrapper, BaseSFTMoEWrapper
from kt_moe.wrapper import KTMoEWrapper

__version__ = "0.1.0"
__all__ = [
    "KTMoEWrapper", "BaseMoEWrapper", "BaseSFTMoEWrapper", "AMXMoEWrapper", "NativeMoEWrapper",
    "LlamafileMoEWrapper", "GeneralMoEWrapper", "AMXSFTMoEWrapper", "KTMoEConfig", "ConfigError",
    "validate_config", "MOEConfig", "MOESFTConfig", "cpu_info", "set_isa", "__version__",
]
