"""load_weights of the BF16 inference wrapper from Hugging Face checkpoints (DeepSeek and Mixtral
naming, single file and sharded, bf16 and fp32 on disk): the same outputs as load_weights_from_tensors
with the same map, the map and layer honoured, and missing tensors named."""

import pytest
import torch

from hf_fixtures import expert_tensor_names, write_hf_checkpoint
from inference_helpers import TINY, assert_close, make_layer, make_wrapper
from kt_moe.reference import random_experts

E, K, LAYER = TINY.num_experts, 2, 1


def write_checkpoint(tmp_path, layer, scheme="deepseek", shards=1, dtype=torch.bfloat16, drop=()):
    """Layers 0, LAYER and 2 with different weights; LAYER holds `layer`'s experts."""
    layers = {i: random_experts(E, TINY.hidden, TINY.intermediate, seed=50 + i) for i in (0, 2)}
    layers[LAYER] = (layer.gate, layer.up, layer.down)
    return write_hf_checkpoint(str(tmp_path / "ckpt"), layers, scheme=scheme, dtype=dtype, shards=shards, drop=drop)


@pytest.mark.parametrize("scheme,shards,physical_map,dtype", [
    ("deepseek", 1, [4, 0, 5, 2, 1, 3], torch.bfloat16),
    ("deepseek", 3, [3, 3, 0, 5, 5, 1], torch.float32),
    ("mixtral", 2, [4, 0, 5, 2, 1, 3], torch.bfloat16),
])
def test_load_weights_matches_load_from_tensors(tmp_path, scheme, shards, physical_map, dtype):
    layer = make_layer(TINY, seed=shards, physical_map=torch.tensor(physical_map))
    directory = write_checkpoint(tmp_path, layer, scheme, shards, dtype)
    from_file = make_wrapper(TINY, top_k=K, layer_idx=LAYER, weight_path=str(directory))
    from_file.load_weights(layer.physical_map)
    from_tensors = make_wrapper(TINY, top_k=K)
    layer.load(from_tensors)
    batch = layer.batch(9, K, seed=shards)
    out = from_file.forward(*batch)
    assert torch.equal(out, from_tensors.forward(*batch))
    assert_close(out, layer.reference(*batch))


def test_missing_expert_is_named(tmp_path):
    layer = make_layer(TINY)
    missing = expert_tensor_names(LAYER, 3)[2]
    directory = write_checkpoint(tmp_path, layer, drop=[missing])
    wrapper = make_wrapper(TINY, top_k=K, layer_idx=LAYER, weight_path=str(directory))
    with pytest.raises(ValueError, match=f"1 expert tensor\\(s\\) missing for layer 1 .*{missing}"):
        wrapper.load_weights(torch.arange(E))
    assert not wrapper.engine.weights_loaded


def test_missing_directory(tmp_path):
    wrapper = make_wrapper(TINY, top_k=K, weight_path=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        wrapper.load_weights(torch.arange(E))


def test_reloading_replaces_the_weights():
    first, second = make_layer(TINY, seed=1), make_layer(TINY, seed=2)
    wrapper = make_wrapper(TINY, top_k=K)
    first.load(wrapper)
    second.load(wrapper)
    batch = second.batch(5, K)
    assert_close(wrapper.forward(*batch), second.reference(*batch))
