"""A wrapper with fewer slots than the stored layer has experts (an expert-parallel rank's share):
load_weights(map, num_logical_experts=E) reads the experts its map names from a Hugging Face
checkpoint or a `kt-moe convert` file, the same as load_weights_from_tensors of those experts;
without num_logical_experts the map is checked against the wrapper's own slots, as before."""

import dataclasses

import pytest
import torch

import inference_helpers
import sft_helpers
from load_helpers import E, H, I, K, LAYER, SFT_METHODS, forward, weights, write_checkpoint, write_converted
from kt_moe.reference import random_lora

SUBSET = torch.tensor([5, 1, 3])  # slot -> logical expert of the 6 stored
SLOTS = len(SUBSET)


def make_small(method: str, weight_path: str = ""):
    """A wrapper of `method` with SLOTS slots for layer LAYER, no weights loaded."""
    if method not in SFT_METHODS:
        shape = dataclasses.replace(inference_helpers.TINY, num_experts=SLOTS)
        return inference_helpers.make_wrapper(shape, top_k=K, layer_idx=LAYER, weight_path=weight_path, method=method)
    shape = dataclasses.replace(sft_helpers.TINY, num_experts=SLOTS)
    wrapper = sft_helpers.make_wrapper(shape, top_k=K, layer_idx=LAYER, weight_path=weight_path, method=method)
    wrapper.init_lora_weights(*random_lora(SLOTS, H, I, shape.rank, seed=3))
    return wrapper


@pytest.mark.parametrize("method,source", [("AMXINT4", "hf"), ("AMXINT4", "converted"), ("AMXBF16_SFT", "hf"),
                                           ("AMXINT8_SFT", "converted")])
def test_fewer_slots_than_the_stored_layer(tmp_path, method, source):
    layer = weights(1)
    directory = write_checkpoint(tmp_path, layer) if source == "hf" else write_converted(tmp_path, layer, method)
    subset = make_small(method, str(directory))
    subset.load_weights(SUBSET, num_logical_experts=E)
    from_tensors = make_small(method)
    from_tensors.load_weights_from_tensors(*layer, SUBSET)
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 2]]).repeat(2, 1)  # every slot
    inputs = (torch.randn(8, H, generator=gen).bfloat16(), ids, torch.rand(8, K, generator=gen))
    assert torch.equal(forward(subset, inputs), forward(from_tensors, inputs))
    with pytest.raises(ValueError, match=r"physical_to_logical_map\[0\] = 5 is out of range \[0, 3\)"):
        make_small(method, str(directory)).load_weights(SUBSET)
