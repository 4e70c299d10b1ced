"""LLAMAFILE (LlamafileMoEWrapper): a layer's experts read straight from a GGUF model as llama.cpp
writes it, kept in memory in their GGUF blocks, one format per matrix (kt_moe.weights.gguf_source),
multiplied through the engine's dequantizing products at every ISA level. The forward API is
AMXMoEWrapper's (docs/inference.md, "LLAMAFILE")."""

from __future__ import annotations

import torch

from kt_moe.inference import AMXMoEWrapper
from kt_moe.weights.expert_source import load_all_or_nothing
from kt_moe.weights.gguf_source import (file_experts, gguf_layer, load_blocks_expert, matrix_types, native_formats,
                                        quantized_experts)


class LlamafileMoEWrapper(AMXMoEWrapper):
    """LLAMAFILE: GGUF experts. weight_path holding a GGUF model (a directory with one, its file, or
    a file of its split set): the layer's types and sizes are checked at construction against the
    file's metadata; load_weights reads the blocks in place. Without one, load_weights_from_tensors
    quantizes to gguf_type (Q8_0 by default). `gguf_types` says what each matrix is kept as."""

    def __init__(self, config):
        self._layer = gguf_layer(config)  # None: weight_path holds no GGUF model
        self.gguf_types = matrix_types(config, self._layer)  # gate, up, down
        super().__init__(config)

    def matrix_formats(self) -> tuple:
        return native_formats(self.gguf_types)

    def load_weights(self, physical_to_logical_map: torch.Tensor, verify_checksum: bool = True) -> None:
        """Read layer layer_idx's experts from the GGUF model in weight_path, one expert at a time; slot p
        gets logical expert physical_to_logical_map[p]. All or nothing. verify_checksum is not used
        (GGUF files carry no checksum)."""
        if self._layer is None:
            raise ValueError(f"weight_path: no GGUF model in {self.config.weight_path!r} (LLAMAFILE reads .gguf "
                             "files; load_weights_from_tensors quantizes weights given as tensors)")
        with self._load_lock:
            load_all_or_nothing(self.engine, file_experts(self._layer, self.config, physical_to_logical_map),
                                lambda expert: load_blocks_expert(self.engine, self.gguf_types, expert))

    def load_weights_from_tensors(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                                  physical_to_logical_map: torch.Tensor) -> None:
        """gate [E', I, H], up [E', I, H], down [E', H, I] (CPU; bf16, fp16, fp32 or fp64, finite), each
        expert quantized to the wrapper's GGUF types by gguf's quantizer (rows a multiple of the type's
        block, 32). All or nothing."""
        with self._load_lock:
            load_all_or_nothing(self.engine, quantized_experts(self.config, self.gguf_types, gate, up, down,
                                                               physical_to_logical_map),
                                lambda expert: load_blocks_expert(self.engine, self.gguf_types, expert))
