"""Property tests: whatever the arguments, validate_config returns a KTMoEConfig or raises
ConfigError (a ValueError) with a message; never any other exception."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from kt_moe.config import INFERENCE_METHODS, MODES, SFT_METHODS, ConfigError, KTMoEConfig, config_errors, \
    validate_config

FIELDS = list(KTMoEConfig.model_fields)
METHODS = INFERENCE_METHODS + SFT_METHODS

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-2**70, max_value=2**70), st.integers(min_value=-2, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 1e39, 32.0]),
    st.text(max_size=8), st.sampled_from(MODES + METHODS), st.binary(max_size=4),
)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5)

plausible = st.fixed_dictionaries(
    {
        "layer_idx": st.integers(-1, 64), "num_experts": st.integers(-1, 300),
        "num_experts_per_tok": st.integers(-1, 16), "hidden_size": st.integers(-1, 8192),
        "moe_intermediate_size": st.integers(-1, 4096), "num_gpu_experts": st.integers(-1, 300),
        "cpuinfer_threads": st.integers(-1, 128), "threadpool_count": st.integers(-1, 8),
        "weight_path": st.text(max_size=10), "chunked_prefill_size": st.integers(-1, 32768),
    },
    optional={
        "cpu_save": st.booleans(), "max_deferred_experts_per_token": st.none() | st.integers(-1, 16),
        "method": st.sampled_from(METHODS), "mode": st.sampled_from(MODES), "lora_rank": st.integers(-1, 64),
        "lora_alpha": st.floats(-1, 64), "max_cache_depth": st.integers(-1, 4),
    },
)


@st.composite
def valid(draw):
    """Configs that follow every rule."""
    num_experts = draw(st.integers(1, 300))
    cpuinfer_threads = draw(st.integers(1, 128))
    threadpool_count = draw(st.integers(1, min(8, cpuinfer_threads)))
    k = draw(st.integers(1, num_experts))
    kwargs = dict(layer_idx=draw(st.integers(0, 2**31 - 1)), num_experts=num_experts, num_experts_per_tok=k,
                  hidden_size=draw(st.integers(1, 8192)),
                  moe_intermediate_size=threadpool_count * draw(st.integers(1, 512)),
                  num_gpu_experts=draw(st.integers(0, num_experts)), cpuinfer_threads=cpuinfer_threads,
                  threadpool_count=threadpool_count, weight_path=draw(st.text(max_size=10)),
                  chunked_prefill_size=draw(st.integers(1, 32768)))
    if draw(st.booleans()):
        return dict(kwargs, mode="sft", method=draw(st.sampled_from(SFT_METHODS)),
                    lora_rank=draw(st.integers(1, 64)), lora_alpha=draw(st.floats(1e-3, 1e3)),
                    max_cache_depth=draw(st.integers(1, 4)))
    return dict(kwargs, method=draw(st.sampled_from(INFERENCE_METHODS)), cpu_save=draw(st.booleans()),
                max_deferred_experts_per_token=draw(st.none() | st.integers(0, k)))


def check(kwargs):
    try:
        config = validate_config(**kwargs)
    except ConfigError as error:
        assert isinstance(error, ValueError)
        assert str(error) and error.errors
        assert str(error).startswith(error.errors[0][1])
        assert "validation error" not in str(error)
        assert config_errors(kwargs) == error.errors
        return None
    assert isinstance(config, KTMoEConfig)
    assert config_errors(kwargs) == []
    return config


@settings(max_examples=300, deadline=None)
@given(plausible, st.sampled_from(FIELDS), anything)
def test_any_value_in_any_field_is_accepted_or_a_config_error(kwargs, field, value):
    check({**kwargs, field: value})


@settings(max_examples=300, deadline=None)
@given(plausible)
def test_plausible_configs_are_accepted_or_a_config_error(kwargs):
    check(kwargs)


@settings(max_examples=300, deadline=None)
@given(valid())
def test_configs_that_follow_the_rules_validate_and_build_native_configs(kwargs):
    config = check(kwargs)
    assert config is not None
    assert {name: getattr(config, name) for name in kwargs} == kwargs
    native = config.to_native()
    assert (native.expert_num, native.experts_per_token, native.intermediate_size, native.tp_size, native.method) == \
        (config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size, config.threadpool_count,
         config.method)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), anything, max_size=8))
def test_random_mappings_are_accepted_or_a_config_error(kwargs):
    check(kwargs)
