"""ExpertParallelMoE: one MoE layer's routed experts spread over the ranks of a torch.distributed
process group (user guide: docs/distributed.md).

    layer = ExpertParallelMoE(process_group=None, placement=None, **KTMoEWrapper_arguments)
    layer.load_weights_from_tensors(gate [E, I, H], up, down)    # or load_weights() from weight_path
    out = layer.forward(hidden [T, H], ids [T, k], weights [T, k])            # inference methods
    out = layer.forward_sft(...); grad_input, grads = layer.backward(grad)   # SFT methods

Each rank builds a KTMoEWrapper over the experts the placement gives it (num_experts = that count,
num_experts_per_tok = min(k, that count)) and only ever holds their weights and LoRA. A call
dispatches every token to the ranks holding its experts (kt_moe.distributed.token_exchange), runs
the local wrapper on what arrived and sends the partial outputs back, where they are summed. The
LoRA gradients of an expert accumulate on its rank from every rank's tokens: the gradient of the sum
of the ranks' losses. Every call is collective: all ranks make it, in the same order, a rank with no
tokens with T = 0."""

from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from kt_moe.config import validate_config
from kt_moe.distributed.placement import ExpertPlacement
from kt_moe.distributed.token_exchange import COLLECTIVES, Route, TokenExchange
from kt_moe.sft import LORA_NAMES, checked_output_dtype
from kt_moe.tensor_checks import FLOAT_DTYPES, INDEX_DTYPES, WEIGHT_DTYPES, check_tensor
from kt_moe.wrapper import KTMoEWrapper


def _group_of(process_group):
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group: torch.distributed is not initialized; call "
                         "torch.distributed.init_process_group('gloo', ...) on every rank first")
    return dist.group.WORLD if process_group is None else process_group


def _collective(choice: str, group) -> str:
    """The transfer to use: all_to_all_single on the CPU backends that have it (gloo, MPI), batched
    isend / irecv on others; ValueError for a group that cannot move CPU tensors (NCCL alone)."""
    if choice not in COLLECTIVES + ("auto",):
        raise ValueError(f"collective: expected 'auto', 'all_to_all' or 'send_recv', got {choice!r}")
    backend = str(dist.get_backend(group))
    if backend == "nccl":
        raise ValueError("process_group: its backend is nccl, which moves CUDA tensors only; kt-moe's token rows "
                         "are in CPU memory: pass a gloo group (torch.distributed.new_group(backend='gloo'))")
    if choice != "auto":
        return choice
    return "all_to_all" if "gloo" in backend or "mpi" in backend else "send_recv"


