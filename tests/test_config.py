"""KTMoEConfig: every parameter's rule with its documented message, strict types, mode and method,
the mode-only and method-only parameters, the frozen model, the native configs it builds and its
JSON Schema."""

import math
import pathlib

import numpy as np
import pytest

from kt_moe._native import MOEConfig, MOESFTConfig
from kt_moe.config import (INFERENCE_METHODS, METHOD_ONLY_PARAMETERS, MODE_ONLY_PARAMETERS, MODES, SFT_METHODS,
                           ConfigError, KTMoEConfig, config_errors, validate_config)

BASE = dict(layer_idx=3, num_experts=8, num_experts_per_tok=2, hidden_size=64, moe_intermediate_size=32,
            num_gpu_experts=1, cpuinfer_threads=4, threadpool_count=2, weight_path="/tmp/weights",
            chunked_prefill_size=128)
SFT = dict(BASE, mode="sft", method="AMXBF16_SFT")
KGROUP = dict(SFT, method="AMXINT4_KGroup_SFT")
REQUIRED = list(BASE)
OPTIONAL = dict(cpu_save=False, max_deferred_experts_per_token=None, method="AMXINT4", mode="inference",
                lora_rank=16, lora_alpha=32.0, max_cache_depth=1, group_size=None, zero_point=True, gguf_type=None)
INT_FIELDS = ["layer_idx", "num_experts", "num_experts_per_tok", "hidden_size", "moe_intermediate_size",
              "num_gpu_experts", "cpuinfer_threads", "threadpool_count", "chunked_prefill_size",
              "lora_rank", "max_cache_depth", "max_deferred_experts_per_token"]
POSITIVE = ["num_experts", "num_experts_per_tok", "hidden_size", "moe_intermediate_size", "cpuinfer_threads",
            "threadpool_count", "chunked_prefill_size", "lora_rank", "max_cache_depth"]
SFT_ONLY = {"lora_rank", "lora_alpha", "max_cache_depth"}


def error_of(**kwargs):
    with pytest.raises(ConfigError) as info:
        validate_config(**kwargs)
    assert isinstance(info.value, ValueError)
    return info.value


def base_for(field):
    """A valid config to change `field` in: SFT for the SFT-only parameters."""
    return SFT if field in SFT_ONLY else BASE


INVALID = [(name, value, f"{name} must be positive") for name in POSITIVE for value in (0, -1)] + [
    ("layer_idx", -1, "layer_idx must be non-negative"),
    ("num_gpu_experts", -1, "num_gpu_experts must be non-negative"),
    ("num_gpu_experts", 9, "num_gpu_experts (9) must not exceed num_experts (8)"),
    ("num_experts_per_tok", 9, "num_experts_per_tok (9) must not exceed num_experts (8)"),
    ("threadpool_count", 8, "threadpool_count (8) must not exceed cpuinfer_threads (4)"),
    ("threadpool_count", 3, "moe_intermediate_size (32) must be divisible by threadpool_count (3)"),
    ("moe_intermediate_size", 33, "moe_intermediate_size (33) must be divisible by threadpool_count (2)"),
    ("lora_alpha", 0.0, "lora_alpha must be positive"),
    ("lora_alpha", -1, "lora_alpha must be positive"),
    ("lora_alpha", math.nan, "lora_alpha must be finite"),
    ("lora_alpha", math.inf, "lora_alpha must be finite"),
    ("lora_alpha", -math.inf, "lora_alpha must be finite"),
    ("lora_alpha", 1e39, "lora_alpha must be at most"),
    ("lora_alpha", 10**400, "lora_alpha must be at most"),
    ("max_deferred_experts_per_token", -1,
     "max_deferred_experts_per_token must be between 0 and num_experts_per_tok (2), got -1"),
    ("max_deferred_experts_per_token", 3,
     "max_deferred_experts_per_token must be between 0 and num_experts_per_tok (2), got 3"),
    ("mode", "train", "Unknown mode: 'train'; expected 'inference' or 'sft'"),
    ("mode", "", "Unknown mode: ''"),
    ("method", "AMXBF16_SFT", "Method 'AMXBF16_SFT' not supported for mode 'inference'; supported: "
                              + ", ".join(INFERENCE_METHODS)),
    ("method", "amxint4", "Method 'amxint4' not supported for mode 'inference'"),
    ("weight_path", 3, "weight_path must be a string path, got int"),
    ("weight_path", b"/tmp", "weight_path must be a string path, got bytes"),
    ("cpu_save", 1, "cpu_save must be a bool, got int"),
    ("cpu_save", "yes", "cpu_save must be a bool, got str"),
    ("lora_alpha", "32", "lora_alpha must be a number, got str"),
    ("lora_alpha", True, "lora_alpha must be a number, got bool"),
    ("mode", 1, "mode must be a string, got int"),
    ("method", None, "method must be a string, got NoneType"),
] + [(name, 2**31, f"{name} must be at most 2147483647") for name in INT_FIELDS[:-1]]


