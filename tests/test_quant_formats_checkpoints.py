"""Quantized checkpoint fixtures (tests/quant_checkpoints.py) and the libraries that define the
formats: the block-FP8 and Kimi-K2 INT4 writers lay checkpoints out as those models ship them
(names, dtypes, shapes, config.json, shards), and checkpoints written by compressed-tensors itself
(INT4 pack-quantized, FP8 per channel, FP8 per block) are reproduced bit for bit by kt_moe.quant's
quantizers and decoded by its dequantizers exactly as the library decompresses them; transformers'
block-FP8 quantizer agrees bit for bit with quantize_fp8_block.

The library tests import compressed-tensors (and with it transformers): about 3 s once per session,
most of this file's time; they are skipped where the test extra is not installed.
"""

import json
from types import SimpleNamespace

import pytest
import torch
from hf_fixtures import expert_tensor_names, random_layers
from quant_checkpoints import (LIBRARY_FORMATS, expert_matrices, fp8_block_quantization_config,
                               kimi_quantization_config, library_decompressed, read_checkpoint,
                               write_compressed_tensors_checkpoint, write_fp8_checkpoint,
                               write_int4_packed_checkpoint)
from safetensors import safe_open

from kt_moe.quant.fp8 import dequantize_fp8_block, dequantize_fp8_channel, quantize_fp8_block, quantize_fp8_channel
from kt_moe.quant.int4_packed import dequantize_int4_packed, pack_int4, quantize_int4_packed, unpack_int4

GROUP, BLOCK = 32, 48  # hidden 64 and intermediate 96: whole INT4 groups, partial FP8 blocks


def rel_error(approx, exact):
    return float((approx - exact.float()).norm() / exact.float().norm())


def header(directory):
    """{name: (safetensors dtype, shape)} of every tensor of a checkpoint, from the file headers."""
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                found[name] = (f.get_slice(name).get_dtype(), f.get_slice(name).get_shape())
    return found


def config(directory):
    return json.loads((directory / "config.json").read_text())


# ---- written here ----

