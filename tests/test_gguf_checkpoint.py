"""GGUFExperts: one layer's experts of a GGUF model (files written by gguf_fixtures with gguf-py's
GGUFWriter): every supported ggml type read back byte for byte and dequantized as gguf-py does, mixed
types in a layer, split sets, the forms of weight_path, list_gguf_moe_layers, and every documented
error with its message (metadata and size mismatches, unsupported types, missing tensors and files,
damaged files)."""

import os
import re

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFEndian, GGUFWriter
from gguf.quants import dequantize

from gguf_fixtures import RANDOM_BLOCKS, random_blocks, write_gguf_layerset
from kt_moe.weights.gguf_checkpoint import GGUF_TYPES, GGUFExperts, list_gguf_moe_layers

E, H, I, K = 3, 512, 256, 2  # H != I: a transposed matrix shows; both whole K-quant blocks (256)
MATRICES = ("gate", "up", "down")
# ||dequantized - source|| / ||source|| allowed for the types written from weights (measured: F16
# 2e-4, BF16 1.7e-3, Q4_0 0.086, Q4_1 0.078, Q5_0 0.043, Q5_1 0.038, Q8_0 0.0054)
SOURCE_TOLERANCE = {"F32": 0.0, "F16": 1e-3, "BF16": 4e-3, "Q4_0": 0.12, "Q4_1": 0.12, "Q5_0": 0.06, "Q5_1": 0.06,
                    "Q8_0": 0.01}


def model(tmp_path, layers, name="model.gguf", **kwargs):
    return write_gguf_layerset(tmp_path / name, layers=layers, E=kwargs.pop("E", E), H=kwargs.pop("H", H),
                               I=kwargs.pop("I", I), k=K, **kwargs)


def rows_cols(matrix):
    return (I, H) if matrix != "down" else (H, I)


def test_gguf_types_come_from_gguf_py():
    assert list(GGUF_TYPES) == ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                                "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
    assert GGUF_TYPES["Q4_K"] == (256, 144) and GGUF_TYPES["Q8_0"] == (32, 34) and GGUF_TYPES["BF16"] == (1, 2)


@pytest.mark.parametrize("type_name", list(GGUF_TYPES))
def test_every_type_reads_back_its_bytes_and_values(tmp_path, type_name):
    written = model(tmp_path, {2: (type_name,) * 3})
    x = GGUFExperts.open(written.files[0], 2)
    assert (x.architecture, x.expert_count, x.expert_used_count, x.hidden, x.intermediate) == ("qwen3moe", E, K, H, I)
    assert x.types == dict.fromkeys(MATRICES, type_name)
    block, size = GGUF_TYPES[type_name]
    qtype = GGMLQuantizationType[type_name]
    for m in MATRICES:
        rows, cols = rows_cols(m)
        assert x.row_bytes(m) == cols // block * size
        source = written.source[2][m]
        for e in range(E):
            raw, values = x.raw(m, e), x.dequantized(m, e)
            assert raw.dtype == torch.uint8 and raw.is_contiguous() and tuple(raw.shape) == (rows, x.row_bytes(m))
            assert torch.equal(raw, written.raw[2][m][e])
            assert values.dtype == torch.float32 and tuple(values.shape) == (rows, cols)
            assert torch.equal(values, torch.from_numpy(np.array(dequantize(raw.numpy(), qtype))))
            assert torch.equal(values, written.weights[2][m][e])
            assert torch.isfinite(values).all()
            if source is None:  # random blocks: weights of the fixture's scale
                assert 0.005 < values.pow(2).mean().sqrt() < 0.08
            else:
                assert (values - source[e]).norm() <= SOURCE_TOLERANCE[type_name] * source[e].norm()


def test_raw_is_a_view_of_the_memory_map(tmp_path):
    x = GGUFExperts.open(model(tmp_path, {0: ("Q4_K", "Q4_K", "Q6_K")}).files[0], 0)
    for m in MATRICES:
        start = x.tensor(m).data.ctypes.data
        expert_bytes = rows_cols(m)[0] * x.row_bytes(m)
        assert [x.raw(m, e).data_ptr() - start for e in range(E)] == [e * expert_bytes for e in range(E)]


