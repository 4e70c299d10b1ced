"""The weight-format registry (native/formats/registry.cpp, docs/design.md section 5) as Python sees
it: one list of formats, the method -> format map every layer takes from it, part geometry that
matches what the quantizers return, and clear errors for a name, option or kernel family a format
does not have."""

import pytest
import torch

from kt_moe import _native
from kt_moe.quant import METHOD_SCHEMES, SCHEMES, int4_kgroup_scheme


def test_registry_lists_each_format_once_with_its_methods():
    entries = _native.weight_formats()
    assert [e["name"] for e in entries] == ["int8_channel", "int4_group16", "int4_kgroup"]
    methods = [m for e in entries for m in e["inference_methods"] + e["sft_methods"]]
    assert len(methods) == len(set(methods))
    assert METHOD_SCHEMES == {m: e["name"] for e in entries for m in e["inference_methods"] + e["sft_methods"]}


@pytest.mark.parametrize("scheme", [SCHEMES["int8_channel"], SCHEMES["int4_group16"], int4_kgroup_scheme(32, False),
                                    int4_kgroup_scheme(128, True)], ids=lambda s: f"{s.name}-{s.group_size}")
@pytest.mark.parametrize("n,k", [(1, 1), (5, 40), (24, 72), (16, 257)])
def test_part_geometry_matches_the_quantizer(scheme, n, k):
    parts = scheme.quantize(torch.randn(n, k, generator=torch.Generator().manual_seed(n * k)))
    specs = scheme.part_specs(n, k)
    assert [(tuple(p.shape), p.dtype) for p in parts] == list(specs.values())


def test_format_description():
    f = _native.weight_format("int4_kgroup", 64, True)
    assert (f["name"], f["group"], f["zero_point"]) == ("int4_kgroup", 64, True)
    assert [p["name"] for p in f["parts"]] == ["codes", "scale", "zero"]
    assert (f["quantized_gemm"], f["dequant_bf16"]) == (False, True)
    assert _native.weight_format("int8_channel")["parts"][1] == {
        "name": "scale", "dtype": "float32", "rows_per_unit": 1, "cols_per_unit": 0, "elems_per_unit": 1}


def test_unknown_names_options_and_families_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown format 'fp4' \(expected one of 'int8_channel', 'int4_group16', "
                                         r"'int4_kgroup'\)"):
        _native.weight_format("fp4")
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128 for AMXINT4_KGroup_SFT, got 16"):
        _native.weight_format("int4_kgroup", 16, True)
    with pytest.raises(ValueError, match="weight format int4_kgroup has no quantized GEMM kernels"):
        _native.quant_act_layout("int4_kgroup", 64)