@pytest.mark.parametrize("name,value,message", INVALID, ids=lambda x: repr(x)[:40])
def test_invalid_value_gives_documented_message(name, value, message):
    error = error_of(**{**base_for(name), name: value})
    assert str(error).startswith(message), str(error)
    assert error.errors[0][0] in (name, "moe_intermediate_size")


def test_spec_message_for_num_experts():
    assert str(error_of(**{**BASE, "num_experts": 0})) == "num_experts must be positive, got 0"


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize("value", [1.5, 2.0, "8", True, False, [1], np.float32(2)], ids=repr)
def test_integer_fields_are_strict(name, value):
    error = error_of(**{**base_for(name), name: value})
    assert str(error).startswith(f"{name} must be an integer, got {type(value).__name__}")


@pytest.mark.parametrize("name", INT_FIELDS[:-1])
def test_integer_fields_accept_numpy_integers(name):
    value = np.int64(2) if name != "layer_idx" else np.uint16(0)
    config = validate_config(**{**base_for(name), name: value})
    assert getattr(config, name) == value and type(getattr(config, name)) is int


def test_lora_alpha_accepts_int_and_numpy_float():
    assert validate_config(**SFT, lora_alpha=16).lora_alpha == 16.0
    assert type(validate_config(**SFT, lora_alpha=np.float32(8)).lora_alpha) is float


def test_weight_path_accepts_pathlike():
    assert validate_config(**{**BASE, "weight_path": pathlib.Path("/a/b")}).weight_path == "/a/b"


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_parameter_is_required(name):
    kwargs = dict(BASE)
    del kwargs[name]
    assert str(error_of(**kwargs)) == f"{name} is required"


def test_unknown_parameter():
    assert str(error_of(**BASE, num_expert=8)).startswith("unknown parameter 'num_expert'")


def test_defaults_match_spec():
    config = validate_config(**BASE)
    assert {name: getattr(config, name) for name in OPTIONAL} == OPTIONAL
    assert set(KTMoEConfig.model_fields) == set(REQUIRED) | set(OPTIONAL)
    assert [n for n in KTMoEConfig.model_fields if n not in ("mode", "method")] == \
        REQUIRED + [n for n in OPTIONAL if n not in ("mode", "method")]


@pytest.mark.parametrize("method", INFERENCE_METHODS)
def test_every_inference_method(method):
    config = validate_config(**BASE, method=method)
    assert config.method == method and not config.is_sft


@pytest.mark.parametrize("method", SFT_METHODS)
def test_every_sft_method(method):
    config = validate_config(**{**BASE, "num_gpu_experts": 0}, mode="sft", method=method, lora_rank=8,
                             lora_alpha=16.0, max_cache_depth=2)
    assert config.is_sft and (config.method, config.lora_rank, config.lora_alpha, config.max_cache_depth) == \
        (method, 8, 16.0, 2)


def test_inference_method_in_sft_mode_lists_sft_methods():
    message = str(error_of(**BASE, mode="sft", method="AMXINT4"))
    assert message == "Method 'AMXINT4' not supported for mode 'sft'; supported: " + ", ".join(SFT_METHODS)


def test_sft_mode_with_default_method_is_refused():
    assert str(error_of(**BASE, mode="sft")).startswith("Method 'AMXINT4' not supported for mode 'sft'")