def test_mixed_types_in_a_layer(tmp_path):
    layers = {0: ("Q4_K", "Q4_K", "Q6_K"), 1: ("Q8_0", "IQ4_XS", "BF16"), 2: ("F16", "Q5_1", "Q3_K")}
    written = model(tmp_path, layers)
    for layer, types in layers.items():
        x = GGUFExperts.open(tmp_path, layer)
        assert x.types == dict(zip(MATRICES, types))
        for m in MATRICES:
            for e in range(E):
                assert torch.equal(x.raw(m, e), written.raw[layer][m][e])
                assert torch.equal(x.dequantized(m, e), written.weights[layer][m][e])


def test_split_set_read_from_any_of_its_files_or_the_directory(tmp_path):
    layers = {1: ("Q4_K", "Q4_K", "Q6_K"), 3: ("Q8_0", "Q5_0", "F16")}
    # 7 tensors (token_embd, then gate, up, down of each layer), 3 per file: each layer spans two files
    written = model(tmp_path, layers, split=3)
    assert [f.name for f in written.files] == [f"model-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    holders = {1: (0, 0, 1), 3: (1, 1, 2)}
    for weight_path in (tmp_path, *written.files):
        assert list_gguf_moe_layers(weight_path) == [1, 3]
        for layer in layers:
            x = GGUFExperts.open(weight_path, layer)
            assert x.files == list(written.files)
            assert [x.tensor_file(m) for m in MATRICES] == [written.files[i] for i in holders[layer]]
            for m in MATRICES:
                for e in range(E):
                    assert torch.equal(x.dequantized(m, e), written.weights[layer][m][e])


def test_split_set_errors(tmp_path):
    files = model(tmp_path, {1: ("Q8_0",) * 3, 3: ("Q8_0",) * 3}, split=3).files
    files[1].rename(tmp_path / "moved.gguf")
    with pytest.raises(FileNotFoundError) as info:
        GGUFExperts.open(files[0], 1)
    assert str(info.value) == f"{files[1]} not found: file 2 of the split set of {files[0]}"
    files[2].rename(files[1])  # file 3 under the name of file 2
    (tmp_path / "moved.gguf").rename(files[2])
    with pytest.raises(ValueError) as info:
        GGUFExperts.open(files[0], 1)
    assert str(info.value) == (f"{files[1]}: split.no is 2, but the file name says 1 (file 2 of a split set of 3)")
    files[0].rename(tmp_path / "single.gguf")  # file 1 of 3 under a name of its own
    with pytest.raises(ValueError, match="split.count is 3, but the file is named as a single file"):
        GGUFExperts.open(tmp_path / "single.gguf", 1)


def test_list_gguf_moe_layers(tmp_path):
    model(tmp_path, {5: ("Q8_0",) * 3, 0: ("Q4_0",) * 3, 2: ("Q8_0",) * 3}, drop=["blk.2.ffn_gate_exps.weight"])
    assert list_gguf_moe_layers(tmp_path) == [0, 2, 5]
    model(tmp_path / "dense", {}, name="dense.gguf")
    assert list_gguf_moe_layers(tmp_path / "dense" / "dense.gguf") == []


def test_weight_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF model not found: .* is neither a directory nor a file"):
        GGUFExperts.open(tmp_path / "nothing", 0)
    with pytest.raises(FileNotFoundError, match=re.escape(f"no .gguf file in {tmp_path}")):
        GGUFExperts.open(tmp_path, 0)
    model(tmp_path, {0: ("Q8_0",) * 3}, name="a.gguf")
    model(tmp_path, {0: ("Q8_0",) * 3, 1: ("Q8_0",) * 3}, name="b.gguf", split=2)
    with pytest.raises(ValueError) as info:
        GGUFExperts.open(tmp_path, 0)
    assert str(info.value) == (f"{tmp_path} holds 2 GGUF models (a.gguf, b-*-of-00002.gguf): pass the path of the "
                               "model's file (or of the first file of its split set) as weight_path")
    assert GGUFExperts.open(tmp_path / "a.gguf", 0).files == [tmp_path / "a.gguf"]


@pytest.mark.parametrize("key, value, message", [
    ("expert_count", 8, "blk.0.ffn_gate_exps.weight in {file} has shape [3, 256, 512] [E, I, H]: E is 3, "
                        "but qwen3moe.expert_count is 8"),
    ("embedding_length", 256, "blk.0.ffn_gate_exps.weight in {file} has shape [3, 256, 512] [E, I, H]: H is 512, "
                              "but qwen3moe.embedding_length is 256"),
    ("expert_feed_forward_length", 512, "blk.0.ffn_gate_exps.weight in {file} has shape [3, 256, 512] [E, I, H]: "
                                        "I is 256, but qwen3moe.expert_feed_forward_length is 512"),
    ("expert_used_count", 4, "{file}: qwen3moe.expert_used_count is 4, more than qwen3moe.expert_count (3)"),
    ("expert_used_count", None, "{file}: metadata key qwen3moe.expert_used_count missing"),
    ("embedding_length", "512", "{file}: metadata key qwen3moe.embedding_length must be an integer, got '512'"),
    ("expert_count", 0, "{file}: metadata key qwen3moe.expert_count must be at least 1, got 0"),
])
def test_metadata_that_disagrees_with_the_tensors(tmp_path, key, value, message):
    file = model(tmp_path, {0: ("Q8_0",) * 3}, metadata={f"qwen3moe.{key}": value}).files[0]
    with pytest.raises(ValueError) as info:
        GGUFExperts.open(file, 0)
    assert str(info.value) == message.format(file=file)


def test_feed_forward_length_when_there_is_no_expert_feed_forward_length(tmp_path):
    # Mixtral as convert_hf_to_gguf.py writes it: arch "llama", the experts' size in feed_forward_length
    meta = {"llama.expert_feed_forward_length": None, "llama.feed_forward_length": I}
    x = GGUFExperts.open(model(tmp_path, {0: ("Q4_K",) * 3}, arch="llama", metadata=meta).files[0], 0)
    assert (x.architecture, x.intermediate, x.size_keys["intermediate"]) == ("llama", I, "llama.feed_forward_length")
    with pytest.raises(ValueError, match="llama.feed_forward_length is 256 but moe_intermediate_size is 128"):
        x.check_sizes(E, K, H, 128)
    file = model(tmp_path / "b", {0: ("Q4_K",) * 3}, arch="llama",
                 metadata={"llama.expert_feed_forward_length": None}).files[0]
    with pytest.raises(ValueError, match="metadata key llama.expert_feed_forward_length missing "
                                         r"\(and no llama.feed_forward_length either\)"):
        GGUFExperts.open(file, 0)


def test_check_sizes_names_every_differing_key_with_both_values(tmp_path):
    file = model(tmp_path, {0: ("Q8_0",) * 3}).files[0]
    x = GGUFExperts.open(file, 0)
    x.check_sizes(E, K, H, I)
    prefix = f"the GGUF model {file} does not match the layer: "
    cases = [((E + 1, K, H, I), "qwen3moe.expert_count is 3 but num_experts is 4"),
             ((E, 1, H, I), "qwen3moe.expert_used_count is 2 but num_experts_per_tok is 1"),
             ((E, K, 256, I), "qwen3moe.embedding_length is 512 but hidden_size is 256"),
             ((E, K, H, 512), "qwen3moe.expert_feed_forward_length is 256 but moe_intermediate_size is 512")]
    for sizes, message in cases:
        with pytest.raises(ValueError) as info:
            x.check_sizes(*sizes)
        assert str(info.value) == prefix + message
    with pytest.raises(ValueError) as info:
        x.check_sizes(E + 1, 1, 256, 512)
    assert str(info.value) == prefix + "; ".join(message for _, message in cases)


@pytest.mark.parametrize("type_name", ["TQ1_0", "IQ2_XXS"])
def test_unsupported_type(tmp_path, type_name):
    file = model(tmp_path, {4: ("Q4_K", type_name, "Q6_K")}).files[0]
    with pytest.raises(ValueError) as info:
        GGUFExperts.open(file, 4)
    assert str(info.value) == (f"blk.4.ffn_up_exps.weight in {file}: ggml type {type_name} is not supported "
                               f"(expected one of {', '.join(GGUF_TYPES)})")


def test_missing_tensor(tmp_path):
    written = model(tmp_path, {0: ("Q8_0",) * 3, 1: ("Q8_0",) * 3}, drop=["blk.1.ffn_down_exps.weight"], split=2)
    files = ", ".join(map(str, written.files))
    with pytest.raises(ValueError) as info:
        GGUFExperts.open(tmp_path, 1)
    assert str(info.value) == (f"layer 1: blk.1.ffn_down_exps.weight not found in {files} "
                               "(layers with routed experts: 0, 1)")
    with pytest.raises(ValueError) as info:
        GGUFExperts.open(tmp_path, 7)
    assert str(info.value).startswith("layer 7: blk.7.ffn_gate_exps.weight, blk.7.ffn_up_exps.weight, "
                                      f"blk.7.ffn_down_exps.weight not found in {files}")


def damage(file, how):
    data = file.read_bytes()
    if how == "truncated":
        file.write_bytes(data[:len(data) - 1000])
    elif how == "header cut":
        file.write_bytes(data[:200])
    elif how == "not gguf":
        file.write_bytes(b"GGML" + data[4:])
    else:
        file.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "header cut", "not gguf", "empty"])
