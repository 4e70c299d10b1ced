"""Moving tokens to the ranks that hold their experts and the results back (expert parallelism).

One call of an expert-parallel layer on rank m with a batch of T tokens:

    dispatch: each token goes once to every rank holding one of its experts, as one row of bytes
              [hidden bf16 (2 H) | k local expert ids int32 (4 k) | k routing weights fp32 (4 k)],
              its slots for that rank first (the others -1 / 0); rank r keeps the first
              k_r = min(k, experts on r) columns. Rows are grouped by destination, in token order.
    combine:  each rank sends back its partial output [rows received, H]; the caller sums the
              partials of a token in fp32 and rounds the sum once. Training sends fp32 partials
              (4 H bytes a row), so that the sum is rounded once, as one process's engine rounds
              it; inference sends the engine's bf16 output (2 H).
    backward: the grad_output rows go out along the same route; back come grad_input partials
              fp32 [*, H] and the routing weights' gradient fp32 [*, k] of the slots each rank held.

Rows move with torch.distributed's all_to_all_single where the backend has it (gloo, MPI) and
otherwise with batched point-to-point isend / irecv (COLLECTIVES). Every rank of the group must
make the same calls in the same order; a rank with no tokens still takes part (T = 0)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
import torch.distributed as dist

from kt_moe.distributed.placement import ExpertPlacement

COLLECTIVES = ("all_to_all", "send_recv")


@dataclass
class ExchangeTimes:
    """Seconds spent in the collectives of one layer (waiting for the other ranks included)."""
    seconds: float = 0.0
    bytes_sent: int = 0
    calls: int = 0


@dataclass
class Route:
    """One call's traffic as the caller sees it, kept for combine and backward."""
    tokens: torch.Tensor          # [S] int64: the caller's rows sent, destination by destination
    slots: List[torch.Tensor]     # per rank [sent_r, k_r] int64: the caller's slot of each column, -1 empty
    sent: List[int]               # rows sent to each rank
    received: List[int]           # rows received from each rank
    num_tokens: int               # T
    saved_chunks: int = 0         # engine forward-cache entries the received rows took (SFT)