def test_bad_mode_hides_method_error():
    error = error_of(**BASE, mode="training", method="NOPE")
    assert [field for field, _ in error.errors] == ["mode"]


def test_error_order_mode_method_fields_then_cross_field():
    error = error_of(**{**BASE, "mode": "bad", "hidden_size": 0, "num_experts": -1, "lora_rank": "x"})
    assert [field for field, _ in error.errors] == ["mode", "num_experts", "hidden_size", "lora_rank"]
    error = error_of(**{**BASE, "method": "X", "chunked_prefill_size": 0})
    assert [field for field, _ in error.errors] == ["method", "chunked_prefill_size"]
    error = error_of(**{**BASE, "num_gpu_experts": 9, "num_experts_per_tok": 9, "threadpool_count": 8,
                        "max_deferred_experts_per_token": 10, "lora_rank": 2})
    assert [field for field, _ in error.errors] == ["num_experts_per_tok", "num_gpu_experts", "threadpool_count",
                                                    "max_deferred_experts_per_token", "lora_rank"]
    assert str(error).splitlines() == [message for _, message in error.errors]


@pytest.mark.parametrize("name,value", [("lora_rank", 8), ("lora_alpha", 16.0), ("max_cache_depth", 2)])
def test_sft_only_parameter_refused_in_inference(name, value):
    message = str(error_of(**BASE, **{name: value}))
    assert message == f"{name} is only used with mode='sft' (got mode='inference')"


@pytest.mark.parametrize("name,value", [("cpu_save", True), ("max_deferred_experts_per_token", 0),
                                        ("max_deferred_experts_per_token", 99)])
def test_inference_only_parameter_refused_in_sft(name, value):
    message = str(error_of(**SFT, **{name: value}))
    assert message == f"{name} is only used with mode='inference' (got mode='sft')"


def test_mode_only_parameters_at_defaults_are_accepted_either_way():
    sft_defaults = {name: OPTIONAL[name] for name in MODE_ONLY_PARAMETERS["sft"]}
    inference_defaults = {name: OPTIONAL[name] for name in MODE_ONLY_PARAMETERS["inference"]}
    assert not validate_config(**BASE, **sft_defaults).is_sft
    assert validate_config(**SFT, **inference_defaults).is_sft
    assert validate_config(**BASE, lora_alpha=32).lora_alpha == 32.0
    assert set(MODE_ONLY_PARAMETERS) == set(MODES)


@pytest.mark.parametrize("group_size", [32, 64, 128, np.int64(64)])
@pytest.mark.parametrize("zero_point", [True, False])
def test_kgroup_parameters(group_size, zero_point):
    config = validate_config(**KGROUP, group_size=group_size, zero_point=zero_point)
    assert (config.group_size, config.zero_point) == (group_size, zero_point) and type(config.group_size) is int
    assert config.quant_options == dict(group_size=group_size, zero_point=zero_point)
    native = config.to_native()
    assert (native.group_size, native.zero_point) == (group_size, zero_point)


def test_kgroup_default_group_size():
    config = validate_config(**KGROUP)
    assert config.group_size is None and config.quant_options == dict(group_size=128, zero_point=True)
    assert (config.to_native().group_size, config.to_native().zero_point) == (128, True)


@pytest.mark.parametrize("group_size,zero_point,native", [
    (None, True, (0, False)), (16, True, (0, False)), (64, True, (64, True)), (64, False, (64, False)),
    (np.int64(128), True, (128, True)), (128, False, (128, False))])
def test_amxint4_group_parameters(group_size, zero_point, native):
    """AMXINT4 keeps int4_group16 (MOEConfig.group_size 0) at its default groups of 16; 64 and 128
    store int4_kgroup."""
    config = validate_config(**BASE, group_size=group_size, zero_point=zero_point)
    assert config.quant_options == dict(group_size=16 if group_size is None else group_size, zero_point=zero_point)
    assert (config.to_native().group_size, config.to_native().zero_point) == native