def test_damaged_file_is_named(tmp_path, how):
    files = model(tmp_path, {0: ("Q8_0",) * 3, 1: ("Q8_0",) * 3}, split=2).files
    damage(files[1], how)
    for call in (lambda: GGUFExperts.open(files[0], 0), lambda: list_gguf_moe_layers(tmp_path)):
        with pytest.raises(ValueError, match="^" + re.escape(f"{files[1]} is damaged: not a readable GGUF file (")):
            call()


def test_a_file_of_the_other_byte_order_is_refused(tmp_path):
    file = tmp_path / "big.gguf"
    writer = GGUFWriter(file, "qwen3moe", endianess=GGUFEndian.BIG)
    writer.add_tensor("token_embd.weight", np.zeros((2, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError) as info:
        list_gguf_moe_layers(file)
    assert str(info.value) == (f"{file} is a big-endian GGUF file; this machine is little-endian and reads only "
                               "files of its own byte order")


def test_a_rewritten_file_is_read_again(tmp_path):
    file = model(tmp_path, {0: ("Q8_0",) * 3}, seed=1).files[0]
    before = GGUFExperts.open(file, 0).dequantized("up", 1)
    stat = file.stat()
    written = model(tmp_path, {0: ("Q8_0",) * 3}, seed=2)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # a later mtime even on a coarse clock
    after = GGUFExperts.open(file, 0).dequantized("up", 1)
    assert torch.equal(after, written.weights[0]["up"][1]) and not torch.equal(after, before)


def test_bad_matrix_or_expert(tmp_path):
    x = GGUFExperts.open(model(tmp_path, {0: ("Q8_0",) * 3}).files[0], 0)
    with pytest.raises(ValueError, match=r"expert id 3 out of range \[0, 3\)"):
        x.raw("gate", E)
    with pytest.raises(ValueError, match=r"expert id -1 out of range \[0, 3\)"):
        x.dequantized("gate", -1)
    with pytest.raises(ValueError, match="matrix must be one of gate, up, down, got 'w1'"):
        x.raw("w1", 0)
    with pytest.raises(TypeError):
        x.raw("gate", 1.0)


def test_random_blocks_have_finite_moderate_scales():
    rng = np.random.default_rng(0)
    for type_name, (d_at, dmin_at) in RANDOM_BLOCKS.items():
        block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1]
        blocks = random_blocks(type_name, (8, 256), rng).reshape(-1, block_bytes)
        for at in (d_at, dmin_at):
            if at is not None:
                scales = blocks[:, at:at + 2].copy().view("<f2").astype(np.float32)
                assert np.isfinite(scales).all() and (scales > 0).all() and (scales < 0.01).all()
