"""Loads are all or nothing, for every built method: a load that fails half-way (NaN weights, a
missing tensor, a damaged file, a pre-quantized file failing its checksum after every expert was
read) leaves the previous weights in place, bit for bit, or the wrapper without weights; NaN and
infinity are refused everywhere, naming the matrix and the expert; weights of any float dtype
(float64 included) load; reloading while another thread forwards never mixes old and new experts."""

import re
import threading

import pytest
import torch

from load_helpers import (LAYER, MAP, METHODS, QUANTIZED, SFT_METHODS, batch, flip_byte, forward, load, make,
                          weight_part, weights, write_checkpoint, write_converted)
from hf_fixtures import expert_tensor_names
from kt_moe.weights.prequantized import layer_file


def poisoned(layer, matrix: int, expert: int, value: float):
    """A copy of layer with one weight of `matrix` (0 gate, 1 up, 2 down) of logical `expert` set to value."""
    layer = tuple(w.clone() for w in layer)
    layer[matrix][expert, 1, 2] = value
    return layer


def assert_unchanged(wrapper, inputs, expected):
    assert torch.equal(forward(wrapper, inputs), expected)
    assert wrapper.engine.staged_count == 0  # the failed load's experts were dropped


@pytest.mark.parametrize("method", METHODS)
def test_failed_loads_keep_the_previous_weights(tmp_path, method):
    a, b = weights(1), weights(2)
    inputs = batch()
    wrapper = make(method)
    load(wrapper, a)
    out_a = forward(wrapper, inputs)
    # the NaN sits in logical expert MAP[3]: slots 0-2 are staged before it is found
    with pytest.raises(ValueError, match=f"^up of expert {int(MAP[3])} contains NaN or infinite values"):
        load(wrapper, poisoned(b, 1, int(MAP[3]), float("nan")))
    assert_unchanged(wrapper, inputs, out_a)
    load(wrapper, b)  # a load after a failed one works
    out_b = forward(wrapper, inputs)
    assert not torch.equal(out_a, out_b)

    def failing_checkpoint(name: str, layer, shards: int, drop=()):
        """A wrapper holding weights a whose weight_path is a checkpoint of `layer`."""
        wrapper = make(method, str(write_checkpoint(tmp_path / name, layer, shards=shards, drop=drop)))
        load(wrapper, a)
        assert torch.equal(forward(wrapper, inputs), out_a)
        return wrapper

    missing = expert_tensor_names(LAYER, 4)[0]
    wrapper = failing_checkpoint("missing", b, 2, drop=[missing])
    with pytest.raises(ValueError, match=f"1 expert tensor\\(s\\) missing for layer {LAYER} .*{missing}"):
        wrapper.load_weights(MAP)
    assert_unchanged(wrapper, inputs, out_a)

    wrapper = failing_checkpoint("inf", poisoned(b, 2, int(MAP[4]), float("inf")), 2)
    down = expert_tensor_names(LAYER, int(MAP[4]))[2]
    with pytest.raises(ValueError, match=f"^down of expert {int(MAP[4])} \\({down} in .*model-0000.-of-00002"
                                         r"\.safetensors\) contains NaN or infinite values"):
        wrapper.load_weights(MAP)
    assert_unchanged(wrapper, inputs, out_a)

    wrapper = failing_checkpoint("truncated", b, 3)
    shard = tmp_path / "truncated" / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"^{re.escape(str(shard))} is damaged: not a readable safetensors file"):
        wrapper.load_weights(MAP)
    assert_unchanged(wrapper, inputs, out_a)


@pytest.mark.parametrize("method", QUANTIZED)
def test_checksum_failure_after_every_expert_keeps_the_previous_weights(tmp_path, method):
    """The checksum is known once the whole file is read, when every slot is staged."""
    a, b = weights(1), weights(2)
    inputs = batch()
    wrapper = make(method, str(write_converted(tmp_path, b, method)))
    load(wrapper, a)
    out_a = forward(wrapper, inputs)
    path = layer_file(tmp_path / "converted", LAYER)
    flip_byte(path, f"experts.2.up.{weight_part(method)}", at=7)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: checksum mismatch \\(the file is damaged\\)"):
        wrapper.load_weights(MAP)
    assert_unchanged(wrapper, inputs, out_a)


@pytest.mark.parametrize("method", METHODS)
def test_a_failed_first_load_leaves_no_weights(tmp_path, method):
    wrapper = make(method)
    with pytest.raises(ValueError, match=f"^gate of expert {int(MAP[5])} contains NaN"):
        load(wrapper, poisoned(weights(1), 0, int(MAP[5]), float("nan")))
    assert not wrapper.engine.weights_loaded
    assert wrapper.engine.staged_count == 0
    with pytest.raises(RuntimeError, match="^Weights not loaded"):
        forward(wrapper, batch())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("matrix,value", [(0, float("inf")), (1, float("-inf")), (2, float("nan"))])
