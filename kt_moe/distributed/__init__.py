"""kt-moe over torch.distributed: expert-parallel layers (docs/distributed.md)."""

from kt_moe.distributed.expert_parallel import ExpertParallelMoE
from kt_moe.distributed.placement import ExpertPlacement

__all__ = ["ExpertParallelMoE", "ExpertPlacement"]
