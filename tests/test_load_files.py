"""Checks of the files load_weights reads: a pre-quantized (`kt-moe convert`) file's scales must be
finite and its checksum must match, verified while it is read unless load_weights(...,
verify_checksum=False); a damaged safetensors file (truncated, corrupt header), whether a checkpoint
shard or a pre-quantized file, is a ValueError naming the file."""

import re
import struct

import pytest
import torch

from load_helpers import (E, LAYER, MAP, QUANTIZED, batch, flip_byte, forward, make, overwrite, weight_part, weights,
                          write_checkpoint, write_converted)
from kt_moe.weights.convert import convert_checkpoint
from kt_moe.weights.prequantized import (PrequantizedCorruptError, PrequantizedLayerReader, checksum_order,
                                         layer_file)

NAN_SCALE = {"fp32": struct.pack("<f", float("nan")), "fp16": struct.pack("<e", float("inf"))}


def scale_value(method: str) -> bytes:
    """A non-finite scale in the dtype of `method`'s files: fp32 NaN (int8), fp16 infinity (int4)."""
    return NAN_SCALE["fp32" if "INT8" in method else "fp16"]


@pytest.mark.parametrize("verify_checksum", [True, False])
@pytest.mark.parametrize("method", QUANTIZED)
def test_a_non_finite_scale_is_refused(tmp_path, method, verify_checksum):
    directory = write_converted(tmp_path, weights(1), method)
    path = layer_file(directory, LAYER)
    overwrite(path, "experts.4.down.scale", scale_value(method), at=4)
    wrapper = make(method, str(directory))
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: experts.4.down.scale \\(down scale of expert 4\\) "
                                         "contains NaN or infinite values"):
        wrapper.load_weights(MAP, verify_checksum=verify_checksum)
    assert not wrapper.engine.weights_loaded


@pytest.mark.parametrize("method", ["AMXINT8", "AMXINT4_SFT"])
def test_a_flipped_weight_byte_fails_the_checksum_unless_opted_out(tmp_path, method):
    layer = weights(1)
    directory = write_converted(tmp_path, layer, method)
    inputs = batch()
    intact = make(method, str(directory))
    intact.load_weights(MAP)
    expected = forward(intact, inputs)
    path = layer_file(directory, LAYER)
    flip_byte(path, f"experts.{int(MAP[0])}.gate.{weight_part(method)}", at=3, bits=0x44)  # large enough to see
    wrapper = make(method, str(directory))
    with pytest.raises(PrequantizedCorruptError, match=f"^{re.escape(str(path))}: checksum mismatch"):
        wrapper.load_weights(MAP)
    assert not wrapper.engine.weights_loaded
    wrapper.load_weights(MAP, verify_checksum=False)  # the opt-out loads the damaged file as it is
    damaged = forward(wrapper, inputs)
    assert bool(torch.isfinite(damaged.float()).all())
    assert not torch.equal(damaged, expected)


def test_checksum_order_is_the_sorted_tensor_names(tmp_path):
    """The order verified_experts reads in gives the checksum of the file's sorted names."""
    experts = 12  # ids 10 and 11 sort between 1 and 2
    layer = tuple(torch.cat([w, w]) for w in weights(1))
    directory = write_converted(tmp_path, layer, "AMXINT8")
    assert checksum_order(experts) == [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    with PrequantizedLayerReader(directory, LAYER, experts, layer[0].shape[2], layer[0].shape[1], "AMXINT8") as reader:
        assert [e for e, _ in reader.verified_experts([11, 2, 2, 0])] == [0, 11, 2]
        reader.verify()


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_a_damaged_checkpoint_file_is_named(tmp_path, damage):
    directory = write_checkpoint(tmp_path / "hf", weights(1))
    path = directory / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[:-4] if damage == "truncated" else raw[:8] + b"#" + raw[9:])
    message = f"^{re.escape(str(path))} is damaged: not a readable safetensors file \\(Error while deserializing header"
    with pytest.raises(ValueError, match=message):
        make("BF16", str(directory)).load_weights(MAP)
    with pytest.raises(ValueError, match=message):
        convert_checkpoint(directory, tmp_path / "out", "AMXINT8")


def test_a_damaged_shard_is_named_among_several(tmp_path):
    directory = write_checkpoint(tmp_path / "hf", weights(1), shards=3)
    shard = directory / "model-00003-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:20])  # the header's length, then too few bytes for it
    with pytest.raises(ValueError, match=f"^{re.escape(str(shard))} is damaged: .*invalid header length"):
        make("AMXBF16_SFT", str(directory)).load_weights(MAP)


@pytest.mark.parametrize("method", ["AMXINT4", "AMXINT8_SFT"])
def test_a_damaged_prequantized_file_is_named(tmp_path, method):
    directory = write_converted(tmp_path, weights(1), method)
    path = layer_file(directory, LAYER)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(PrequantizedCorruptError, match=f"^{re.escape(str(path))} is damaged: not a readable "
                                                       "safetensors file"):
        make(method, str(directory)).load_weights(torch.arange(E))
