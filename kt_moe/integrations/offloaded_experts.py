"""What a transformers experts module runs once its experts are on kt-moe.

`OffloadedExperts` is attached to the module (as `module.kt_moe`) by
kt_moe.integrations.transformers.offload_experts and called with the module's own arguments,
`(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k])`, returning [T, H] in the dtype
and on the device of hidden_states:

- inference methods: the wrapper's forward (a CUDA model through its cuda_stream path);
- SFT methods: forward_sft, through an autograd Function when a gradient is wanted, whose backward
  is the wrapper's backward: the gradient of the hidden states and of the routing weights flows on
  to the layers below and the router, the LoRA parameters' gradients land in their .grad;
- the first `num_gpu_experts` experts (the peer's hybrid mode) stay in torch on the model's device
  and the wrapper skips them; their outputs are added;
- an ExpertParallelMoE (expert parallelism) takes every call whole, an empty batch too: each call
  is collective, so every rank makes it, and it runs what its rank receives in chunks itself.

The engine's forward cache is last in, first out, one entry per saved forward. Every saved forward
gets a ticket held by its autograd node; a backward whose ticket is not the latest is refused
(rather than reading another forward's state), and a saved forward whose graph was freed without a
backward is discarded from the engine before the next call."""

from __future__ import annotations

import weakref
from typing import List, Optional

import torch

from kt_moe.distributed import ExpertParallelMoE
from kt_moe.integrations.expert_lora import EngineLora


class _Ticket:
    """A saved forward's claim on its engine cache entry (held by the autograd node)."""
    consumed = False


