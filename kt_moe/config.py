"""The operator's configuration: one frozen pydantic model, the only place parameters are validated.

`validate_config(**kwargs)` turns the KTMoEWrapper keyword arguments (spec 1.1) into a
`KTMoEConfig` or raises `ConfigError` (a ValueError) whose text starts with the documented message
of the first problem (spec 4); `config_errors(mapping)` lists every problem instead (the CLI).
Problems come in this order: mode, method, each parameter in the constructor's order, then the
rules that tie parameters together. `KTMoEConfig.to_native()` builds the read-only native config.
"""

from __future__ import annotations

import numbers
import os
import reprlib
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Optional, Sequence, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, ValidationError,
                      ValidationInfo, model_validator)
from pydantic_core import PydanticCustomError, PydanticKnownError

from kt_moe._native import MOEConfig, MOESFTConfig

# The spec's inference methods (1.2), then BF16: unquantized bf16 experts (AMXMoEWrapper).
INFERENCE_METHODS = ("AMXINT4", "AMXINT8", "RAWINT4", "FP8", "LLAMAFILE", "MOE_INT4", "MOE_INT8", "BF16")
# The spec's SFT methods (2.1), then AMXFP8_SFT: LoRA on an FP8 base read as the checkpoint ships it.
SFT_METHODS = ("AMXBF16_SFT", "AMXINT8_SFT", "AMXINT4_SFT", "AMXINT4_KGroup_SFT", "AMXFP8_SFT")
METHODS = {"inference": INFERENCE_METHODS, "sft": SFT_METHODS}
MODES = tuple(METHODS)

# Parameters that only one mode reads. In the other mode they are accepted at their default and
# ignored; any other value there is an error, since it would silently have no effect.
MODE_ONLY_PARAMETERS = {
    "inference": ("cpu_save", "max_deferred_experts_per_token"),
    "sft": ("lora_rank", "lora_alpha", "max_cache_depth"),
}
# The INT4 group choices: group_size values (inputs per INT4 scale) and the default (group_size
# None). AMXINT4 keeps its accurate groups of 16 by default; 64 and 128 store int4_kgroup, faster and
# smaller, less accurate (docs/quantization.md).
KGROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE, DEFAULT_ZERO_POINT = 128, True
AMXINT4_GROUP_SIZES = (16, 64, 128)
AMXINT4_DEFAULT_GROUP_SIZE = 16
METHOD_GROUP_SIZES = {"AMXINT4": (AMXINT4_GROUP_SIZES, AMXINT4_DEFAULT_GROUP_SIZE),
                      "AMXINT4_KGroup_SFT": (KGROUP_SIZES, DEFAULT_GROUP_SIZE)}
# Parameters that only some methods read; with the others the same rule holds.
METHOD_ONLY_PARAMETERS = {
    "group_size": tuple(METHOD_GROUP_SIZES),
    "zero_point": tuple(METHOD_GROUP_SIZES),
    "gguf_type": ("LLAMAFILE",),
}

INT32_MAX = 2**31 - 1  # the native configs hold 32-bit ints
FLOAT32_MAX = 3.4028234663852886e38  # and a 32-bit float lora_alpha

Mode = Literal[MODES]
Method = Literal[INFERENCE_METHODS + SFT_METHODS]
GroupSize = Optional[Literal[tuple(sorted(set(KGROUP_SIZES + AMXINT4_GROUP_SIZES)))]]
# The GGUF types LLAMAFILE quantizes weights given as tensors to (gguf_type: one for the three
# matrices, or "gate,up,down"); files are read in every type kt_moe.weights.gguf_source lists.
GGUF_QUANTIZE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K")


class ConfigError(ValueError):
    """Invalid operator parameters. str() is one line per problem, the first problem first;
    `errors` holds them as (parameter, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("\n".join(message for _, message in errors))


def _error(kind: str, message: str) -> PydanticCustomError:
    """A finished message (pydantic would substitute "{...}" again in any user text it holds)."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def _type_error(value: Any, info: ValidationInfo, expected: str) -> PydanticCustomError:
    return _error("strict_type", f"{info.field_name} must be {expected}, got {type(value).__name__}")


def _integer(value: Any, info: ValidationInfo) -> int:
    """Python and numpy integers; never bool, float or str."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _type_error(value, info, "an integer")
    return int(value)


def _optional_integer(value: Any, info: ValidationInfo) -> Optional[int]:
    return None if value is None else _integer(value, info)


def _number(value: Any, info: ValidationInfo) -> float:
    """int or float (numpy ones too); never bool or str."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _type_error(value, info, "a number")
    try:
        return float(value)
    except OverflowError:  # an int beyond any float
        raise PydanticKnownError("less_than_equal", {"le": FLOAT32_MAX}) if value > 0 else \
            PydanticKnownError("greater_than", {"gt": 0}) from None


