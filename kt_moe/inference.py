"""Inference wrappers: BaseMoEWrapper (spec 1.3) and its backends, one per method family.

AMXMoEWrapper runs methods BF16, AMXINT8 and AMXINT4 on the native TP_MOE engine (user guide:
docs/inference.md); NativeMoEWrapper (FP8, RAWINT4), GeneralMoEWrapper (MOE_INT8, MOE_INT4) and
kt_moe.llamafile's LlamafileMoEWrapper run the other methods on the same engine.
"""

from __future__ import annotations

import numbers
import threading
from typing import NamedTuple, Optional, Tuple

import torch

from kt_moe import _native, device_transfer
from kt_moe.backend import MoEWrapperBase
from kt_moe.device_transfer import Transfer
from kt_moe.tensor_checks import FLOAT_DTYPES, INDEX_DTYPES, check_tensor
from kt_moe.weights.expert_source import base_scheme, load_from_path, load_from_tensors


class BaseMoEWrapper(MoEWrapperBase):
    """One MoE layer's CPU experts for inference (spec 1.3)."""

    mode = "inference"

    def load_weights(self, physical_to_logical_map: torch.Tensor, verify_checksum: bool = True,
                     num_logical_experts: Optional[int] = None) -> None:
        """Load this layer's (pre-quantized or Hugging Face) weights from weight_path."""
        raise NotImplementedError(f"{type(self).__name__}.load_weights")

    def load_weights_from_tensors(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                                  physical_to_logical_map: torch.Tensor) -> None:
        """Load gate [E, I, H], up [E, I, H], down [E, H, I], quantizing online."""
        raise NotImplementedError(f"{type(self).__name__}.load_weights_from_tensors")

    def forward(self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                cuda_stream: Optional[int] = None) -> torch.Tensor:
        """Synchronous forward: bf16 [q, H] on the device of hidden_states."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def submit_forward(self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                       cuda_stream: Optional[int] = None) -> None:
        """Start a forward on the worker pool and return at once."""
        raise NotImplementedError(f"{type(self).__name__}.submit_forward")

    def sync_forward(self, hidden_states: torch.Tensor, cuda_stream: Optional[int] = None) -> torch.Tensor:
        """Wait for the submitted forward and return its output."""
        raise NotImplementedError(f"{type(self).__name__}.sync_forward")

    def select_deferred_experts(self, expert_ids: torch.Tensor, scores: torch.Tensor,
                                protected_k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Choose which experts of each token run deferred."""
        raise NotImplementedError(f"{type(self).__name__}.select_deferred_experts")


DEVICES = ("cpu", "cuda")  # where the tensors of a forward may live


class _Pending(NamedTuple):
    """A forward on the engine that sync_forward() / sync_deferred_forward() has not fetched yet."""

    ticket: int
    output: torch.Tensor  # bf16 [q, H] on the CPU, written by the engine
    transfer: Transfer