class OffloadedExperts:
    def __init__(self, wrapper, lora: Optional[EngineLora], gpu_gate_up: Optional[torch.Tensor],
                 gpu_down: Optional[torch.Tensor]):
        self.wrapper = wrapper
        self.lora = lora
        self.gpu_gate_up = gpu_gate_up  # [G, 2I, H] experts 0..G-1, kept in torch (hybrid mode)
        self.gpu_down = gpu_down        # [G, H, I]
        self._saved: List[weakref.ref] = []  # tickets of the engine's saved forwards, latest last
        self.distributed = isinstance(wrapper, ExpertParallelMoE)

    @property
    def trains(self) -> bool:
        return self.lora is not None

    def __call__(self, module: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                 top_k_weights: torch.Tensor) -> torch.Tensor:
        if hidden_states.shape[0] == 0 and not self.distributed:
            return torch.zeros_like(hidden_states)
        if not self.trains:
            stream = torch.cuda.current_stream(hidden_states.device).cuda_stream if hidden_states.is_cuda else None
            out = self.wrapper.forward(hidden_states, top_k_index, top_k_weights, cuda_stream=stream)
        else:
            params = tuple(self.lora.params.values())
            wants_grad = torch.is_grad_enabled() and (
                hidden_states.requires_grad or top_k_weights.requires_grad or any(p.requires_grad for p in params))
            if wants_grad:
                out = _ExpertsFunction.apply(self, hidden_states, top_k_index, top_k_weights, *params)
            else:
                out = self.forward_unsaved(hidden_states, top_k_index, top_k_weights)
        out = out.to(device=hidden_states.device, dtype=hidden_states.dtype)
        if self.gpu_gate_up is not None:
            out = out + self._torch_experts(module, hidden_states, top_k_index, top_k_weights)
        return out

    # ---- SFT: forward and backward through the engine's cache ----------------------------------

    def _drop_abandoned(self) -> None:
        """Discard the latest saved forwards whose autograd graph is gone without a backward."""
        while self._saved and self._saved[-1]() is None:
            self.wrapper.discard_saved_forward()
            self._saved.pop()

    def _chunks(self, q: int):
        if self.distributed:
            return [(0, q)]
        size = self.wrapper.config.chunked_prefill_size
        return [(start, min(q, start + size)) for start in range(0, q, size)]

    def forward_unsaved(self, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        self.lora.refresh()
        hidden, ids, weights = hidden.cpu(), ids.cpu(), weights.cpu()
        return torch.cat([self.wrapper.forward_sft(hidden[a:b], ids[a:b], weights[a:b], save_for_backward=False)
                          for a, b in self._chunks(hidden.shape[0])])

    def forward_saved(self, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor):
        """(output bf16 [T, H] on the CPU, the saved forward's ticket)."""
        self._drop_abandoned()
        q, config = hidden.shape[0], self.wrapper.config
        if q > config.chunked_prefill_size:
            raise ValueError(f"hidden_states: {q} tokens reach this MoE layer in one training forward, more than "
                             f"chunked_prefill_size={config.chunked_prefill_size} given to offload_experts; raise it "
                             "or use smaller micro-batches")
        if len(self._saved) >= config.max_cache_depth:
            raise RuntimeError(f"kt-moe experts of layer {config.layer_idx}: {len(self._saved)} forwards wait for "
                               f"their backward, max_cache_depth={config.max_cache_depth} given to offload_experts; "
                               "raise it to the number of micro-batches you keep in flight")
        self.lora.refresh()
        out = self.wrapper.forward_sft(hidden.detach().cpu(), ids.cpu(), weights.detach().cpu(), save_for_backward=True)
        ticket = _Ticket()
        self._saved.append(weakref.ref(ticket))
        return out, ticket

    def backward(self, ticket: _Ticket, grad_output: torch.Tensor):
        if ticket.consumed:
            raise RuntimeError("kt-moe experts: a second backward through the same forward (retain_graph=True) is not "
                               "supported; its saved state was used by the first")
        self._drop_abandoned()
        if not self._saved or self._saved[-1]() is not ticket:
            raise RuntimeError("kt-moe experts: backward ran in another order than the reverse of the forwards (the "
                               "engine's forward cache is last in, first out); run each micro-batch's backward before "
                               "the next forward, or backward micro-batches in reverse order")
        grad_input, grads = self.wrapper.backward(grad_output.cpu())
        self._saved.pop()
        ticket.consumed = True
        return grad_input, grads

    # ---- hybrid mode: the experts kept in torch --------------------------------------------------

    def _torch_experts(self, module: torch.nn.Module, hidden: torch.Tensor, ids: torch.Tensor,
                       weights: torch.Tensor) -> torch.Tensor:
        """sum over slots with an id < G of weight * down(act(gate x) * up x), in torch."""
        out = torch.zeros_like(hidden)
        I = self.gpu_down.shape[2]
        for expert in range(self.gpu_gate_up.shape[0]):
            token, slot = torch.where(ids == expert)
            if token.numel() == 0:
                continue
            gate, up = torch.nn.functional.linear(hidden[token], self.gpu_gate_up[expert]).split(I, dim=-1)
            y = torch.nn.functional.linear(module.act_fn(gate) * up, self.gpu_down[expert])
            out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
        return out


class _ExpertsFunction(torch.autograd.Function):
    """out = experts(hidden, ids, weights; LoRA parameters); backward: the engine's backward."""

    @staticmethod
    def forward(ctx, offloaded: OffloadedExperts, hidden: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                *params: torch.Tensor) -> torch.Tensor:
        out, ticket = offloaded.forward_saved(hidden, ids, weights)
        # A weak reference: a graph left alive at interpreter exit must not keep the engine alive.
        ctx.offloaded, ctx.ticket = weakref.ref(offloaded), ticket
        ctx.hidden_meta = (hidden.device, hidden.dtype)
        ctx.weights_meta = (weights.device, weights.dtype)
        ctx.param_meta = [(p.dtype, p.device) for p in params]
        return out.to(device=hidden.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        offloaded = ctx.offloaded()
        if offloaded is None:
            raise RuntimeError("kt-moe experts: the experts this forward ran on were deleted before its backward")
        grad_input, grads = offloaded.backward(ctx.ticket, grad_output)
        grad_hidden = grad_input.to(*ctx.hidden_meta) if ctx.needs_input_grad[1] else None
        grad_weights = grads["routing_weights"].to(*ctx.weights_meta) if ctx.needs_input_grad[3] else None
        param_grads = [g.to(dtype=dtype, device=device) if needed else None
                       for g, (dtype, device), needed in zip(EngineLora.parameter_grads(grads), ctx.param_meta,
                                                             ctx.needs_input_grad[4:])]
        return (None, grad_hidden, None, grad_weights, *param_grads)
