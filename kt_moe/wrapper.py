"""The KTMoEWrapper factory (spec 1.1-1.2): validates every parameter, then returns the backend
for (mode, method)."""

from __future__ import annotations

from typing import Optional, Union

from kt_moe.config import validate_config
from kt_moe.inference import AMXMoEWrapper, BaseMoEWrapper, GeneralMoEWrapper, NativeMoEWrapper
from kt_moe.llamafile import LlamafileMoEWrapper
from kt_moe.sft import AMXSFTMoEWrapper, BaseSFTMoEWrapper

BACKENDS = {
    "AMXINT4": AMXMoEWrapper,
    "AMXINT8": AMXMoEWrapper,
    "RAWINT4": NativeMoEWrapper,
    "FP8": NativeMoEWrapper,
    "LLAMAFILE": LlamafileMoEWrapper,
    "MOE_INT4": GeneralMoEWrapper,
    "MOE_INT8": GeneralMoEWrapper,
    "BF16": AMXMoEWrapper,
    "AMXBF16_SFT": AMXSFTMoEWrapper,
    "AMXINT8_SFT": AMXSFTMoEWrapper,
    "AMXINT4_SFT": AMXSFTMoEWrapper,
    "AMXINT4_KGroup_SFT": AMXSFTMoEWrapper,
    "AMXFP8_SFT": AMXSFTMoEWrapper,
}

class KTMoEWrapper:
    """Factory: `KTMoEWrapper(...)` returns an inference or SFT backend, not a KTMoEWrapper.

    Raises ValueError (kt_moe.config.ConfigError) naming the first invalid parameter.
    """

    def __new__(
        cls,
        layer_idx: int,
        num_experts: int,
        num_experts_per_tok: int,
        hidden_size: int,
        moe_intermediate_size: int,
        num_gpu_experts: int,
        cpuinfer_threads: int,
        threadpool_count: int,
        weight_path: str,
        chunked_prefill_size: int,
        cpu_save: bool = False,
        max_deferred_experts_per_token: Optional[int] = None,
        method: str = "AMXINT4",
        mode: str = "inference",
        lora_rank: int = 16,
        lora_alpha: float = 32.0,
        max_cache_depth: int = 1,
        group_size: Optional[int] = None,
        zero_point: bool = True,
        gguf_type: Optional[str] = None,
    ) -> Union[BaseMoEWrapper, BaseSFTMoEWrapper]:
        config = validate_config(
            layer_idx=layer_idx, num_experts=num_experts, num_experts_per_tok=num_experts_per_tok,
            hidden_size=hidden_size, moe_intermediate_size=moe_intermediate_size,
            num_gpu_experts=num_gpu_experts, cpuinfer_threads=cpuinfer_threads,
            threadpool_count=threadpool_count, weight_path=weight_path,
            chunked_prefill_size=chunked_prefill_size, cpu_save=cpu_save,
            max_deferred_experts_per_token=max_deferred_experts_per_token, method=method, mode=mode,
            lora_rank=lora_rank, lora_alpha=lora_alpha, max_cache_depth=max_cache_depth, group_size=group_size,
            zero_point=zero_point, gguf_type=gguf_type)
        return BACKENDS[config.method](config)