def test_nan_and_infinity_are_refused_naming_the_matrix_and_expert(method, matrix, value):
    name = ("gate", "up", "down")[matrix]
    with pytest.raises(ValueError, match=f"^{name} of expert 3 contains NaN or infinite values"):
        load(make(method), poisoned(weights(1), matrix, 3, value))


def test_weights_that_overflow_bf16_are_refused():
    """fp32 / fp64 values beyond bf16's range become infinity when converted: refused like it."""
    layer = tuple(w.double() for w in weights(1))
    layer[2][1, 0, 0] = 1e300
    with pytest.raises(ValueError, match="^down of expert 1 contains NaN or infinite values"):
        load(make("BF16"), layer)


@pytest.mark.parametrize("method", METHODS)
def test_every_float_dtype_loads(method):
    layer = weights(1)  # bf16 values, exact in every dtype below
    inputs = batch()
    wrapper = make(method)
    load(wrapper, layer)
    expected = forward(wrapper, inputs)
    for dtype in (torch.float64, torch.float32, torch.float16):
        load(wrapper, tuple(w.to(dtype) for w in layer))
        assert torch.equal(forward(wrapper, inputs), expected), dtype
    with pytest.raises(ValueError, match="^gate must be bfloat16 or float16 or float32 or float64, got int32"):
        load(wrapper, (layer[0].int(), *layer[1:]))


@pytest.mark.parametrize("method", ["BF16", "AMXINT4", "AMXBF16_SFT", "AMXINT8_SFT"])
def test_reloading_while_another_thread_forwards_never_mixes_weights(method):
    a, b = weights(1), weights(2)
    inputs = batch(seed=4)
    expected = []
    for layer in (a, b):
        wrapper = make(method)
        load(wrapper, layer)
        expected.append(forward(wrapper, inputs))
    wrapper = make(method)
    load(wrapper, a)
    outputs, errors, done = [], [], threading.Event()

    def forwards():
        try:
            while not done.is_set():
                outputs.append(forward(wrapper, inputs))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=forwards)
    thread.start()
    try:
        for layer in (b, a, b, a, b, a):
            load(wrapper, layer)
    finally:
        done.set()
        thread.join()
    assert not errors
    assert outputs
    assert all(torch.equal(out, expected[0]) or torch.equal(out, expected[1]) for out in outputs)


@pytest.mark.parametrize("method", SFT_METHODS[:2])
def test_sft_reload_waits_for_no_saved_forward(method):
    """A saved forward's backward must read the base its forward read: a reload is refused while
    one waits (before anything is read), and the previous base stays."""
    a, b = weights(1), weights(2)
    inputs = batch()
    wrapper = make(method)
    load(wrapper, a)
    out_a = forward(wrapper, inputs)
    wrapper.forward_sft(*inputs, save_for_backward=True)
    with pytest.raises(RuntimeError, match=r"^begin_load: 1 saved forward\(s\) wait for backward\(\)"):
        load(wrapper, b)
    assert_unchanged(wrapper, inputs, out_a)
    wrapper.backward(torch.ones_like(inputs[0]))
    load(wrapper, b)
    assert not torch.equal(forward(wrapper, inputs), out_a)


def test_a_forward_submitted_before_a_reload_reads_the_previous_weights():
    a, b = weights(1), weights(2)
    inputs = batch()
    expected = []
    for layer in (a, b):
        wrapper = make("AMXINT8")
        load(wrapper, layer)
        expected.append(forward(wrapper, inputs))
    wrapper = make("AMXINT8")
    load(wrapper, a)
    wrapper.submit_forward(*inputs)
    load(wrapper, b)
    assert torch.equal(wrapper.sync_forward(inputs[0]), expected[0])
    assert torch.equal(forward(wrapper, inputs), expected[1])


@pytest.mark.parametrize("method", ["BF16", "AMXBF16_SFT"])
def test_native_loads_are_staged_until_committed(method):
    """The engines' own calls: load_expert_task fills the staged weights, commit_load puts them in
    place once complete, abort_load drops them."""
    gate, up, down = weights(1)
    wrapper = make(method)
    engine = wrapper.engine
    for slot in range(3):
        engine.load_expert_task(slot, gate[slot], up[slot], down[slot])
    assert engine.staged_count == 3 and not engine.weights_loaded
    with pytest.raises(RuntimeError, match="^commit_load: the staged weights hold 3 of 6 experts; load every slot"):
        engine.commit_load()
    with pytest.raises(RuntimeError, match="^Weights not loaded"):
        forward(wrapper, batch())
    engine.abort_load()
    assert engine.staged_count == 0
    engine.begin_load()
    for slot in range(6):
        engine.load_expert_task(slot, gate[slot], up[slot], down[slot])
    engine.commit_load()
    assert engine.weights_loaded and engine.staged_count == 0
    forward(wrapper, batch())
