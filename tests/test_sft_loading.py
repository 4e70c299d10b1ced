"""load_weights of the SFT wrapper from Hugging Face checkpoints (DeepSeek and Mixtral naming, single
file and sharded): the same results as load_weights_from_tensors with the same map, the map
honoured on both paths, the right layer picked, and errors that name what is missing."""

import dataclasses
import re

import pytest
import torch

from hf_fixtures import expert_tensor_names, write_hf_checkpoint
from kt_moe.reference import random_experts
from sft_helpers import TINY, assert_close, make_layer, make_wrapper, step

SHAPE = TINY
E = SHAPE.num_experts
K = 2
LAYER = 1
MAPS = {
    "identity": list(range(E)),
    "permutation": [4, 0, 5, 2, 1, 3],
    "repeats": [3, 3, 0, 5, 5, 1],
}


def write_checkpoint(tmp_path, layer, scheme="deepseek", shards=1, dtype=torch.bfloat16, drop=()):
    """Layers 0, LAYER and 2 (different weights; LAYER holds `layer`'s experts)."""
    others = {i: random_experts(E, SHAPE.hidden, SHAPE.intermediate, seed=50 + i) for i in (0, 2)}
    layers = {0: others[0], LAYER: (layer.gate, layer.up, layer.down), 2: others[2]}
    directory = tmp_path / "ckpt"
    write_hf_checkpoint(str(directory), layers, scheme=scheme, dtype=dtype, shards=shards, drop=drop)
    return directory


def file_wrapper(directory, layer_idx=LAYER):
    return make_wrapper(SHAPE, top_k=K, layer_idx=layer_idx, weight_path=str(directory))


@pytest.mark.parametrize("scheme,shards,map_kind,dtype", [
    ("deepseek", 1, "identity", torch.bfloat16),
    ("deepseek", 1, "permutation", torch.bfloat16),
    ("deepseek", 3, "permutation", torch.bfloat16),
    ("deepseek", 2, "repeats", torch.float32),
    ("mixtral", 1, "permutation", torch.bfloat16),
    ("mixtral", 3, "permutation", torch.bfloat16),
    ("mixtral", 4, "repeats", torch.bfloat16),
])
def test_load_weights_matches_load_from_tensors(tmp_path, scheme, shards, map_kind, dtype):
    layer = make_layer(SHAPE, seed=shards, physical_map=torch.tensor(MAPS[map_kind]))
    directory = write_checkpoint(tmp_path, layer, scheme, shards, dtype)

    from_file = file_wrapper(directory)
    from_file.load_weights(layer.physical_map)
    from_file.init_lora_weights(*layer.lora)
    from_tensors = make_wrapper(SHAPE, top_k=K, layer_idx=LAYER)
    layer.load(from_tensors)

    batch = layer.batch(9, K, seed=shards)
    by_file, by_tensors = step(from_file, batch), step(from_tensors, batch)
    assert_close(by_file, by_tensors)
    assert_close(by_file, layer.reference(batch))  # the right layer, and the map honoured


# ---- errors ---------------------------------------------------------------------------------------

ANY_LOAD_ERROR = (FileNotFoundError, ValueError)


def test_empty_weight_path():
    wrapper = make_wrapper(SHAPE, top_k=K, weight_path="")
    with pytest.raises(ANY_LOAD_ERROR, match="weight_path"):
        wrapper.load_weights(torch.arange(E))


def test_missing_directory(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(ANY_LOAD_ERROR, match=re.escape(str(missing))):
        file_wrapper(missing).load_weights(torch.arange(E))


def test_directory_without_safetensors(tmp_path):
    (tmp_path / "README.md").write_text("not a checkpoint")
    with pytest.raises(ANY_LOAD_ERROR) as info:
        file_wrapper(tmp_path).load_weights(torch.arange(E))
    assert str(tmp_path) in str(info.value) or "safetensors" in str(info.value)


def test_layer_not_in_checkpoint(tmp_path):
    directory = write_checkpoint(tmp_path, make_layer(SHAPE))
    with pytest.raises(ANY_LOAD_ERROR) as info:
        file_wrapper(directory, layer_idx=5).load_weights(torch.arange(E))
    assert re.search(r"layers?\W{0,3}5\b|layer_idx\W{0,3}5\b", str(info.value)), str(info.value)


@pytest.mark.parametrize("scheme,shards", [("deepseek", 1), ("mixtral", 3)])
def test_missing_expert_tensor_is_named(tmp_path, scheme, shards):
    missing = expert_tensor_names(LAYER, 3, scheme)[1]  # expert 3's up projection
    directory = write_checkpoint(tmp_path, make_layer(SHAPE), scheme, shards, drop=[missing])
    with pytest.raises(ANY_LOAD_ERROR, match=re.escape(missing)):
        file_wrapper(directory).load_weights(torch.arange(E))


def test_checkpoint_with_fewer_experts(tmp_path):
    small = dataclasses.replace(SHAPE, num_experts=E - 2)
    directory = write_checkpoint(tmp_path, make_layer(small))
    with pytest.raises(ANY_LOAD_ERROR) as info:
        file_wrapper(directory).load_weights(torch.arange(E))
    message = str(info.value)
    assert re.search(rf"experts?\W{{0,3}}({E - 2}|{E - 1})\b", message) or "physical_to_logical_map" in message, message


@pytest.mark.parametrize("bad_map", [torch.arange(E - 1), torch.arange(E, dtype=torch.int32),
                                     torch.tensor([0, 1, 2, 3, 4, E])], ids=["short", "int32", "out_of_range"])
def test_bad_map(tmp_path, bad_map):
    directory = write_checkpoint(tmp_path, make_layer(SHAPE))
    with pytest.raises(ValueError, match="physical_to_logical_map"):
        file_wrapper(directory).load_weights(bad_map)