@pytest.mark.parametrize("config,name,value,message", [
    (KGROUP, "group_size", 16, "group_size must be one of 32, 64, 128 for AMXINT4_KGroup_SFT, got 16"),
    (KGROUP, "group_size", 256, "group_size must be one of 32, 64, 128 for AMXINT4_KGroup_SFT, got 256"),
    (KGROUP, "group_size", 0, "group_size must be one of 32, 64, 128 for AMXINT4_KGroup_SFT, got 0"),
    (BASE, "group_size", 32, "group_size must be one of 16, 64, 128 for AMXINT4, got 32"),
    (KGROUP, "group_size", 64.0, "group_size must be an integer, got float"),
    (BASE, "group_size", True, "group_size must be an integer, got bool"),
    (KGROUP, "group_size", "64", "group_size must be an integer, got str"),
    (KGROUP, "zero_point", 1, "zero_point must be a bool, got int"),
    (BASE, "zero_point", "no", "zero_point must be a bool, got str"),
    (BASE, "zero_point", False, "zero_point=False needs group_size 64 or 128 with method='AMXINT4' (its groups of "
                                "16 always have zero points)"),
])
def test_group_parameter_errors(config, name, value, message):
    error = error_of(**config, **{name: value})
    assert str(error) == message and error.errors[0][0] == name


@pytest.mark.parametrize("config", [SFT, dict(SFT, method="AMXINT8_SFT"), dict(SFT, method="AMXINT4_SFT"),
                                    dict(BASE, method="AMXINT8")],
                         ids=["AMXBF16_SFT", "AMXINT8_SFT", "AMXINT4_SFT", "AMXINT8"])
@pytest.mark.parametrize("name,value", [("group_size", 32), ("group_size", 128), ("zero_point", False)])
def test_group_parameters_refused_with_other_methods(config, name, value):
    message = str(error_of(**config, **{name: value}))
    assert message == (f"{name} is only used with method='AMXINT4' or 'AMXINT4_KGroup_SFT' "
                       f"(got method='{config['method']}')")


def test_group_parameters_at_defaults_are_accepted_with_other_methods():
    assert validate_config(**SFT, group_size=None, zero_point=True).quant_options == {}
    assert validate_config(**BASE, method="AMXINT8", group_size=None).quant_options == {}
    assert validate_config(**dict(SFT, method="AMXINT4_SFT")).to_native().group_size == 128  # MOESFTConfig's default
    assert METHOD_ONLY_PARAMETERS == {"group_size": ("AMXINT4", "AMXINT4_KGroup_SFT"),
                                      "zero_point": ("AMXINT4", "AMXINT4_KGroup_SFT"), "gguf_type": ("LLAMAFILE",)}


@pytest.mark.parametrize("value,expected", [(None, None), ("Q4_0", "Q4_0"), ("q8_0", "Q8_0"), ("Q6_K", "Q6_K"),
                                            ("q4_k, Q4_K,Q8_0", "Q4_K,Q4_K,Q8_0")])
def test_gguf_type(value, expected):
    config = validate_config(**BASE, method="LLAMAFILE", gguf_type=value)
    assert config.gguf_type == expected and config.quant_options == dict(gguf_type=expected)
    assert list(config.to_native(matrix_formats=["gguf_q8_0"] * 3).matrix_formats) == ["gguf_q8_0"] * 3


@pytest.mark.parametrize("value,message", [
    ("Q2_K", "gguf_type must be None, one of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K or three of "
             "them as 'gate,up,down', got 'Q2_K'"),
    ("Q4_K,Q8_0", "gguf_type must be None, one of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K or three "
                  "of them as 'gate,up,down', got 'Q4_K,Q8_0'"),
    (8, "gguf_type must be None, one of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K or three of them "
        "as 'gate,up,down', got 8"),
])
def test_gguf_type_errors(value, message):
    error = error_of(**BASE, method="LLAMAFILE", gguf_type=value)
    assert str(error) == message and error.errors[0][0] == "gguf_type"


def test_gguf_type_is_refused_with_other_methods():
    assert str(error_of(**BASE, gguf_type="Q8_0")) == "gguf_type is only used with method='LLAMAFILE' (got method='AMXINT4')"