@dataclass
class TokenExchange:
    group: object                 # the process group
    placement: ExpertPlacement
    collective: str = "all_to_all"
    times: ExchangeTimes = field(default_factory=ExchangeTimes)

    def __post_init__(self):
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)

    # ---- the wire ------------------------------------------------------------------------------

    def _move(self, rows: torch.Tensor, send: List[int], receive: List[int]) -> torch.Tensor:
        """rows [sum(send), W] (split by destination) -> [sum(receive), W] (split by source)."""
        out = rows.new_empty((sum(receive), rows.shape[1]))
        start = time.perf_counter()
        if self.collective == "all_to_all":
            dist.all_to_all_single(out, rows, receive, send, group=self.group)
        else:
            self._send_recv(out, rows, send, receive)
        self.times.seconds += time.perf_counter() - start
        self.times.bytes_sent += (rows.numel() - send[self.rank] * rows.shape[1]) * rows.element_size()
        self.times.calls += 1
        return out

    def _send_recv(self, out: torch.Tensor, rows: torch.Tensor, send: List[int], receive: List[int]) -> None:
        outgoing, incoming = rows.split(send), out.split(receive)
        incoming[self.rank].copy_(outgoing[self.rank])
        ops = []
        for peer in range(self.world_size):
            if peer == self.rank:
                continue
            global_peer = dist.get_global_rank(self.group, peer)
            if send[peer]:
                ops.append(dist.P2POp(dist.isend, outgoing[peer].contiguous(), global_peer, self.group))
            if receive[peer]:
                ops.append(dist.P2POp(dist.irecv, incoming[peer], global_peer, self.group))
        if ops:
            for request in dist.batch_isend_irecv(ops):
                request.wait()

    def _counts(self, sent: List[int]) -> List[int]:
        ones = [1] * self.world_size
        return self._move(torch.tensor(sent, dtype=torch.int64).unsqueeze(1), ones, ones).squeeze(1).tolist()

    # ---- forward -------------------------------------------------------------------------------

    def dispatch(self, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor
                 ) -> Tuple[Route, torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden bf16 [T, H], ids int64 [T, k] (logical experts, -1 empty), weights fp32 [T, k] ->
        (route, received hidden bf16 [R, H], local ids int64 [R, k_m], weights fp32 [R, k_m])."""
        T, k = ids.shape
        H = hidden.shape[1]
        known = ids.clamp(min=0)
        owner = torch.where(ids >= 0, self.placement.owner[known], -1)
        local = self.placement.local_index[known]
        tokens, slots, parts, sent = [], [], [], []
        for rank, held in enumerate(self.placement.counts()):
            k_r = min(k, held)
            chosen = owner == rank                                   # [T, k]
            rows = chosen.any(dim=1).nonzero().squeeze(1)            # [c]
            chosen = chosen[rows]
            order = (~chosen).to(torch.uint8).argsort(dim=1, stable=True)[:, :k_r]  # its slots first
            valid = chosen.gather(1, order)
            packed_ids = torch.full((rows.numel(), k), -1, dtype=torch.int32)
            packed_weights = torch.zeros((rows.numel(), k), dtype=torch.float32)
            packed_ids[:, :k_r] = torch.where(valid, local[rows].gather(1, order), -1).to(torch.int32)
            packed_weights[:, :k_r] = torch.where(valid, weights[rows].gather(1, order), 0.0)
            parts.append(torch.cat([hidden[rows].view(torch.uint8), packed_ids.view(torch.uint8),
                                    packed_weights.view(torch.uint8)], dim=1))
            tokens.append(rows)
            slots.append(torch.where(valid, order, -1))
            sent.append(rows.numel())
        received = self._counts(sent)
        rows_in = self._move(torch.cat(parts), sent, received)
        k_m = min(k, self.placement.counts()[self.rank])
        got_hidden = rows_in[:, :2 * H].contiguous().view(torch.bfloat16)
        got_ids = rows_in[:, 2 * H:2 * H + 4 * k].contiguous().view(torch.int32)[:, :k_m].to(torch.int64)
        got_weights = rows_in[:, 2 * H + 4 * k:].contiguous().view(torch.float32)[:, :k_m].contiguous()
        route = Route(torch.cat(tokens), slots, sent, received, T)
        return route, got_hidden, got_ids, got_weights

    def combine(self, route: Route, partial: torch.Tensor) -> torch.Tensor:
        """partial bf16 or fp32 [R, H] (this rank's experts on the rows it received) -> fp32 [T, H]."""
        back = self._move(partial.view(torch.uint8), route.received, route.sent).view(partial.dtype)
        out = torch.zeros((route.num_tokens, partial.shape[1]), dtype=torch.float32)
        out.index_add_(0, route.tokens, back.float())
        return out

    # ---- backward ------------------------------------------------------------------------------

    def dispatch_grad(self, route: Route, grad_output: torch.Tensor) -> torch.Tensor:
        """grad_output bf16 [T, H] -> the received rows' gradient bf16 [R, H]."""
        rows = grad_output[route.tokens].contiguous().view(torch.uint8)
        return self._move(rows, route.sent, route.received).view(torch.bfloat16)

    def combine_grad(self, route: Route, grad_input: torch.Tensor, routing_grad: torch.Tensor, k: int
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        """grad_input fp32 [R, H] and routing_grad fp32 [R, k_m] of the received rows -> the caller's
        grad_input fp32 [T, H] and routing weights' gradient fp32 [T, k]."""
        R, H = grad_input.shape
        padded = torch.zeros((R, k), dtype=torch.float32)
        padded[:, :routing_grad.shape[1]] = routing_grad
        rows = torch.cat([grad_input.contiguous().view(torch.uint8), padded.view(torch.uint8)], dim=1)
        back = self._move(rows, route.received, route.sent)
        grad_hidden = torch.zeros((route.num_tokens, H), dtype=torch.float32)
        grad_hidden.index_add_(0, route.tokens, back[:, :4 * H].contiguous().view(torch.float32))
        grad_weights = torch.zeros((route.num_tokens, k), dtype=torch.float32)
        per_rank = back[:, 4 * H:].contiguous().view(torch.float32).split(route.sent)
        for rows_r, slots_r, grads_r in zip(route.tokens.split(route.sent), route.slots, per_rank):
            valid = slots_r >= 0
            token = rows_r.unsqueeze(1).expand_as(slots_r)
            grad_weights[token[valid], slots_r[valid]] = grads_r[:, :slots_r.shape[1]][valid]
        return grad_hidden, grad_weights
