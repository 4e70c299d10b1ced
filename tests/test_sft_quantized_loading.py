"""Loading the quantized SFT methods' bases: from tensors and from a Hugging Face checkpoint (both
quantized while loading) and from `kt-moe convert` files give bit-identical results (forward and
backward), with a permuted map and two subpools; AMXINT8_SFT / AMXINT4_SFT read the files of
AMXINT8 / AMXINT4 (one directory serves inference and SFT); a file of other settings is a clear
error; loading a base in the other form (bf16 vs quantized parts) is refused."""

import re

import pytest
import torch

from hf_fixtures import write_hf_checkpoint
from kt_moe.quant import scheme_for_method
from kt_moe.weights.convert import convert_checkpoint
from kt_moe.weights.prequantized import PrequantizedMismatchError
from sft_helpers import MAIN, TINY, build, make_layer, make_wrapper, step

K, LAYER = 6, 1
MAP = torch.tensor([3, 1, 4, 0, 9, 2, 6, 5, 8, 7])
METHODS = [  # (method, KTMoEWrapper options, the convert options that write its file)
    ("AMXINT8_SFT", {}, dict(method="AMXINT8")),
    ("AMXINT4_SFT", {}, dict(method="AMXINT4")),
    ("AMXINT4_KGroup_SFT", dict(group_size=64, zero_point=False),
     dict(method="AMXINT4_KGroup_SFT", group_size=64, zero_point=False)),
    ("AMXINT4_KGroup_SFT", {}, dict(method="AMXINT4_KGroup_SFT")),
]


def method_id(value):
    return ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None


def checkpoint(tmp_path, layer):
    return write_hf_checkpoint(tmp_path / "hf", {LAYER: (layer.gate, layer.up, layer.down)}, shards=2)


def results_equal(a, b):
    return torch.equal(a.out, b.out) and torch.equal(a.grad_input, b.grad_input) and \
        all(torch.equal(a.grads[name], b.grads[name]) for name in a.grads)


@pytest.mark.parametrize("method,options,convert", METHODS, ids=method_id)
def test_tensors_checkpoint_and_converted_file_agree(tmp_path, method, options, convert):
    layer = make_layer(MAIN, seed=5, physical_map=MAP)
    batch = layer.batch(9, K, seed=5)
    kwargs = dict(top_k=K, tp=2, layer_idx=LAYER, method=method, **options)
    from_tensors = make_wrapper(MAIN, **kwargs)
    layer.load(from_tensors)
    expected = step(from_tensors, batch)

    hf = checkpoint(tmp_path, layer)
    from_checkpoint = make_wrapper(MAIN, weight_path=str(hf), **kwargs)
    from_checkpoint.load_weights(layer.physical_map)
    from_checkpoint.init_lora_weights(*layer.lora)
    assert results_equal(step(from_checkpoint, batch), expected)

    out = tmp_path / "converted"
    convert_checkpoint(hf, out, **convert)
    from_file = make_wrapper(MAIN, weight_path=str(out), **kwargs)
    from_file.load_weights(layer.physical_map)
    from_file.init_lora_weights(*layer.lora)
    assert results_equal(step(from_file, batch), expected)


def test_sft_methods_convert_to_their_inference_methods_files(tmp_path):
    """`--method AMXINT8_SFT` writes the AMXINT8 file (and finds it already there)."""
    layer = make_layer(TINY)
    hf = checkpoint(tmp_path, layer)
    out = tmp_path / "converted"
    assert [r.action for r in convert_checkpoint(hf, out, "AMXINT8")] == ["written"]
    assert [r.action for r in convert_checkpoint(hf, out, "AMXINT8_SFT")] == ["skipped"]


@pytest.mark.parametrize("file_options,wrapper_options,differing", [
    (dict(group_size=64), dict(group_size=128), "group_size='64' (expected '128')"),
    (dict(zero_point=False), dict(zero_point=True), "zero_point='false' (expected 'true')"),
])
def test_kgroup_file_of_other_settings_is_refused(tmp_path, file_options, wrapper_options, differing):
    layer = make_layer(TINY)
    out = tmp_path / "converted"
    convert_checkpoint(checkpoint(tmp_path, layer), out, "AMXINT4_KGroup_SFT", **file_options)
    wrapper = make_wrapper(TINY, layer_idx=LAYER, weight_path=str(out), method="AMXINT4_KGroup_SFT",
                           **wrapper_options)
    with pytest.raises(PrequantizedMismatchError, match=re.escape(differing)):
        wrapper.load_weights(torch.arange(TINY.num_experts))


def test_file_of_another_method_is_refused(tmp_path):
    layer = make_layer(TINY)
    out = tmp_path / "converted"
    convert_checkpoint(checkpoint(tmp_path, layer), out, "AMXINT4")
    wrapper = make_wrapper(TINY, layer_idx=LAYER, weight_path=str(out), method="AMXINT8_SFT")
    with pytest.raises(PrequantizedMismatchError, match=re.escape("method='AMXINT4' (expected 'AMXINT8')")):
        wrapper.load_weights(torch.arange(TINY.num_experts))


def test_base_in_the_other_form_is_refused():
    int8, layer = build(TINY, method="AMXINT8_SFT")
    with pytest.raises(ValueError, match="^method AMXINT8_SFT stores its experts as int8_channel: load them as "
                                         "quantized parts, not bf16"):
        int8.engine.load_expert_task(0, layer.gate[0], layer.up[0], layer.down[0])
    bf16, _ = build(TINY)
    parts = scheme_for_method("AMXINT8_SFT").quantize(layer.gate[0])
    with pytest.raises(ValueError, match="^method AMXBF16_SFT stores its experts as bf16: load them with "
                                         "load_expert_task"):
        bf16.engine.load_quant_expert_task(0, list(parts), list(parts), list(parts))
    symmetric, _ = build(TINY, method="AMXINT4_KGroup_SFT", group_size=32, zero_point=False)
    codes, scale, zero = scheme_for_method("AMXINT4_KGroup_SFT", group_size=32, zero_point=True).quantize(layer.gate[0])
    with pytest.raises(ValueError, match=r"^gate must be given as \[codes, scale\] \(int4_kgroup\), got 3 tensors"):
        symmetric.engine.load_quant_expert_task(0, [codes, scale, zero], [codes, scale], [codes, scale])
    with pytest.raises(ValueError, match=r"^up scale shape mismatch: expected \(24, 2\), got \(24, 1\)"):
        symmetric.engine.load_quant_expert_task(0, [codes, scale], [codes, scale[:, :1].contiguous()],
                                                [codes, scale])