class AMXMoEWrapper(BaseMoEWrapper):
    """BF16 (unquantized experts), AMXINT8 and AMXINT4 (experts quantized by kt-moe: online from
    bf16 weights, or read from a `kt-moe convert` file).

    forward / submit_forward take hidden_states [q, H] (bf16, fp16 or fp32; CPU or CUDA), topk_ids
    [q, k] (int64 or int32) and topk_weights [q, k] (float) and produce bf16 [q, H] on the device of
    hidden_states (on the CPU with cpu_save=True). Ids of -1 and ids of GPU experts contribute
    nothing. Batches above chunked_prefill_size tokens run in chunks. One forward may be pending
    per wrapper; CPU tensors are read in place until its sync_forward(). See docs/inference.md.
    """

    def __init__(self, config):
        super().__init__(config)
        self.engine = _native.TP_MOE(self.native_config, self.pool)  # ValueError for a method not built
        self.scheme = base_scheme(config, self.format_option, self.base_format)  # kt_moe.quant scheme; None for BF16
        self._load_lock = threading.Lock()  # one load at a time (they share the engine's staged weights)
        self._pending: Optional[_Pending] = None
        self._deferred: Optional[_Pending] = None

    # ---- weights ---------------------------------------------------------------------------

    def load_weights(self, physical_to_logical_map: torch.Tensor, verify_checksum: bool = True,
                     num_logical_experts: Optional[int] = None) -> None:
        """Read layer layer_idx from weight_path: for AMXINT8 / AMXINT4 its pre-quantized file when
        there is one (its checksum verified unless verify_checksum=False), else the Hugging Face
        checkpoint (quantized while loading). Slot p gets logical expert physical_to_logical_map[p];
        num_logical_experts: the stored layer's expert count when it has more experts than this
        wrapper's num_experts slots (default num_experts).
        All or nothing (docs/inference.md, "Loading"); forwards running meanwhile read the previous
        weights."""
        with self._load_lock:
            load_from_path(self.engine, self.config, self.scheme, physical_to_logical_map, verify_checksum,
                           num_logical_experts)

    def load_weights_from_tensors(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                                  physical_to_logical_map: torch.Tensor) -> None:
        """gate [E', I, H], up [E', I, H], down [E', H, I] (CPU; bf16, fp16, fp32 or fp64, finite);
        slot p gets logical expert physical_to_logical_map[p]. The engine keeps its own copy (quantized
        with the method's scheme for AMXINT8 / AMXINT4). All or nothing, like load_weights."""
        with self._load_lock:
            load_from_tensors(self.engine, self.config, self.scheme, gate, up, down, physical_to_logical_map)

    def resident_bytes_per_expert(self) -> int:
        """Memory the engine holds for one expert's weights (all tensor-parallel slices; scales and
        alignment included)."""
        return self.engine.resident_bytes_per_expert

    # ---- experts on the GPU ----------------------------------------------------------------

    def set_gpu_experts_mask(self, mask: Optional[torch.Tensor]) -> None:
        """Which experts live on the GPU: mask bool [num_experts], True = on the GPU (its slots
        contribute nothing here); None restores the experts [0, num_gpu_experts). Applies to the
        forwards submitted afterwards."""
        if mask is None:
            self.engine.set_gpu_experts(None)
            return
        check_tensor(mask, "gpu_experts_mask", (self.config.num_experts,), (torch.bool,), DEVICES)
        self.engine.set_gpu_experts(mask.cpu().tolist())

    @property
    def gpu_experts_mask(self) -> torch.Tensor:
        """bool [num_experts]: the experts whose slots are skipped (a copy)."""
        return torch.tensor(self.engine.gpu_experts, dtype=torch.bool)

    # ---- forward ---------------------------------------------------------------------------

    def forward(self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                cuda_stream=None, deferred_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """submit_forward() then sync_forward(): bf16 [q, H]."""
        if (deferred_ids is None and self._pending is None and self._deferred is None
                and self._engine_ready(hidden_states, topk_ids, topk_weights)):
            # One native call on the checked tensors' addresses; with nothing queued on the pool this
            # thread runs the forward itself.
            output = torch.empty_like(hidden_states)  # bf16 [q, H], contiguous like hidden_states
            self.engine.forward_task_at(*topk_ids.shape, topk_ids.data_ptr(), topk_weights.data_ptr(),
                                        hidden_states.data_ptr(), output.data_ptr())
            return output
        self.submit_forward(hidden_states, topk_ids, topk_weights, cuda_stream, deferred_ids)
        pending, self._pending = self._pending, None  # sync_forward less its check: this is the batch submitted
        return self._fetch(pending, cuda_stream)

    def submit_forward(self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                       cuda_stream=None, deferred_ids: Optional[torch.Tensor] = None) -> None:
        """Queue the forward on the worker pool and return (once CUDA inputs are in host memory).

        deferred_ids ([q, k] like topk_ids, -1 in the slots that are not deferred; see
        select_deferred_experts) queues the deferred experts' forward right behind this one, with
        the same topk_weights; fetch it with sync_deferred_forward().
        """
        if self._pending is not None:
            raise RuntimeError("submit_forward() called while a forward is pending: call sync_forward() first "
                               "(one forward at a time per wrapper)")
        if self._deferred is not None:
            raise RuntimeError("the previous forward's deferred experts were not fetched: call "
                               "sync_deferred_forward() first")
        if deferred_ids is None and self._engine_ready(hidden_states, topk_ids, topk_weights):
            self._pending = self._submit(topk_ids, topk_weights, hidden_states, device_transfer.CPU)
            return
        c = self.config
        k = c.num_experts_per_tok
        check_tensor(hidden_states, "hidden_states", (-1, c.hidden_size), FLOAT_DTYPES, DEVICES)
        q = hidden_states.shape[0]
        if q < 1:
            raise ValueError("hidden_states must hold at least one token")
        check_tensor(topk_ids, "topk_ids", (q, k), INDEX_DTYPES, DEVICES)
        check_tensor(topk_weights, "topk_weights", (q, k), FLOAT_DTYPES, DEVICES)
        others = [topk_ids, topk_weights]
        if deferred_ids is not None:
            others.append(check_tensor(deferred_ids, "deferred_ids", (q, k), INDEX_DTYPES, DEVICES))
        transfer = device_transfer.plan(hidden_states, others, cuda_stream)
        x = device_transfer.to_host(hidden_states, torch.bfloat16, transfer)
        ids = device_transfer.to_host(topk_ids, torch.int64, transfer)
        weights = device_transfer.to_host(topk_weights, torch.float32, transfer)
        deferred = None if deferred_ids is None else device_transfer.to_host(deferred_ids, torch.int64, transfer)
        device_transfer.host_ready(transfer)
        if deferred is not None:
            self._check_deferred(deferred, ids)
        self._pending = self._submit(ids, weights, x, transfer)
        if deferred is None:
            return
        try:
            self._deferred = self._submit(deferred, weights, x, transfer)
        except BaseException:  # e.g. a bad deferred id: leave nothing pending
            pending, self._pending = self._pending, None
            self.engine.sync_forward_task(pending.ticket)
            raise

    def sync_forward(self, hidden_states: torch.Tensor, cuda_stream=None) -> torch.Tensor:
        """Wait for the pending forward (GIL released) and return its output: bf16 [q, H] on the
        device of the submitted hidden_states (CPU with cpu_save), copied on cuda_stream when given
        (else on the submit's stream). hidden_states: the submitted batch (its shape is checked)."""
        if self._pending is None:
            raise RuntimeError("sync_forward() called without a pending forward: call submit_forward() first")
        q = self._pending.output.shape[0]
        check_tensor(hidden_states, "hidden_states", (q, self.config.hidden_size), FLOAT_DTYPES, DEVICES)
        pending, self._pending = self._pending, None
        return self._fetch(pending, cuda_stream)

    def sync_deferred_forward(self, cuda_stream=None) -> torch.Tensor:
        """Wait for the deferred experts queued by the last submit_forward(..., deferred_ids) and
        return their output (bf16 [q, H], placed like sync_forward's): added to the immediate
        output it gives the output of all the experts."""
        if self._deferred is None:
            raise RuntimeError("sync_deferred_forward() called without deferred experts pending: pass "
                               "deferred_ids to submit_forward() or forward() first")
        pending, self._deferred = self._deferred, None
        return self._fetch(pending, cuda_stream)

    def _engine_ready(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> bool:
        """Whether the batch goes to the engine as it is, past the checks and conversions: bf16, int64
        and fp32 CPU tensors that device_transfer.engine_ready takes, of the batch's shapes. The short
        way of a CPU caller: in a decode step each line of Python run here costs microseconds."""
        ready, c = device_transfer.engine_ready, self.config
        return (ready(x, torch.bfloat16) and ready(ids, torch.int64) and ready(weights, torch.float32)
                and x.dim() == 2 and x.shape[0] >= 1 and x.shape[1] == c.hidden_size
                and ids.shape == (x.shape[0], c.num_experts_per_tok) and weights.shape == ids.shape)

    def _submit(self, ids: torch.Tensor, weights: torch.Tensor, x: torch.Tensor, transfer: Transfer) -> _Pending:
        q, k = ids.shape
        output = device_transfer.host_output((q, self.config.hidden_size), transfer)
        return _Pending(self.engine.submit_forward_task(q, k, ids, weights, x, output), output, transfer)

    def _fetch(self, pending: _Pending, cuda_stream) -> torch.Tensor:
        self.engine.sync_forward_task(pending.ticket)
        if pending.transfer is device_transfer.CPU:
            return pending.output
        transfer = device_transfer.with_stream(pending.transfer, cuda_stream)
        return device_transfer.to_caller(pending.output, transfer, self.config.cpu_save)

    # ---- deferred experts ------------------------------------------------------------------

    def _check_deferred(self, deferred: torch.Tensor, ids: torch.Tensor) -> None:
        """At most max_deferred_experts_per_token deferred experts per token, in slots topk_ids leaves empty."""
        limit = self.config.max_deferred_experts_per_token or 0
        counts = (deferred != -1).sum(dim=1)
        if int(counts.max()) > limit:
            t = int(counts.argmax())
            raise ValueError(f"deferred_ids holds {int(counts[t])} experts for token {t}, more than "
                             f"max_deferred_experts_per_token ({limit})")
        both = ((deferred != -1) & (ids != -1)).nonzero()
        if both.numel():
            t, j = both[0].tolist()
            raise ValueError(f"topk_ids and deferred_ids both hold an expert in slot [{t}, {j}]: each slot runs "
                             "immediately or deferred (-1 in the other)")

    def select_deferred_experts(self, expert_ids: torch.Tensor, scores: torch.Tensor,
                                protected_k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Split each token's experts into (immediate_ids, deferred_ids), both shaped and typed like
        expert_ids [q, k] on its device, -1 in the slots the other one keeps.

        Per token the protected_k highest-scored experts stay immediate; of the other CPU experts
        the lowest-scored ones, at most max_deferred_experts_per_token (None counts as 0), are
        deferred; the rest stay immediate. -1 slots and GPU experts are never deferred. Ties keep
        the earlier slot immediate. scores: [q, k] float, the router's score of each slot.
        ValueError when an id is outside [-1, num_experts).
        """
        c = self.config
        k = c.num_experts_per_tok
        check_tensor(expert_ids, "expert_ids", (-1, k), INDEX_DTYPES, DEVICES)
        check_tensor(scores, "scores", tuple(expert_ids.shape), FLOAT_DTYPES, DEVICES)
        if isinstance(protected_k, bool) or not isinstance(protected_k, numbers.Integral) or not 0 <= protected_k <= k:
            raise ValueError(f"protected_k must be an integer in [0, {k}] (num_experts_per_tok), got {protected_k!r}")
        ids = expert_ids
        outside = (ids < -1) | (ids >= c.num_experts)
        if outside.any():
            t, j = outside.nonzero()[0].tolist()
            raise ValueError(f"expert_ids must be in [-1, {c.num_experts}) (expert slots, -1 for an empty slot), "
                             f"got {int(ids[t, j])} at [{t}, {j}]")
        # finite keys, so that the -inf given to the slots left out of a ranking sorts below all others
        score = torch.nan_to_num(scores.detach().to(device=ids.device, dtype=torch.float64), nan=0.0,
                                 posinf=1e300, neginf=-1e300)
        on_gpu = self.gpu_experts_mask.to(ids.device)[ids.clamp(0, c.num_experts - 1)]
        filled = ids != -1
        protected = _rank_descending(score, filled) < protected_k
        candidate = filled & ~on_gpu & ~protected
        # position from the bottom among the token's candidates (ties: the later slot is lower)
        from_bottom = candidate.sum(dim=1, keepdim=True) - 1 - _rank_descending(score, candidate)
        deferred = candidate & (from_bottom < (c.max_deferred_experts_per_token or 0))
        empty = torch.full_like(ids, -1)
        return torch.where(deferred, empty, ids), torch.where(deferred, ids, empty)


def _rank_descending(score: torch.Tensor, included: torch.Tensor) -> torch.Tensor:
    """Per row, each included entry's position when the row's included entries are sorted by score,
    highest first, ties in slot order (0 for the first); excluded entries come after them all."""
    order = score.masked_fill(~included, float("-inf")).argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(score.shape[1], device=score.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


class NativeMoEWrapper(AMXMoEWrapper):
    """FP8 and RAWINT4: experts kept in the quantized format big checkpoints ship (block or
    per-channel FP8; compressed-tensors pack-quantized INT4), one byte (FP8) or half a byte (INT4) per
    weight plus the scales, read through the engine's dequantizing products at every ISA level. The
    format's option (FP8's scale block side, RAWINT4's group size) is the checkpoint's in weight_path
    when its config.json has a quantization_config, else 128 (FP8) or 32 (RAWINT4); see
    docs/inference.md. The forward API is AMXMoEWrapper's."""

    def load_weights(self, physical_to_logical_map: torch.Tensor, verify_checksum: bool = True,
                     num_logical_experts: Optional[int] = None) -> None:
        """Read layer layer_idx from weight_path: a quantized checkpoint in place (mmap, one expert at
        a time; its scales and FP8 values checked), or a bf16 checkpoint quantized while loading.
        verify_checksum applies to kt-moe's own pre-quantized files only. All or nothing."""
        super().load_weights(physical_to_logical_map, verify_checksum, num_logical_experts)

    def load_weights_from_tensors(self, gate, up, down, physical_to_logical_map: torch.Tensor) -> None:
        """gate [E', I, H], up [E', I, H], down [E', H, I] (CPU; bf16, fp16, fp32 or fp64, finite),
        quantized online to the wrapper's format; or each the list of the format's parts stacked over
        the logical experts (FP8: [weight float8_e4m3fn [E', N, K], weight_scale_inv fp32 [E', ceil(N /
        b), ceil(K / b)]] or, per channel, weight_scale fp32 [E', N]; RAWINT4: [weight_packed int32 [E',
        N, K / 8], weight_scale bf16 [E', N, K / G]]), kept as they are. All or nothing."""
        super().load_weights_from_tensors(gate, up, down, physical_to_logical_map)


class GeneralMoEWrapper(AMXMoEWrapper):
    """MOE_INT8 and MOE_INT4: the portable integer methods. The experts keep the parts kt-moe
    quantizes them to (MOE_INT8: INT8 per output channel, as AMXINT8; MOE_INT4: INT4 in groups of 16
    inputs with a scale and a zero point, as AMXINT4) row-major, as stored: no packing for the CPU, so
    a `kt-moe convert` file loads the same everywhere. The products quantize the activations to int8
    (a scale per 64 inputs), multiply in integers and apply the scales in one fixed order, so the
    outputs are bit-identical at every ISA level (docs/inference.md). The API is AMXMoEWrapper's."""
