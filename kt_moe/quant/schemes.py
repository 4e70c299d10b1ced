"""The quantization schemes by name, and which scheme each kt-moe method stores its experts in:
the table the converter, the pre-quantized file format and the engines look schemes up in.

A scheme turns one weight matrix W [N, K] (or a stack [E, N, K]) into named tensors (`parts`)
and back; `part_specs(N, K)` gives each part's shape and dtype, so a file can be checked against
the shapes a layer needs without reading any data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

from kt_moe.quant.int4_group32 import GROUP_SIZE, dequantize_int4_group32, int4_group32_parts, quantize_int4_group32
from kt_moe.quant.int8_channel import dequantize_int8_channel, int8_channel_parts, quantize_int8_channel

PartSpec = Tuple[Tuple[int, ...], torch.dtype]  # (shape, dtype) of one part for one matrix


@dataclass(frozen=True)
class QuantScheme:
    """One quantization scheme. group_size: inputs sharing a scale (0: the whole row, one scale per
    output channel). quantize() returns the parts in the order of part_specs(N, K), which maps each
    part's name to its (shape, dtype); dequantize() takes them in the same order and returns fp32
    [..., N, K] (K padded as the scheme says)."""

    name: str
    group_size: int
    quantize: Callable[[torch.Tensor], Tuple[torch.Tensor, ...]]
    dequantize: Callable[..., torch.Tensor]
    part_specs: Callable[[int, int], Dict[str, PartSpec]]

    @property
    def parts(self) -> Tuple[str, ...]:
        """The part names, in quantize()'s order."""
        return tuple(self.part_specs(1, 1))


SCHEMES: Dict[str, QuantScheme] = {scheme.name: scheme for scheme in (
    QuantScheme("int8_channel", 0, quantize_int8_channel, dequantize_int8_channel, int8_channel_parts),
    QuantScheme("int4_group32", GROUP_SIZE, quantize_int4_group32, dequantize_int4_group32, int4_group32_parts),
)}

# method -> the scheme its experts are stored in
METHOD_SCHEMES: Dict[str, str] = {"AMXINT8": "int8_channel", "AMXINT4": "int4_group32"}


def scheme_for_method(method: str) -> QuantScheme:
    """The scheme `method` stores its experts in; ValueError for a method without one."""
    if method not in METHOD_SCHEMES:
        raise ValueError(f"method '{method}' has no kt-moe quantization scheme; "
                         f"expected one of {', '.join(METHOD_SCHEMES)}")
    return SCHEMES[METHOD_SCHEMES[method]]
