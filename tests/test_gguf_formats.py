"""The GGUF block formats of the registry (native/formats/gguf/) in the inference engine, one format
per matrix as a GGUF file stores them (MOEConfig.matrix_formats, the LLAMAFILE storage): blocks
quantized by gguf's own quantizer (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) or kt_moe.quant.gguf_kquants (Q4_K
and Q6_K, a Q4_K_M layer), kept as they are, and the engine's output against kt_moe.reference on
gguf's dequantization of the same blocks (the oracle), at every ISA level, one and two subpools
(I = 96: the second subpool's down slice starts inside a block), with few tokens (the few-rows
products) and 40 (the many-rows ones: lane groups of 16 rows and a partial one)."""

import gguf
import pytest
import torch
from gguf import GGMLQuantizationType as GGML

import kt_moe
from kt_moe import _native
from kt_moe.pool import shared_pool
from kt_moe.reference import moe_forward, random_routing, relative_l2
from kt_moe.weights.gguf_source import OWN_QUANTIZERS

E, H, I, K = 4, 128, 96, 2
LEGACY = (GGML.Q8_0, GGML.Q4_0, GGML.Q4_1, GGML.Q5_0, GGML.Q5_1)
MIXES = [(t, t, t) for t in LEGACY] + [(GGML.Q4_0, GGML.Q4_1, GGML.Q8_0), (GGML.Q5_1, GGML.Q5_0, GGML.Q4_0)]
LEVELS = kt_moe.cpu_info()["selectable"]
# Q8_0's, Q4_K's and Q6_K's products quantize the activations to int8 at avx2 and the AVX-512 levels
# (docs/inference.md).
INT8_ACTIVATION_LEVELS = {"avx2", "avx512", "avx512_bf16", "amx"}


def quantized_layer(types, seed=0, hidden=H, intermediate=I):
    """Per matrix (gate [E, I, H], up, down [E, H, I]): the blocks uint8 [E, rows, row bytes], by gguf's
    quantizer (kt_moe.quant.gguf_kquants for Q4_K and Q6_K, which it cannot quantize), and gguf's
    dequantization of them, fp32."""
    gen = torch.Generator().manual_seed(seed)
    shapes = ((E, intermediate, hidden), (E, intermediate, hidden), (E, hidden, intermediate))
    blocks, weights = [], []
    for shape, ggml_type in zip(shapes, types):
        values = (torch.randn(shape, generator=gen) * 0.02).numpy()
        quantize = OWN_QUANTIZERS.get(ggml_type.name, lambda v: gguf.quants.quantize(v, ggml_type))
        q = quantize(values)
        blocks.append(torch.from_numpy(q))
        weights.append(torch.from_numpy(gguf.quants.dequantize(q, ggml_type)).float())
    return blocks, weights


def engine(types, tp, hidden=H, intermediate=I):
    config = _native.MOEConfig(expert_num=E, hidden_size=hidden, intermediate_size=intermediate, experts_per_token=K,
                               tp_size=tp, chunked_prefill_size=64, method="LLAMAFILE",
                               matrix_formats=["gguf_" + t.name.lower() for t in types])
    return _native.TP_MOE(config, shared_pool(2, tp))


def forward(eng, blocks, q, hidden=H):
    """Loads the blocks' experts into eng and runs q random tokens: (x, ids, weights, out)."""
    eng.begin_load()
    for e in range(E):
        eng.load_quant_expert_task(e, *([b[e].contiguous()] for b in blocks))
    eng.commit_load()
    x = torch.randn(q, hidden, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    ids, weights_k = random_routing(q, E, K)
    out = torch.empty(q, hidden, dtype=torch.bfloat16)
    eng.sync_forward_task(eng.submit_forward_task(q, K, ids, weights_k.float(), x, out))
    return x, ids, weights_k, out


@pytest.mark.parametrize("types", MIXES, ids=lambda ts: "-".join(t.name for t in ts))
@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("q", [8, 40])
@pytest.mark.parametrize("isa_level", LEVELS, indirect=True)
def test_output_matches_the_reference_on_ggufs_dequantization(isa_level, q, types, tp):
    blocks, weights = quantized_layer(types)
    eng = engine(types, tp)
    x, ids, weights_k, out = forward(eng, blocks, q)
    expected = moe_forward(x.float(), ids, weights_k.float(), *weights)
    int8_activations = GGML.Q8_0 in types and isa_level in INT8_ACTIVATION_LEVELS
    assert relative_l2(out.float(), expected.float()) <= (3e-2 if int8_activations else 1e-2)
    assert eng.weight_format == ",".join("gguf_" + t.name.lower() for t in types) if len(set(types)) > 1 \
        else eng.weight_format == "gguf_" + types[0].name.lower()


@pytest.mark.parametrize("q", [3, 40])
@pytest.mark.parametrize("isa_level", LEVELS, indirect=True)
def test_k_quants_from_their_blocks(isa_level, q):
    """A Q4_K_M layer (Q4_K gate and up, Q6_K down) at H = I = 256: the K-quants' few-rows (3 tokens)
    and many-rows (40) products, with activations quantized to int8 at avx2 and the AVX-512 levels."""
    types = (GGML.Q4_K, GGML.Q4_K, GGML.Q6_K)
    blocks, weights = quantized_layer(types, hidden=256, intermediate=256)
    x, ids, weights_k, out = forward(engine(types, 1, hidden=256, intermediate=256), blocks, q, hidden=256)
    expected = moe_forward(x.float(), ids, weights_k.float(), *weights)
    assert relative_l2(out.float(), expected.float()) <= (3e-2 if isa_level in INT8_ACTIVATION_LEVELS else 1e-2)


def test_resident_bytes_are_the_blocks_bytes():
    types = (GGML.Q4_0, GGML.Q4_0, GGML.Q8_0)
    blocks, _ = quantized_layer(types)
    file_bytes = sum(b[0].numel() for b in blocks)
    assert file_bytes <= engine(types, 1).resident_bytes_per_expert <= file_bytes * 1.05


def test_blocks_of_the_wrong_shape_are_refused():
    blocks, _ = quantized_layer((GGML.Q8_0,) * 3)
    eng = engine((GGML.Q8_0,) * 3, 1)
    eng.begin_load()
    with pytest.raises(ValueError, match=r"gate blocks shape mismatch: expected \(96, 136\)"):
        eng.load_quant_expert_task(0, [blocks[0][0, :, :-2].contiguous()], [blocks[1][0]], [blocks[2][0]])


def test_llamafile_needs_three_formats():
    config = _native.MOEConfig(expert_num=E, hidden_size=H, intermediate_size=I, experts_per_token=K,
                               chunked_prefill_size=8, method="LLAMAFILE", matrix_formats=["gguf_q8_0"])
    with pytest.raises(ValueError, match="LLAMAFILE needs the formats of gate, up and down"):
        _native.TP_MOE(config, shared_pool(1, 1))
