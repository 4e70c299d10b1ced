"""KTMoEWrapper factory: validation first, NotImplementedError for engines not built yet, the
backend class per method, the spec's mode-mismatch RuntimeErrors and shared worker pools."""

import pytest

import kt_moe
from kt_moe import wrapper
from kt_moe.config import INFERENCE_METHODS, SFT_METHODS
from kt_moe.inference import AMXMoEWrapper, BaseMoEWrapper, GeneralMoEWrapper, NativeMoEWrapper
from kt_moe.llamafile import LlamafileMoEWrapper
from kt_moe.sft import AMXSFTMoEWrapper, BaseSFTMoEWrapper

EXPECTED_CLASS = {
    "AMXINT4": AMXMoEWrapper, "AMXINT8": AMXMoEWrapper, "RAWINT4": NativeMoEWrapper,
    "FP8": NativeMoEWrapper, "LLAMAFILE": LlamafileMoEWrapper, "MOE_INT4": GeneralMoEWrapper,
    "MOE_INT8": GeneralMoEWrapper, "BF16": AMXMoEWrapper, "AMXBF16_SFT": AMXSFTMoEWrapper,
    "AMXINT8_SFT": AMXSFTMoEWrapper, "AMXINT4_SFT": AMXSFTMoEWrapper, "AMXINT4_KGroup_SFT": AMXSFTMoEWrapper,
    "AMXFP8_SFT": AMXSFTMoEWrapper,
}


def make(method, **overrides):
    kwargs = dict(layer_idx=0, num_experts=8, num_experts_per_tok=2, hidden_size=64,
                  moe_intermediate_size=32, num_gpu_experts=0, cpuinfer_threads=2, threadpool_count=1,
                  weight_path="", chunked_prefill_size=128, method=method,
                  mode="sft" if method in SFT_METHODS else "inference")
    kwargs.update(overrides)
    return kt_moe.KTMoEWrapper(**kwargs)


def test_every_spec_method_has_a_backend():
    assert set(wrapper.BACKENDS) == set(INFERENCE_METHODS) | set(SFT_METHODS) == set(EXPECTED_CLASS)


@pytest.mark.parametrize("method", sorted(EXPECTED_CLASS))
def test_validation_comes_before_everything(method):
    with pytest.raises(ValueError) as info:
        make(method, num_experts=0)
    assert str(info.value).startswith("num_experts must be positive")


def test_unknown_mode_and_method_messages():
    with pytest.raises(ValueError, match="^Unknown mode: 'train'"):
        make("AMXINT4", mode="train")
    with pytest.raises(ValueError, match="^Method 'AMXBF16_SFT' not supported"):
        make("AMXBF16_SFT", mode="inference")
    with pytest.raises(ValueError, match="^Method 'AMXINT4' not supported"):
        make("AMXINT4", mode="sft")


def test_backend_table():
    assert wrapper.BACKENDS == EXPECTED_CLASS


@pytest.mark.parametrize("method", sorted(EXPECTED_CLASS))
def test_backend_class_per_method(method):
    backend = make(method)
    assert type(backend) is EXPECTED_CLASS[method]
    base = BaseSFTMoEWrapper if method in SFT_METHODS else BaseMoEWrapper
    assert isinstance(backend, base)
    assert backend.config.method == method
    assert backend.native_config.method == method
    assert backend.isa == kt_moe.cpu_info()["active"]
    assert method in repr(backend)


def test_isa_is_the_level_the_kernels_use_now():
    backend = make("BF16")
    start = kt_moe.cpu_info()["active"]
    other = next(level for level in kt_moe.cpu_info()["selectable"] if level != start)
    try:
        kt_moe.set_isa(other)
        assert backend.isa == other and f"isa={other!r}" in repr(backend)
    finally:
        kt_moe.set_isa(start)
    assert backend.isa == start


@pytest.mark.parametrize("name", ["forward_sft", "backward", "init_lora_weights", "update_lora_weights"])
def test_sft_methods_on_inference_wrapper(name):
    backend = make("AMXINT4")
    with pytest.raises(RuntimeError, match=rf"^{name}\(\) not available in inference mode$"):
        getattr(backend, name)(None)


@pytest.mark.parametrize("name", ["forward", "submit_forward", "sync_forward", "select_deferred_experts"])
def test_inference_methods_on_sft_wrapper(name):
    backend = make("AMXBF16_SFT")
    with pytest.raises(RuntimeError, match=rf"^{name}\(\) not available in sft mode$"):
        getattr(backend, name)(None)


def test_spec_surface_present():
    for name in ("load_weights", "load_weights_from_tensors", "forward", "submit_forward", "sync_forward",
                 "select_deferred_experts"):
        assert callable(getattr(BaseMoEWrapper, name))
    for name in ("load_weights", "init_lora_weights", "forward_sft", "backward", "update_lora_weights"):
        assert callable(getattr(BaseSFTMoEWrapper, name))


def test_wrappers_with_same_thread_settings_share_a_pool():
    a, b = make("AMXINT8", layer_idx=0), make("AMXBF16_SFT", layer_idx=1)
    c = make("AMXINT8", cpuinfer_threads=1)
    assert a.pool is b.pool
    assert c.pool is not a.pool
    assert (a.pool.thread_count, a.pool.subpool_count) == (2, 1)


def test_backend_rejects_config_of_other_mode():
    config = make("AMXINT4").config
    with pytest.raises(ValueError, match="runs mode='sft'"):
        AMXSFTMoEWrapper(config)


def test_bad_isa_environment_fails_construction_clearly(run_python):
    code = ("import kt_moe\n"
            "try:\n"
            "    kt_moe.KTMoEWrapper(layer_idx=0, num_experts=8, num_experts_per_tok=2, hidden_size=64,\n"
            "        moe_intermediate_size=32, num_gpu_experts=0, cpuinfer_threads=1, threadpool_count=1,\n"
            "        weight_path='', chunked_prefill_size=16)\n"
            "except ValueError as e:\n"
            "    print('ERR', e)\n")
    out = run_python("-c", code, env={"KT_MOE_ISA": "nope"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERR KT_MOE_ISA: unknown ISA level 'nope'")


def test_sft_backend_built_directly_refuses_a_method_without_engine():
    """The SFT engine runs the four SFT methods; any other method (a config that skipped validation)
    is refused by the native engine."""
    config = make("AMXBF16_SFT").config.model_copy(update={"method": "AMXINT4"})
    with pytest.raises(ValueError, match="the SFT engine has no base format for method 'AMXINT4'"):
        AMXSFTMoEWrapper(config)