def test_valid_inference_config():
    config = validate_config(**BASE, cpu_save=True, max_deferred_experts_per_token=2, method="MOE_INT8")
    assert (config.cpu_save, config.max_deferred_experts_per_token, config.method) == (True, 2, "MOE_INT8")
    assert validate_config(**BASE, max_deferred_experts_per_token=0).max_deferred_experts_per_token == 0


def test_boundaries_are_valid():
    validate_config(**{**BASE, "num_gpu_experts": 8, "num_experts_per_tok": 8, "threadpool_count": 4,
                       "layer_idx": 0, "num_experts": 8, "moe_intermediate_size": 2**31 - 4})
    validate_config(**SFT, lora_alpha=3.4e38)


def test_config_is_frozen():
    config = validate_config(**BASE)
    with pytest.raises(Exception):
        config.num_experts = 16
    assert config.num_experts == 8
    assert hash(config) == hash(validate_config(**BASE))


def test_inference_to_native():
    native = validate_config(**BASE, cpu_save=True, max_deferred_experts_per_token=1, method="AMXINT8").to_native()
    assert isinstance(native, MOEConfig)
    assert (native.expert_num, native.experts_per_token, native.hidden_size, native.intermediate_size,
            native.num_gpu_experts, native.weight_path, native.layer_idx, native.tp_size,
            native.chunked_prefill_size, native.method, native.cpu_save,
            native.max_deferred_experts_per_token) == (8, 2, 64, 32, 1, "/tmp/weights", 3, 2, 128, "AMXINT8", True, 1)
    assert validate_config(**BASE).to_native().max_deferred_experts_per_token is None


def test_sft_to_native():
    native = validate_config(**SFT, lora_rank=4, lora_alpha=8.0, max_cache_depth=3).to_native()
    assert isinstance(native, MOESFTConfig)
    assert (native.expert_num, native.experts_per_token, native.hidden_size, native.intermediate_size,
            native.weight_path, native.layer_idx, native.tp_size, native.chunked_prefill_size, native.method,
            native.lora_rank, native.lora_alpha, native.max_cache_depth) == \
        (8, 2, 64, 32, "/tmp/weights", 3, 2, 128, "AMXBF16_SFT", 4, 8.0, 3)


@pytest.mark.parametrize("config", [BASE, SFT], ids=["inference", "sft"])
def test_native_fields_are_read_only(config):
    native = validate_config(**config).to_native()
    for name in ("expert_num", "hidden_size", "intermediate_size", "tp_size", "method", "weight_path"):
        with pytest.raises(AttributeError):
            setattr(native, name, getattr(native, name))


def test_config_errors_lists_everything_and_empty_when_valid():
    assert config_errors(BASE) == []
    assert config_errors({**BASE, "num_experts": 0, 7: 1}) == [
        ("num_experts", "num_experts must be positive, got 0"), ("7", "unknown parameter '7'")]


def test_json_schema_describes_every_field():
    schema = KTMoEConfig.model_json_schema()
    properties = schema["properties"]
    assert set(properties) == set(REQUIRED) | set(OPTIONAL)
    assert set(schema["required"]) == set(REQUIRED)
    assert schema["additionalProperties"] is False
    assert all(prop.get("description") for prop in properties.values())
    assert properties["mode"]["enum"] == list(MODES)
    assert properties["method"]["enum"] == list(INFERENCE_METHODS + SFT_METHODS)
    assert properties["num_experts"]["minimum"] == 1 and properties["layer_idx"]["minimum"] == 0
    assert properties["lora_alpha"]["exclusiveMinimum"] == 0
    assert properties["group_size"]["anyOf"] == [{"enum": [16, 32, 64, 128], "type": "integer"}, {"type": "null"}]
    assert {name: properties[name]["default"] for name in OPTIONAL} == OPTIONAL


def test_braces_in_user_text_are_quoted_verbatim():
    assert str(error_of(**BASE, mode="{expected}")).startswith("Unknown mode: '{expected}'; expected")
    assert str(error_of(**BASE, method="{mode}")).startswith("Method '{mode}' not supported for mode 'inference'")