def _bool(value: Any, info: ValidationInfo) -> bool:
    if not isinstance(value, bool):
        raise _type_error(value, info, "a bool")
    return value


def _gguf_type(value: Any, info: ValidationInfo) -> Optional[str]:
    """None, one type, or three comma-separated types (gate, up, down); upper case."""
    if value is None:
        return None
    types = value.upper().replace(" ", "").split(",") if isinstance(value, str) else []
    if len(types) not in (1, 3) or any(t not in GGUF_QUANTIZE_TYPES for t in types):
        raise _error("gguf_type", f"gguf_type must be None, one of {', '.join(GGUF_QUANTIZE_TYPES)} or three of them "
                                  f"as 'gate,up,down', got {value!r}")
    return ",".join(types)


def _group_size(value: Any, info: ValidationInfo) -> Optional[int]:
    """None (the method's default) or one of the method's group sizes (a method without the choice
    is judged by the method-only rule)."""
    if value is None:
        return None
    value = _integer(value, info)
    sizes, _ = METHOD_GROUP_SIZES.get(info.data.get("method"), (None, None))
    if sizes is not None and value not in sizes:
        raise _error("group_size", f"group_size must be one of {', '.join(map(str, sizes))} for "
                                   f"{info.data['method']}, got {value}")
    return value


def _path(value: Any, info: ValidationInfo) -> str:
    """str or os.PathLike, stored as str."""
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str):
        raise _type_error(value, info, "a string path")
    return path


def _mode(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str):
        raise _type_error(value, info, "a string")
    if value not in MODES:
        expected = " or ".join(f"'{mode}'" for mode in MODES)
        raise _error("unknown_mode", f"Unknown mode: '{value}'; expected {expected}")
    return value


def _method(value: Any, info: ValidationInfo) -> str:
    """Judged against the mode; with no valid mode there is nothing to judge it against."""
    if not isinstance(value, str):
        raise _type_error(value, info, "a string")
    mode = info.data.get("mode")
    if mode is not None and value not in METHODS[mode]:
        raise _error("unsupported_method", f"Method '{value}' not supported for mode '{mode}'; "
                                           f"supported: {', '.join(METHODS[mode])}")
    return value


Count = Annotated[int, Field(ge=1, le=INT32_MAX), BeforeValidator(_integer)]
Index = Annotated[int, Field(ge=0, le=INT32_MAX), BeforeValidator(_integer)]