class ExpertParallelMoE:
    """A layer's experts over a process group; the arguments of KTMoEWrapper plus:

    process_group: the ranks sharing the layer (default: the whole world). placement: per rank of
    the group, the logical expert ids it holds (default contiguous, kt_moe.distributed.placement).
    collective: "all_to_all", "send_recv" (batched isend / irecv) or "auto" (all_to_all on gloo and
    MPI). Collectives time out after the process group's timeout and then raise."""

    def __init__(self, process_group=None, placement: Optional[Sequence[Sequence[int]]] = None,
                 collective: str = "auto", **wrapper_arguments):
        self.config = validate_config(**wrapper_arguments)  # the whole layer's view, errors named as given
        c = self.config
        if c.num_gpu_experts:
            raise ValueError(f"num_gpu_experts: must be 0 for an expert-parallel layer, got {c.num_gpu_experts}")
        self.group = _group_of(process_group)
        self.rank, self.world_size = dist.get_rank(self.group), dist.get_world_size(self.group)
        transfer = _collective(collective, self.group)
        self.placement = ExpertPlacement(c.num_experts, self.world_size, placement)
        self.local_experts: List[int] = self.placement.experts_of(self.rank)
        held = len(self.local_experts)
        local_arguments = dict(wrapper_arguments, num_experts=held,
                               num_experts_per_tok=min(c.num_experts_per_tok, held))
        if c.is_sft:  # the rows of all ranks arrive at once and are run in chunks, one cache entry each
            local_arguments["max_cache_depth"] = c.max_cache_depth * self.world_size
        self.local = KTMoEWrapper(**local_arguments)
        self.exchange = TokenExchange(self.group, self.placement, transfer)
        self.compute_seconds = 0.0  # time in the local wrapper (the bench's split against exchange.times)
        self._routes: List[Route] = []  # saved forwards, latest last

    def __repr__(self) -> str:
        return (f"ExpertParallelMoE(rank={self.rank}/{self.world_size}, experts={self.local_experts}, "
                f"local={self.local!r})")

    # ---- weights -------------------------------------------------------------------------------

    def load_weights(self, verify_checksum: bool = True) -> None:
        """Read this rank's experts of layer layer_idx from weight_path (KTMoEWrapper.load_weights; not
        LLAMAFILE's GGUF files, whose layer must have the wrapper's expert count)."""
        if self.config.method == "LLAMAFILE":
            raise ValueError("method: LLAMAFILE layers of an expert-parallel model load from tensors "
                             "(load_weights_from_tensors), not from GGUF files")
        self.local.load_weights(torch.tensor(self.local_experts, dtype=torch.int64), verify_checksum,
                                num_logical_experts=self.config.num_experts)

    def load_weights_from_tensors(self, gate, up, down) -> None:
        """gate [E', I, H], up [E', I, H], down [E', H, I] (as KTMoEWrapper takes them) holding either
        every expert of the layer (E' = num_experts: this rank takes its own) or only this rank's, in
        the order of its placement (E' = its expert count)."""
        first = gate[0] if isinstance(gate, (list, tuple)) else gate
        check_tensor(first, "gate", (-1, -1, -1), WEIGHT_DTYPES + (torch.float8_e4m3fn, torch.int32))
        count = first.shape[0]
        if count == self.config.num_experts:
            slots = self.local_experts
        elif count == len(self.local_experts):
            slots = list(range(count))
        else:
            raise ValueError(f"gate: {count} experts, expected all {self.config.num_experts} of the layer or this "
                             f"rank's {len(self.local_experts)}")
        self.local.load_weights_from_tensors(gate, up, down, torch.tensor(slots, dtype=torch.int64))

    def resident_bytes_per_expert(self) -> int:
        return self.local.resident_bytes_per_expert()

    # ---- inputs --------------------------------------------------------------------------------

    def _inputs(self, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, names: Tuple[str, str]):
        """The call's tensors on the CPU (hidden bf16, ids int64, weights fp32), checked here before any
        collective: a bad argument raises on its rank only (the others then time out)."""
        c = self.config
        k = c.num_experts_per_tok
        check_tensor(hidden, "hidden_states", (-1, c.hidden_size), FLOAT_DTYPES, ("cpu", "cuda"))
        T = hidden.shape[0]
        check_tensor(ids, names[0], (T, k), INDEX_DTYPES, ("cpu", "cuda"))
        check_tensor(weights, names[1], (T, k), FLOAT_DTYPES, ("cpu", "cuda"))
        ids = ids.detach().cpu().to(torch.int64)
        outside = (ids < -1) | (ids >= c.num_experts)
        if outside.any():
            t, j = outside.nonzero()[0].tolist()
            raise ValueError(f"{names[0]} must be in [-1, {c.num_experts}), got {int(ids[t, j])} at [{t}, {j}]")
        ordered = ids.sort(dim=1).values
        repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        if repeated.any():
            t = int(repeated.nonzero()[0, 0])
            raise ValueError(f"{names[0]}: token {t} lists an expert twice ({ids[t].tolist()})")
        return (hidden.detach().cpu().to(torch.bfloat16).contiguous(), ids,
                weights.detach().cpu().to(torch.float32).contiguous())

    def _timed(self, call, *args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.compute_seconds += time.perf_counter() - start

    # ---- inference -----------------------------------------------------------------------------

    def forward(self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                cuda_stream: Optional[int] = None) -> torch.Tensor:
        """bf16 [T, H] on the device of hidden_states (CUDA tensors are copied synchronously;
        cuda_stream is accepted for the wrapper's signature)."""
        if self.config.is_sft:
            raise RuntimeError("forward() not available in sft mode")
        x, ids, weights = self._inputs(hidden_states, topk_ids, topk_weights, ("topk_ids", "topk_weights"))
        route, got_x, got_ids, got_weights = self.exchange.dispatch(x, ids, weights)
        partial = (self._timed(self.local.forward, got_x, got_ids, got_weights) if got_x.shape[0]
                   else got_x.new_empty((0, x.shape[1])))
        return self.exchange.combine(route, partial).to(device=hidden_states.device, dtype=torch.bfloat16)

    # ---- SFT -----------------------------------------------------------------------------------

    def _chunks(self, rows: int) -> List[Tuple[int, int]]:
        size = self.config.chunked_prefill_size
        return [(start, min(rows, start + size)) for start in range(0, rows, size)]

    def forward_sft(self, hidden_states: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
                    save_for_backward: bool = True, *, output_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """[T, H] in output_dtype (bf16 or fp32) on the CPU, the ranks' fp32 partials summed; with
        save_for_backward the call is kept for backward() (last in, first out). T <=
        chunked_prefill_size per rank when saved."""
        if not self.config.is_sft:
            raise RuntimeError("forward_sft() not available in inference mode")
        c = self.config
        output_dtype = checked_output_dtype("output_dtype", output_dtype)
        x, ids, w = self._inputs(hidden_states, expert_ids, weights, ("expert_ids", "weights"))
        if save_for_backward:
            if x.shape[0] > c.chunked_prefill_size:
                raise ValueError(f"hidden_states has {x.shape[0]} tokens, more than chunked_prefill_size "
                                 f"({c.chunked_prefill_size}); split the batch or raise chunked_prefill_size")
            if len(self._routes) >= c.max_cache_depth:
                raise RuntimeError(f"Forward cache full: {len(self._routes)} saved forwards wait for backward() "
                                   f"(max_cache_depth={c.max_cache_depth})")
        route, got_x, got_ids, got_w = self.exchange.dispatch(x, ids, w)
        partials = [self._timed(self.local.forward_sft, got_x[a:b], got_ids[a:b], got_w[a:b], save_for_backward,
                                output_dtype=torch.float32)
                    for a, b in self._chunks(got_x.shape[0])]
        partial = torch.cat(partials) if partials else torch.empty((0, c.hidden_size), dtype=torch.float32)
        if save_for_backward:
            route.saved_chunks = len(partials)
            self._routes.append(route)
        return self.exchange.combine(route, partial).to(output_dtype)

    def backward(self, grad_output: torch.Tensor, *, grad_input_dtype: torch.dtype = torch.bfloat16
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Pop the latest saved forward: (grad_input [T, H] in grad_input_dtype, the ranks' fp32
        partials summed, grads) with grads the six LoRA gradients of this rank's experts (fp32 or
        the LoRA tensors' dtype, [local experts, ...]) and "routing_weights" fp32 [T, k] of this
        rank's tokens."""
        if not self._routes:
            raise RuntimeError("No forward cache available: backward() needs a forward_sft(save_for_backward=True)")
        c = self.config
        grad_input_dtype = checked_output_dtype("grad_input_dtype", grad_input_dtype)
        check_tensor(grad_output, "grad_output", (self._routes[-1].num_tokens, c.hidden_size), FLOAT_DTYPES)
        route = self._routes.pop()
        got_grad = self.exchange.dispatch_grad(route, grad_output.detach().to(torch.bfloat16).contiguous())
        chunks = self._chunks(got_grad.shape[0])
        grads = self._zero_grads()
        grad_inputs, routing = [None] * len(chunks), [None] * len(chunks)
        for i in reversed(range(route.saved_chunks)):  # the cache is last in, first out
            a, b = chunks[i]
            grad_inputs[i], chunk_grads = self._timed(self.local.backward, got_grad[a:b],
                                                      grad_input_dtype=torch.float32)
            routing[i] = chunk_grads.pop("routing_weights")
            for name in LORA_NAMES:
                grads[name] += chunk_grads[name]
        k_m = self.local.config.num_experts_per_tok
        grad_in = torch.cat(grad_inputs) if chunks else torch.empty((0, c.hidden_size), dtype=torch.float32)
        routing_in = torch.cat(routing) if chunks else torch.empty((0, k_m), dtype=torch.float32)
        grad_input, grads["routing_weights"] = self.exchange.combine_grad(route, grad_in, routing_in,
                                                                          c.num_experts_per_tok)
        return grad_input.to(grad_input_dtype), grads

    def _zero_grads(self) -> Dict[str, torch.Tensor]:
        lora = self.local.lora_tensors
        dtypes = [t.dtype for t in lora] if lora else [torch.float32] * len(LORA_NAMES)
        return {name: torch.zeros(shape, dtype=dtype)
                for (name, shape), dtype in zip(self.local.lora_shapes().items(), dtypes)}

    def discard_saved_forward(self) -> None:
        """Drop the latest saved forward without a backward (every rank must drop the same one)."""
        if not self._routes:
            raise RuntimeError("No forward cache available")
        for _ in range(self._routes.pop().saved_chunks):
            self.local.discard_saved_forward()

    def init_lora_weights(self, gate_a, gate_b, up_a, up_b, down_a, down_b) -> None:
        """This rank's experts' LoRA, [local experts, ...] in the order of its placement (read in place)."""
        self.local.init_lora_weights(gate_a, gate_b, up_a, up_b, down_a, down_b)

    def update_lora_weights(self) -> None:
        self.local.update_lora_weights()

    # ---- whole-layer tensors -------------------------------------------------------------------

    def gather_experts(self, tensors: Dict[str, torch.Tensor]) -> Optional[Dict[str, torch.Tensor]]:
        """Per-expert tensors of this rank ([local experts, ...] each) -> on rank 0 of the group the
        layer's [num_experts, ...] tensors in logical order, None on the other ranks. Collective."""
        local = {name: tensor.detach().cpu() for name, tensor in tensors.items()}
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(local, gathered, dst=dist.get_global_rank(self.group, 0), group=self.group)
        if self.rank != 0:
            return None
        full = {}
        for name, tensor in local.items():
            full[name] = tensor.new_empty((self.config.num_experts,) + tuple(tensor.shape[1:]))
            for rank, part in enumerate(gathered):
                full[name][self.placement.experts_of(rank)] = part[name]
        return full
