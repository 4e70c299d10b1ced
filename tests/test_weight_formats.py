"""The weight-format registry (native/formats/registry.cpp, docs/design.md section 5) as Python sees
it: one list of formats, the method -> format map every layer takes from it, part geometry that
matches what the quantizers return, and clear errors for a name, option or kernel family a format
does not have."""

import pytest
import torch

from kt_moe import _native
from kt_moe.quant import METHOD_SCHEMES, SCHEMES, int4_kgroup_scheme
from kt_moe.quant.schemes import fp8_scheme, int4_packed_scheme


def test_registry_lists_each_format_once_with_its_methods():
    entries = _native.weight_formats()
    gguf = ["gguf_" + t for t in ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k",
                                  "q5_k", "q6_k", "iq4_nl", "iq4_xs")]
    assert [e["name"] for e in entries] == ["int8_channel", "int4_group16", "int4_kgroup", "fp8", "int4_packed",
                                            "int8_rows", "int4_rows", *gguf]
    methods = [m for e in entries for m in e["inference_methods"] + e["sft_methods"]]
    assert len(methods) == len(set(methods))
    assert METHOD_SCHEMES == {m: e["name"] for e in entries for m in e["inference_methods"] + e["sft_methods"]}


@pytest.mark.parametrize("scheme", [SCHEMES["int8_channel"], SCHEMES["int4_group16"], int4_kgroup_scheme(32, False),
                                    int4_kgroup_scheme(128, True), fp8_scheme(128), fp8_scheme(16), fp8_scheme(0)],
                         ids=lambda s: f"{s.name}-{s.group_size}")
@pytest.mark.parametrize("n,k", [(1, 1), (5, 40), (24, 72), (16, 257)])
def test_part_geometry_matches_the_quantizer(scheme, n, k):
    parts = scheme.quantize(torch.randn(n, k, generator=torch.Generator().manual_seed(n * k)))
    specs = scheme.part_specs(n, k)
    assert [(tuple(p.shape), p.dtype) for p in parts] == list(specs.values())


@pytest.mark.parametrize("n,k", [(1, 32), (5, 64), (24, 96)])
def test_int4_packed_geometry_matches_the_quantizer(n, k):
    scheme = int4_packed_scheme(32)
    parts = scheme.quantize(torch.randn(n, k, generator=torch.Generator().manual_seed(n)))
    assert [(tuple(p.shape), p.dtype) for p in parts] == list(scheme.part_specs(n, k).values())


def test_format_description():
    f = _native.weight_format("int4_kgroup", 64, True)
    assert (f["name"], f["group"], f["zero_point"]) == ("int4_kgroup", 64, True)
    assert [p["name"] for p in f["parts"]] == ["codes", "scale", "zero"]
    assert (f["quantized_gemm"], f["dequant_bf16"]) == (True, True)  # AMXINT4's group_size 64
    assert _native.weight_format("int4_kgroup", 32, False)["quantized_gemm"] is False
    assert _native.weight_format("int8_channel")["parts"][1] == {
        "name": "scale", "dtype": "float32", "rows_per_unit": 1, "cols_per_unit": 0, "elems_per_unit": 1}


def test_unknown_names_options_and_families_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown format 'fp4' \(expected one of 'int8_channel', 'int4_group16', "
                                         r"'int4_kgroup', 'fp8', 'int4_packed', 'int8_rows', 'int4_rows', 'gguf_f32', .*'gguf_iq4_xs'\)"):
        _native.weight_format("fp4")
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128 for AMXINT4_KGroup_SFT, got 16"):
        _native.weight_format("int4_kgroup", 16, True)
    with pytest.raises(ValueError, match="weight format fp8 has no quantized GEMM kernels"):
        _native.quant_act_layout("fp8", 64)
    with pytest.raises(ValueError, match="int4_packed: the group size must be a power of two in"):
        _native.weight_format("int4_packed", 24)
    with pytest.raises(ValueError, match=r"fp8: the scale block side must be in \[1, 65536\]"):
        _native.weight_format("fp8", -1)