class KTMoEConfig(BaseModel):
    """Every parameter of the KTMoEWrapper factory (spec 1.1), validated. Build it with
    `validate_config(**kwargs)` to get the documented ValueError (ConfigError) on bad input.

    mode and method come first because method's valid values depend on mode; the other fields
    follow the constructor's order."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, use_attribute_docstrings=True)

    mode: Annotated[Mode, PlainValidator(_mode, json_schema_input_type=Mode)] = "inference"
    """"inference" (frozen experts, forward only) or "sft" (LoRA fine-tuning of the experts)."""
    method: Annotated[Method, PlainValidator(_method, json_schema_input_type=Method)] = "AMXINT4"
    """Backend method (weight format and kernel family), one of the selected mode's methods
    (INFERENCE_METHODS or SFT_METHODS, spec 1.2)."""
    layer_idx: Index
    """Index of this MoE layer; selects the layer's weights."""
    num_experts: Count
    """Total routed experts of the layer (256 for DeepSeek-V3)."""
    num_experts_per_tok: Count
    """Experts chosen per token (top-k); at most num_experts."""
    hidden_size: Count
    """Hidden dimension (7168 for DeepSeek-V3)."""
    moe_intermediate_size: Count
    """Expert intermediate dimension (2048 for DeepSeek-V3); divisible by threadpool_count, since each
    subpool owns an equal slice of it."""
    num_gpu_experts: Index
    """Experts that live on the GPU and are skipped here (usually 0 for SFT); at most num_experts."""
    cpuinfer_threads: Count
    """CPU compute threads, all subpools together."""
    threadpool_count: Count
    """NUMA subpools (tensor-parallel parts); at most cpuinfer_threads."""
    weight_path: Annotated[str, BeforeValidator(_path)]
    """Directory holding the weights (str or os.PathLike, stored as str)."""
    chunked_prefill_size: Count
    """Most tokens one forward call takes (chunked prefill size)."""
    cpu_save: Annotated[bool, BeforeValidator(_bool)] = False
    """Inference only: keep results in CPU memory. With mode="sft" it must keep its default."""
    max_deferred_experts_per_token: Annotated[Optional[int], BeforeValidator(_optional_integer)] = None
    """Inference only: experts per token whose execution is deferred, None or 0..num_experts_per_tok.
    With mode="sft" it must keep its default."""
    lora_rank: Count = 16
    """SFT only: LoRA rank. With mode="inference" it must keep its default."""
    lora_alpha: Annotated[float, Field(gt=0, le=FLOAT32_MAX, allow_inf_nan=False),
                          BeforeValidator(_number)] = 32.0
    """SFT only: LoRA scaling factor (scale = lora_alpha / lora_rank). With mode="inference" it must
    keep its default."""
    max_cache_depth: Count = 1
    """SFT only: forwards saved for backward at once. With mode="inference" it must keep its default."""
    group_size: Annotated[GroupSize, PlainValidator(_group_size, json_schema_input_type=GroupSize)] = None
    """AMXINT4 and AMXINT4_KGroup_SFT only: inputs per INT4 scale. AMXINT4: 16 (int4_group16, the
    default), or 64 or 128 (int4_kgroup: faster and smaller, less accurate); AMXINT4_KGroup_SFT: 32,
    64 or 128 (default 128). None: the method's default. With other methods it must stay None."""
    zero_point: Annotated[bool, BeforeValidator(_bool)] = DEFAULT_ZERO_POINT
    """AMXINT4 and AMXINT4_KGroup_SFT only: a zero point per group (asymmetric INT4), or symmetric
    groups (AMXINT4 at group_size 64 or 128 only: its groups of 16 always have zero points). With
    other methods it must keep its default."""
    gguf_type: Annotated[Optional[str], BeforeValidator(_gguf_type)] = None
    """LLAMAFILE only: the GGUF type load_weights_from_tensors quantizes to (GGUF_QUANTIZE_TYPES), or
    three as "gate,up,down" (e.g. "Q4_K,Q4_K,Q6_K"); None: the types of the GGUF file in weight_path,
    or Q8_0 without one. With other methods it must keep its default."""

    @property
    def is_sft(self) -> bool:
        return self.mode == "sft"

    @model_validator(mode="after")
    def _cross_field_rules(self) -> KTMoEConfig:
        errors = self._cross_field_errors()
        if errors:
            raise PydanticCustomError("cross_field", "{message}",
                                      {"message": "\n".join(m for _, m in errors), "errors": errors})
        return self

    def _cross_field_errors(self) -> list[tuple[str, str]]:
        k, deferred = self.num_experts_per_tok, self.max_deferred_experts_per_token
        rules = [
            ("num_experts_per_tok", k <= self.num_experts,
             f"num_experts_per_tok ({k}) must not exceed num_experts ({self.num_experts})"),
            ("moe_intermediate_size", self.moe_intermediate_size % self.threadpool_count == 0,
             f"moe_intermediate_size ({self.moe_intermediate_size}) must be divisible by "
             f"threadpool_count ({self.threadpool_count})"),
            ("num_gpu_experts", self.num_gpu_experts <= self.num_experts,
             f"num_gpu_experts ({self.num_gpu_experts}) must not exceed num_experts ({self.num_experts})"),
            ("threadpool_count", self.threadpool_count <= self.cpuinfer_threads,
             f"threadpool_count ({self.threadpool_count}) must not exceed "
             f"cpuinfer_threads ({self.cpuinfer_threads})"),
            ("max_deferred_experts_per_token", self.is_sft or deferred is None or 0 <= deferred <= k,
             f"max_deferred_experts_per_token must be between 0 and num_experts_per_tok ({k}), got {deferred}"),
        ]
        errors = [(name, message) for name, ok, message in rules if not ok]
        for mode, names in MODE_ONLY_PARAMETERS.items():
            errors += [(name, f"{name} is only used with mode='{mode}' (got mode='{self.mode}')")
                       for name in names if mode != self.mode and not self._is_default(name)]
        for name, methods in METHOD_ONLY_PARAMETERS.items():
            if self.method not in methods and not self._is_default(name):
                allowed = " or ".join(f"'{m}'" for m in methods)
                errors.append((name, f"{name} is only used with method={allowed} (got method='{self.method}')"))
        if self.method == "AMXINT4" and not self.zero_point and self.int4_group_size == AMXINT4_DEFAULT_GROUP_SIZE:
            errors.append(("zero_point", f"zero_point=False needs group_size 64 or 128 with method='AMXINT4' "
                                         f"(its groups of {AMXINT4_DEFAULT_GROUP_SIZE} always have zero points)"))
        return errors

    def _is_default(self, name: str) -> bool:
        return getattr(self, name) == type(self).model_fields[name].default

    @property
    def int4_group_size(self) -> Optional[int]:
        """The INT4 group size of AMXINT4 and AMXINT4_KGroup_SFT (group_size, or the method's
        default); None for the other methods."""
        if self.method not in METHOD_GROUP_SIZES:
            return None
        return METHOD_GROUP_SIZES[self.method][1] if self.group_size is None else self.group_size

    @property
    def quant_options(self) -> dict:
        """The options of the method's quantization scheme (kt_moe.quant.scheme_for_method's
        keywords): group_size (int4_group_size: the method's default when group_size is None) and
        zero_point for AMXINT4 and AMXINT4_KGroup_SFT, gguf_type for LLAMAFILE, none for the other
        methods."""
        options = {name: getattr(self, name) for name, methods in METHOD_ONLY_PARAMETERS.items()
                   if self.method in methods}
        if "group_size" in options:
            options["group_size"] = self.int4_group_size
        return options

    def to_native(self, format_option: Optional[int] = None, base_format: Optional[str] = None,
                  matrix_formats: Sequence[str] = ()) -> Union[MOEConfig, MOESFTConfig]:
        """The read-only native config: MOEConfig for inference, MOESFTConfig for sft. format_option:
        the option of the method's weight format that the checkpoint decides (FP8's scale block side,
        RAWINT4's group size; kt_moe.weights.checkpoint_formats), passed as group_size; base_format:
        the format an SFT base keeps because the checkpoint ships it (None: the method's own);
        matrix_formats: LLAMAFILE's registered format of gate, up and down."""
        common = dict(expert_num=self.num_experts, hidden_size=self.hidden_size,
                      intermediate_size=self.moe_intermediate_size, experts_per_token=self.num_experts_per_tok,
                      num_gpu_experts=self.num_gpu_experts, weight_path=self.weight_path,
                      layer_idx=self.layer_idx, tp_size=self.threadpool_count,
                      chunked_prefill_size=self.chunked_prefill_size, method=self.method)
        if self.is_sft:
            group_size = self.int4_group_size or DEFAULT_GROUP_SIZE
            return MOESFTConfig(**common, lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                                max_cache_depth=self.max_cache_depth,
                                group_size=group_size if format_option is None else format_option,
                                zero_point=self.zero_point and not base_format, base_format=base_format or "")
        # AMXINT4's groups of 16 are its format's own (0); 64 and 128 select int4_kgroup
        int4_groups = 0 if self.int4_group_size in (None, AMXINT4_DEFAULT_GROUP_SIZE) else self.int4_group_size
        return MOEConfig(**common, cpu_save=self.cpu_save,
                         max_deferred_experts_per_token=self.max_deferred_experts_per_token,
                         group_size=format_option or int4_groups, zero_point=bool(int4_groups) and self.zero_point,
                         matrix_formats=list(matrix_formats))