@pytest.mark.parametrize("scheme,shards", [("deepseek", 1), ("mixtral", 3)])
def test_fp8_checkpoint_layout(tmp_path, scheme, shards):
    layers = random_layers([1, 3], experts=2, hidden=40, inter=24)
    directory = write_fp8_checkpoint(tmp_path, layers, block=16, scheme=scheme, shards=shards)
    found = header(directory)
    want = {}
    for module, w in expert_matrices(layers, scheme):
        n, k = w.shape
        want[f"{module}.weight"] = ("F8_E4M3", [n, k])
        want[f"{module}.weight_scale_inv"] = ("F32", [-(-n // 16), -(-k // 16)])
    assert found == want
    assert {"deepseek": "model.layers.3.mlp.experts.1.down_proj.weight_scale_inv",
            "mixtral": "model.layers.3.block_sparse_moe.experts.1.w2.weight_scale_inv"}[scheme] in found
    cfg = config(directory)
    assert cfg["quantization_config"] == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                          "weight_block_size": [16, 16]} == fp8_block_quantization_config(16)
    assert (cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["n_routed_experts"]) == (40, 24, 2)
    if shards > 1:
        index = json.loads((directory / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(want) and len(set(index["weight_map"].values())) == shards
    tensors = read_checkpoint(directory)
    for module, w in expert_matrices(layers, scheme):
        got = dequantize_fp8_block(tensors[f"{module}.weight"], tensors[f"{module}.weight_scale_inv"], 16)
        assert rel_error(got, w) < 0.03


def test_int4_packed_checkpoint_layout_is_kimis(tmp_path):
    layers = random_layers([0], experts=3, hidden=64, inter=96)
    directory = write_int4_packed_checkpoint(tmp_path, layers, group_size=GROUP, shards=2)
    found = header(directory)
    want = {}
    for e in range(3):
        for name, (n, k) in zip(expert_tensor_names(0, e), [(96, 64), (96, 64), (64, 96)]):
            module = name.removesuffix(".weight")
            want.update({f"{module}.weight_packed": ("I32", [n, k // 8]),
                         f"{module}.weight_scale": ("BF16", [n, k // GROUP]),
                         f"{module}.weight_shape": ("I64", [2])})
    assert found == want
    assert "model.layers.0.mlp.experts.2.down_proj.weight_packed" in found
    qc = config(directory)["quantization_config"]
    assert qc == kimi_quantization_config(GROUP)
    assert (qc["quant_method"], qc["format"]) == ("compressed-tensors", "pack-quantized")
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["type"], weights["strategy"], weights["group_size"], weights["symmetric"]) \
        == (4, "int", "group", GROUP, True)
    tensors = read_checkpoint(directory)
    for module, w in expert_matrices(layers):
        parts = (tensors[f"{module}.{p}"] for p in ("weight_packed", "weight_scale", "weight_shape"))
        assert rel_error(dequantize_int4_packed(*parts, group_size=GROUP), w) < 0.11


# ---- written by compressed-tensors ----

@pytest.fixture(scope="module")
def library_checkpoints(tmp_path_factory):
    """{fmt: (directory, layers)} of the three formats as compressed-tensors writes them."""
    pytest.importorskip("compressed_tensors")
    layers = random_layers([0, 2], experts=2, hidden=64, inter=96, seed=1)
    return {fmt: (write_compressed_tensors_checkpoint(tmp_path_factory.mktemp(fmt), layers, fmt, group_size=GROUP,
                                                      block=BLOCK, shards=2), layers)
            for fmt in LIBRARY_FORMATS}


def test_library_int4_packed_is_our_quantization_and_decoding(library_checkpoints):
    directory, layers = library_checkpoints["int4_packed"]
    qc = config(directory)["quantization_config"]
    assert (qc["quant_method"], qc["format"]) == ("compressed-tensors", "pack-quantized")
    tensors, decompressed = read_checkpoint(directory), library_decompressed(directory)
    for module, w in expert_matrices(layers):
        saved = tuple(tensors[f"{module}.{p}"] for p in ("weight_packed", "weight_scale", "weight_shape"))
        ours = quantize_int4_packed(w, GROUP)
        assert all(torch.equal(a, b) for a, b in zip(ours, saved)), module
        weight = dequantize_int4_packed(*saved, group_size=GROUP)
        assert decompressed[module].dtype == torch.bfloat16
        assert torch.equal(weight.to(torch.bfloat16), decompressed[module]), module  # the library rounds to bf16


def test_library_fp8_channel_is_our_quantization_and_decoding(library_checkpoints):
    directory, layers = library_checkpoints["fp8_channel"]
    qc = config(directory)["quantization_config"]
    assert qc["format"] == "float-quantized"
    assert qc["config_groups"]["group_0"]["weights"]["strategy"] == "channel"
    tensors, decompressed = read_checkpoint(directory), library_decompressed(directory)
    for module, w in expert_matrices(layers):
        weight, scale = tensors[f"{module}.weight"], tensors[f"{module}.weight_scale"]
        assert (scale.dtype, tuple(scale.shape)) == (torch.bfloat16, (w.shape[0], 1))
        ours = quantize_fp8_channel(w)
        assert torch.equal(ours[0].view(torch.uint8), weight.view(torch.uint8)) and torch.equal(ours[1], scale), module
        assert torch.equal(dequantize_fp8_channel(weight, scale).to(torch.bfloat16), decompressed[module]), module


def test_library_fp8_block_decodes_as_ours(library_checkpoints):
    """The block strategy (partial blocks here) stores bf16 multipliers as `weight_scale`; its
    quantizer (bf16 amax / 448) is not transformers' one, only the decoding is shared."""
    directory, layers = library_checkpoints["fp8_block"]
    assert config(directory)["quantization_config"]["config_groups"]["group_0"]["weights"]["block_structure"] \
        == [BLOCK, BLOCK]
    tensors, decompressed = read_checkpoint(directory), library_decompressed(directory)
    for module, w in expert_matrices(layers):
        weight, scale = tensors[f"{module}.weight"], tensors[f"{module}.weight_scale"]
        assert (scale.dtype, tuple(scale.shape)) == (torch.bfloat16, (-(-w.shape[0] // BLOCK), -(-w.shape[1] // BLOCK)))
        got = dequantize_fp8_block(weight, scale, BLOCK)
        assert torch.equal(got.to(torch.bfloat16), decompressed[module]), module
        assert rel_error(got, w) < 0.03


def test_library_reads_our_kimi_checkpoint(tmp_path):
    pytest.importorskip("compressed_tensors")
    layers = random_layers([1], experts=2, hidden=64, inter=32, seed=2)
    directory = write_int4_packed_checkpoint(tmp_path, layers, group_size=GROUP)
    tensors, decompressed = read_checkpoint(directory), library_decompressed(directory)
    for module, _ in expert_matrices(layers):
        parts = (tensors[f"{module}.{p}"] for p in ("weight_packed", "weight_scale", "weight_shape"))
        assert torch.equal(dequantize_int4_packed(*parts, group_size=GROUP).to(torch.bfloat16), decompressed[module])


def test_library_packing_helpers_agree_for_every_width():
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    g = torch.Generator().manual_seed(3)
    for k in range(1, 41):
        q = torch.randint(-8, 8, (3, k), generator=g, dtype=torch.int8)
        packed = helpers.pack_to_int32(q, 4)
        assert torch.equal(pack_int4(q), packed), k
        assert torch.equal(unpack_int4(packed, k), helpers.unpack_from_int32(packed, 4, torch.Size([3, k]))), k


def test_transformers_block_fp8_quantizer_agrees_bit_for_bit():
    """The op transformers' FineGrainedFP8 quantizer applies to each weight when it loads a bf16 model
    (it only quantizes on a GPU, and leaves weights the block does not divide unquantized)."""
    finegrained = pytest.importorskip("transformers.integrations.finegrained_fp8")
    from transformers import FineGrainedFP8Config

    w = (torch.randn(256, 384, generator=torch.Generator().manual_seed(4)) * torch.logspace(-4, 4, 384))
    w = w.to(torch.bfloat16)
    w[128:, :128] = 0
    for block in (128, 32):
        quantizer = SimpleNamespace(quantization_config=FineGrainedFP8Config(weight_block_size=(block, block)))
        ref = finegrained.Fp8Quantize(quantizer).convert({"w.weight": w})
        weight, scale_inv = quantize_fp8_block(w, block)
        assert torch.equal(weight.view(torch.uint8), ref["w.weight"].view(torch.uint8)), block
        assert torch.equal(scale_inv, ref["w.weight_scale_inv"]), block
