"""Which rank of a process group holds which routed experts of a layer (expert parallelism).

A placement is a list, one entry per rank, of the logical expert ids that rank holds, in the order of
its local slots: every expert of the layer on exactly one rank. The default is contiguous: rank r
holds experts [r E / N, (r + 1) E / N) (the first E mod N ranks one more). A load-balanced layout
(the physical_to_logical_map of a serving stack) is any other partition."""

from __future__ import annotations

import numbers
from typing import List, Optional, Sequence

import torch


def contiguous(num_experts: int, world_size: int) -> List[List[int]]:
    """Rank r: experts [start_r, start_r + E // N + (r < E % N))."""
    base, extra = divmod(num_experts, world_size)
    placement, start = [], 0
    for rank in range(world_size):
        count = base + (rank < extra)
        placement.append(list(range(start, start + count)))
        start += count
    return placement


class ExpertPlacement:
    """The experts of one layer over `world_size` ranks.

    owner [E] int64: the rank holding each logical expert; local_index [E] int64: its slot on that
    rank; experts_of(rank): the logical ids of a rank's slots."""

    def __init__(self, num_experts: int, world_size: int, placement: Optional[Sequence[Sequence[int]]] = None):
        self.num_experts, self.world_size = num_experts, world_size
        self._ranks = contiguous(num_experts, world_size) if placement is None else _checked(
            placement, num_experts, world_size)
        if any(not experts for experts in self._ranks):
            raise ValueError(f"placement: every rank must hold at least one expert; {num_experts} experts over "
                             f"{world_size} ranks leave rank {[len(e) for e in self._ranks].index(0)} none")
        self.owner = torch.empty(num_experts, dtype=torch.int64)
        self.local_index = torch.empty(num_experts, dtype=torch.int64)
        for rank, experts in enumerate(self._ranks):
            ids = torch.tensor(experts, dtype=torch.int64)
            self.owner[ids] = rank
            self.local_index[ids] = torch.arange(len(experts), dtype=torch.int64)

    def experts_of(self, rank: int) -> List[int]:
        return list(self._ranks[rank])

    def counts(self) -> List[int]:
        """Experts per rank."""
        return [len(experts) for experts in self._ranks]

    def as_lists(self) -> List[List[int]]:
        return [list(experts) for experts in self._ranks]


def _checked(placement: Sequence[Sequence[int]], num_experts: int, world_size: int) -> List[List[int]]:
    if isinstance(placement, (str, bytes)) or len(placement) != world_size:
        raise ValueError(f"placement: expected a list of {world_size} lists of expert ids (one per rank), "
                         f"got {placement!r:.200}")
    seen = {}
    ranks = []
    for rank, experts in enumerate(placement):
        if isinstance(experts, torch.Tensor):
            experts = experts.tolist()
        ids = []
        for expert in experts:
            if isinstance(expert, bool) or not isinstance(expert, numbers.Integral) or not 0 <= expert < num_experts:
                raise ValueError(f"placement: rank {rank} lists {expert!r}, expected expert ids in [0, {num_experts})")
            if int(expert) in seen:
                raise ValueError(f"placement: expert {expert} is on rank {seen[int(expert)]} and on rank {rank}; each "
                                 "expert belongs to exactly one rank")
            seen[int(expert)] = rank
            ids.append(int(expert))
        ranks.append(ids)
    missing = sorted(set(range(num_experts)) - set(seen))
    if missing:
        raise ValueError(f"placement: experts {missing[:8]}{'...' if len(missing) > 8 else ''} are on no rank; every "
                         f"expert of the {num_experts} must be placed")
    return ranks