def _describe(error: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One pydantic error as (parameter, documented message) pairs."""
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "cross_field":
        return ctx["errors"]
    name = str(error["loc"][0])
    if kind in ("extra_forbidden", "invalid_key"):
        return [(name, f"unknown parameter '{name}'")]
    if kind == "missing":
        return [(name, f"{name} is required")]
    if kind == "greater_than_equal":
        rule = "must be non-negative" if ctx["ge"] == 0 else "must be positive"
    elif kind == "greater_than":
        rule = "must be positive"
    elif kind == "less_than_equal":
        rule = f"must be at most {ctx['le']}"
    elif kind == "finite_number":
        rule = "must be finite"
    else:  # our own checks already spell the whole message
        return [(name, error["msg"])]
    return [(name, f"{name} {rule}, got {reprlib.repr(error['input'])}")]


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    return [problem for error in exc.errors() for problem in _describe(error)]


def validate_config(**kwargs: Any) -> KTMoEConfig:
    """The validated config for the factory's keyword arguments; ConfigError when any is invalid."""
    try:
        return KTMoEConfig.model_validate(kwargs)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None


def config_errors(data: Mapping[Any, Any]) -> list[tuple[str, str]]:
    """Every problem of a parameter mapping (e.g. a config file) as (parameter, message); [] if valid."""
    try:
        KTMoEConfig.model_validate(dict(data))
    except ValidationError as exc:
        return _problems(exc)
    return []
