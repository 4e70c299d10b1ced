"""The quantization schemes by name, and which scheme each kt-moe method stores its experts in:
the table the converter, the pre-quantized file format and the engines look schemes up in.

A scheme turns one weight matrix W [N, K] (or a stack [E, N, K]) into named tensors (`parts`)
and back; `part_specs(N, K)` gives each part's shape and dtype, so a file can be checked against
the shapes a layer needs without reading any data. int8_channel and int4_group16 are fixed (as are
int8_rows and int4_rows, their parts under the names of the portable methods MOE_INT8 and MOE_INT4);
int4_kgroup (AMXINT4_KGroup_SFT) takes a group size and whether it has zero points.

The native weight-format registry (native/formats/registry.cpp, `_native.weight_formats()`) is
the one list of formats: which methods store which format and each format's part geometry come
from it; this module adds the pure-torch quantizer and dequantizer of each.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from kt_moe import _native
from kt_moe.config import DEFAULT_GROUP_SIZE, DEFAULT_ZERO_POINT, KGROUP_SIZES, METHOD_GROUP_SIZES
from kt_moe.quant.fp8 import dequantize_fp8_block, dequantize_fp8_channel, quantize_fp8_block, quantize_fp8_channel
from kt_moe.quant.int4_group16 import GROUP_SIZE, dequantize_int4_group16, quantize_int4_group16
from kt_moe.quant.int4_groups import dequantize_int4, quantize_int4
from kt_moe.quant.int4_packed import dequantize_int4_packed, quantize_int4_packed
from kt_moe.quant.int8_channel import dequantize_int8_channel, quantize_int8_channel

PartSpec = Tuple[Tuple[int, ...], torch.dtype]  # (shape, dtype) of one part for one matrix

_DTYPES = {"int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "float32": torch.float32, "float8_e4m3fn": torch.float8_e4m3fn}


def registry_part_specs(name: str, n: int, k: int, group_size: Optional[int] = None,
                        zero_point: Optional[bool] = None) -> Dict[str, PartSpec]:
    """Part name -> (shape, dtype) of W [n, k] in the registered format `name` with its options
    (None: the format's defaults; its geometry from _native.weight_format), in the format's part
    order."""
    specs = {}
    for p in _native.weight_format(name, group_size, zero_point)["parts"]:
        rows = -(-n // p["rows_per_unit"])
        shape = (rows,) if p["cols_per_unit"] == 0 else (rows, -(-k // p["cols_per_unit"]) * p["elems_per_unit"])
        specs[p["name"]] = (shape, _DTYPES[p["dtype"]])
    return specs


@dataclass(frozen=True)
class QuantScheme:
    """One quantization scheme. group_size: inputs sharing a scale (0: the whole row, one scale per
    output channel). zero_point: for a scheme that offers both, whether its groups have zero points
    (None: the scheme has no such choice). quantize() returns the parts in the order of
    part_specs(N, K), which maps each part's name to its (shape, dtype); dequantize() takes them in
    the same order and returns fp32 [..., N, K] (K padded as the scheme says). checks_finite: quantize()
    itself refuses NaN and infinity, with tensor_checks.non_finite_message("w") (the native INT4
    quantizer, which reads every value anyway): loaders skip their own pass over the weights."""

    name: str
    group_size: int
    quantize: Callable[[torch.Tensor], Tuple[torch.Tensor, ...]]
    dequantize: Callable[..., torch.Tensor]
    part_specs: Callable[[int, int], Dict[str, PartSpec]]
    zero_point: Optional[bool] = None
    checks_finite: bool = False

    @property
    def parts(self) -> Tuple[str, ...]:
        """The part names, in quantize()'s order."""
        return tuple(self.part_specs(1, 1))


SCHEMES: Dict[str, QuantScheme] = {scheme.name: scheme for scheme in (
    QuantScheme("int8_channel", 0, quantize_int8_channel, dequantize_int8_channel,
                functools.partial(registry_part_specs, "int8_channel")),
    QuantScheme("int4_group16", GROUP_SIZE, quantize_int4_group16, dequantize_int4_group16,
                functools.partial(registry_part_specs, "int4_group16"), checks_finite=True),
    # MOE_INT8 and MOE_INT4: the same parts, read in place by the portable integer products
    QuantScheme("int8_rows", 0, quantize_int8_channel, dequantize_int8_channel,
                functools.partial(registry_part_specs, "int8_rows")),
    QuantScheme("int4_rows", GROUP_SIZE, quantize_int4_group16, dequantize_int4_group16,
                functools.partial(registry_part_specs, "int4_rows"), checks_finite=True),
)}
KGROUP_SCHEME = "int4_kgroup"
FP8_SCHEME = "fp8"
INT4_PACKED_SCHEME = "int4_packed"

# method -> the scheme its experts are stored in (the registry's methods of each format; the
# inference methods first)
METHOD_SCHEMES: Dict[str, str] = {method: entry["name"] for kind in ("inference_methods", "sft_methods")
                                  for entry in _native.weight_formats() for method in entry[kind]}
# method -> the scheme its group_size choice stores when it is not the method's own format's group
# (AMXINT4 with group_size 64 or 128: int4_kgroup)
GROUPED_METHOD_SCHEMES: Dict[str, str] = {method: entry["name"] for entry in _native.weight_formats()
                                          for method in entry["grouped_inference_methods"]}


def int4_kgroup_scheme(group_size: int, zero_point: bool) -> QuantScheme:
    """int4_kgroup with `group_size` (32, 64 or 128) inputs per scale, asymmetric (zero_point) or
    symmetric (kt_moe.quant.int4_groups); ValueError for another group size."""
    if group_size not in KGROUP_SIZES or not isinstance(zero_point, bool):
        raise ValueError(f"{KGROUP_SCHEME} takes group_size in {KGROUP_SIZES} and a bool zero_point, "
                         f"got group_size={group_size!r}, zero_point={zero_point!r}")
    return QuantScheme(KGROUP_SCHEME, group_size,
                       functools.partial(quantize_int4, group_size=group_size, zero_point=zero_point),
                       functools.partial(dequantize_int4, group_size=group_size),
                       functools.partial(registry_part_specs, KGROUP_SCHEME, group_size=group_size,
                                         zero_point=zero_point), zero_point, checks_finite=True)


def _fp8_channel_quantize(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    weight, scale = quantize_fp8_channel(w)
    return weight, scale.float().squeeze(-1)  # the engine's part: fp32 [..., N] (exact from bf16)


def fp8_scheme(block: int) -> QuantScheme:
    """fp8 (FP8, AMXFP8_SFT; kt_moe.quant.fp8): blocks of block x block (DeepSeek-V3's
    weight_scale_inv, fp32), or with block 0 one fp32 scale per output row; ValueError for a
    negative or non-integer block."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 0:
        raise ValueError(f"{FP8_SCHEME} takes a block side >= 1 (or 0: a scale per output row), got {block!r}")
    specs = functools.partial(registry_part_specs, FP8_SCHEME, group_size=block)
    if block == 0:
        return QuantScheme(FP8_SCHEME, 0, _fp8_channel_quantize, dequantize_fp8_channel, specs)
    return QuantScheme(FP8_SCHEME, block, functools.partial(quantize_fp8_block, block=block),
                       functools.partial(dequantize_fp8_block, block=block), specs)


def int4_packed_scheme(group_size: int) -> QuantScheme:
    """int4_packed (RAWINT4; kt_moe.quant.int4_packed): compressed-tensors pack-quantized INT4 with
    `group_size` inputs per bf16 scale, as [weight_packed, weight_scale] (weight_shape left out)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 8 or group_size % 8:
        raise ValueError(f"{INT4_PACKED_SCHEME} takes a group_size that is a positive multiple of 8, got "
                         f"{group_size!r}")
    return QuantScheme(INT4_PACKED_SCHEME, group_size,
                       lambda w: quantize_int4_packed(w, group_size)[:2],
                       functools.partial(dequantize_int4_packed, group_size=group_size),
                       functools.partial(registry_part_specs, INT4_PACKED_SCHEME, group_size=group_size))


# the formats whose scheme takes one option (group_size: FP8's block side, the INT4 group size)
OPTION_SCHEMES: Dict[str, Callable[[int], QuantScheme]] = {FP8_SCHEME: fp8_scheme, INT4_PACKED_SCHEME: int4_packed_scheme}


def scheme_for_method(method: str, group_size: Optional[int] = None,
                      zero_point: Optional[bool] = None) -> QuantScheme:
    """The scheme `method` stores its experts in. group_size and zero_point are those of
    AMXINT4_KGroup_SFT (None: the config's defaults, 128 and True) and AMXINT4 (None, or 16 with
    zero points: int4_group16; 64 or 128: int4_kgroup, with zero points unless zero_point is False);
    group_size is FP8's and AMXFP8_SFT's scale block side (0: a scale per output row) and RAWINT4's
    inputs per scale (None: the registry's defaults, 128 and 32); the other methods take neither.
    ValueError for a method without a scheme or options it does not take."""
    if method not in METHOD_SCHEMES:
        raise ValueError(f"method '{method}' has no kt-moe quantization scheme; "
                         f"expected one of {', '.join(METHOD_SCHEMES)}")
    name = METHOD_SCHEMES[method]
    if method in GROUPED_METHOD_SCHEMES:
        sizes, own = METHOD_GROUP_SIZES[method]
        if group_size not in (None,) + sizes:
            raise ValueError(f"{method} takes group_size in {sizes}, got {group_size!r}")
        if group_size not in (None, own):
            return int4_kgroup_scheme(group_size, DEFAULT_ZERO_POINT if zero_point is None else zero_point)
        if zero_point is False:
            raise ValueError(f"{method} with groups of {own} has zero points: zero_point=False needs a group_size "
                             f"of {' or '.join(str(g) for g in sizes if g != own)}")
        return SCHEMES[name]
    if name == KGROUP_SCHEME:
        return int4_kgroup_scheme(DEFAULT_GROUP_SIZE if group_size is None else group_size,
                                  DEFAULT_ZERO_POINT if zero_point is None else zero_point)
    if name in OPTION_SCHEMES and zero_point is None:
        return OPTION_SCHEMES[name](_native.weight_format(name)["group"] if group_size is None else group_size)
    if group_size is not None or zero_point is not None:
        raise ValueError(f"group_size and zero_point are options of the INT4 group methods "
                         f"({', '.join(METHOD_GROUP_SIZES)}); method '{method}' stores {name}")
    return SCHEMES[name]
