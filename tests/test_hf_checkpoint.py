"""HFExpertReader: one layer's experts from single-file and sharded Hugging Face checkpoints, both
naming schemes, bf16/fp16/fp32 on disk, iteration order, reads limited to the layer (names and
resident memory), and every documented error with its message."""

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hf_fixtures import expert_tensor_names, write_hf_checkpoint
from kt_moe.weights import HFExpertReader
from kt_moe.weights import hf_checkpoint

E, H, I = 4, 24, 16
LAYER = 3


def stacked_weights(seed, experts=E, hidden=H, inter=I):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(experts, inter, hidden, generator=g), torch.randn(experts, inter, hidden, generator=g),
            torch.randn(experts, hidden, inter, generator=g))


ATTENTION = {"model.embed_tokens.weight": torch.ones(10, H),
             f"model.layers.{LAYER}.self_attn.q_proj.weight": torch.ones(H, H)}


def checkpoint(tmp_path, scheme="deepseek", dtype=torch.bfloat16, shards=1, **kwargs):
    """Layers 1, LAYER and 13 (same shapes, different values) plus attention tensors; returns
    (directory, the target layer's weights)."""
    layers = {1: stacked_weights(1), LAYER: stacked_weights(2), 13: stacked_weights(3)}
    directory = write_hf_checkpoint(tmp_path / "ckpt", layers, scheme=scheme, dtype=dtype, shards=shards,
                                    extra=ATTENTION, **kwargs)
    return directory, layers[LAYER]


def reader(directory, layer=LAYER, experts=E, hidden=H, inter=I):
    return HFExpertReader(directory, layer, experts, hidden, inter)


def expected(weights, e, dtype):
    return tuple(w[e].to(dtype).to(torch.bfloat16) for w in weights)


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("scheme", ["deepseek", "mixtral"])
def test_expert_returns_the_bf16_conversion_of_what_was_written(tmp_path, scheme, dtype, shards):
    directory, weights = checkpoint(tmp_path, scheme, dtype, shards)
    r = reader(directory)
    assert r.scheme == scheme
    for e in range(E):
        got = r.expert(e)
        for t, want, shape in zip(got, expected(weights, e, dtype), [(I, H), (I, H), (H, I)]):
            assert t.dtype == torch.bfloat16 and t.is_contiguous() and tuple(t.shape) == shape
            assert torch.equal(t, want)
    r.close()


def test_sharded_fixture_splits_the_layer_across_files(tmp_path):
    directory, _ = checkpoint(tmp_path, shards=3)
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    files = {weight_map[n] for e in range(E) for n in expert_tensor_names(LAYER, e)}
    assert len(files) >= 2


@pytest.mark.parametrize("shards", [1, 3])
def test_experts_follow_the_given_logical_ids_including_repeats(tmp_path, shards):
    directory, weights = checkpoint(tmp_path, shards=shards)
    order = [3, 0, 3, 1, 2, 1]
    with reader(directory) as r:
        got = list(r.experts(torch.tensor(order)))
    assert [item[0] for item in got] == order
    for e, *tensors in got:
        assert all(torch.equal(t, w) for t, w in zip(tensors, expected(weights, e, torch.bfloat16)))
    assert [item[0] for item in reader(directory).experts()] == list(range(E))


class RecordingOpen:
    """Stands in for safe_open: logs the files opened and closed and the tensors read."""

    def __init__(self):
        self.opened, self.closed, self.read = [], [], []

    def __call__(self, path, framework):
        log, real = self, safe_open(path, framework=framework)
        name = Path(path).name
        log.opened.append(name)

        class Handle:
            def __enter__(self):
                real.__enter__()
                return self

            def __exit__(self, *exc_info):
                log.closed.append(name)
                return real.__exit__(*exc_info)

            keys, get_slice = real.keys, real.get_slice

            def get_tensor(self, tensor_name):
                log.read.append(tensor_name)
                return real.get_tensor(tensor_name)

        return Handle()


@pytest.mark.parametrize("shards", [1, 3])
def test_only_the_layer_is_read_and_each_file_opened_once_while_iterating(tmp_path, monkeypatch, shards):
    directory, _ = checkpoint(tmp_path, shards=shards)
    r = reader(directory)
    log = RecordingOpen()
    monkeypatch.setattr(hf_checkpoint, "safe_open", log)
    order = [2, 0, 1, 3, 0]
    for _ in r.experts(order):
        pass
    assert log.read == [n for e in order for n in expert_tensor_names(LAYER, e)]
    assert len(log.opened) == len(set(log.opened)) and sorted(log.closed) == sorted(log.opened)


def test_validation_reads_headers_only(tmp_path, monkeypatch):
    directory, _ = checkpoint(tmp_path, shards=3)
    log = RecordingOpen()
    monkeypatch.setattr(hf_checkpoint, "safe_open", log)
    reader(directory)
    assert log.read == [] and sorted(log.closed) == sorted(log.opened)


def test_layer_1_is_not_layer_13(tmp_path):
    directory, _ = checkpoint(tmp_path)
    layers = {1: stacked_weights(1), 13: stacked_weights(3)}
    for layer, weights in layers.items():
        got = reader(directory, layer=layer).expert(2)
        assert all(torch.equal(t, w) for t, w in zip(got, expected(weights, 2, torch.bfloat16)))


def test_reading_a_layer_keeps_resident_memory_far_below_the_other_tensors(tmp_path, run_python):
    big = torch.ones(4, 4096, 2048, dtype=torch.bfloat16)  # layer 0: 3 x 64 MiB of experts
    write_hf_checkpoint(tmp_path / "ckpt", {0: (big, big, big.transpose(1, 2)), 1: stacked_weights(1)})
    del big
    script = textwrap.dedent(f"""
        import torch
        from safetensors.torch import load_file
        from kt_moe.weights import HFExpertReader

        def status_mib(field):
            line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
            return int(line.split()[1]) / 1024

        def reset_peak():  # VmHWM := VmRSS (Linux clear_refs)
            open("/proc/self/clear_refs", "w").write("5")
            return status_mib("VmRSS")

        store = torch.empty(3, {E}, {I * H}, dtype=torch.bfloat16)
        store[0, 0].copy_(torch.ones({I * H}).to(torch.bfloat16))
        start = reset_peak()
        with HFExpertReader({str(tmp_path / "ckpt")!r}, 1, {E}, {H}, {I}) as r:
            for e, gate, up, down in r.experts():
                for k, w in enumerate((gate, up, down)):
                    store[k, e].copy_(w.reshape(-1))
        layer_growth = status_mib("VmHWM") - start
        start = reset_peak()
        whole = {{name: t.clone() for name, t in load_file({str(tmp_path / "ckpt" / "model.safetensors")!r}).items()}}
        print(layer_growth, status_mib("VmHWM") - start)
    """)
    done = run_python("-c", script)
    assert done.returncode == 0, done.stderr
    layer_growth, whole_growth = map(float, done.stdout.split())
    assert whole_growth > 150, f"a whole-file read should show (grew {whole_growth:.1f} MiB)"
    assert layer_growth < 16, f"reading a 48 KiB layer grew the peak RSS by {layer_growth:.1f} MiB"


# ---- errors ----

def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint directory not found: {tmp_path / 'nope'}")):
        reader(tmp_path / "nope")


def test_directory_without_checkpoint_file(tmp_path):
    message = f"no model.safetensors or model.safetensors.index.json in {tmp_path}"
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        reader(tmp_path)


def test_missing_shard_holding_the_layer(tmp_path):
    directory, _ = checkpoint(tmp_path, shards=3)
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    shard = directory / weight_map[expert_tensor_names(LAYER, 0)[0]]
    shard.unlink()
    message = f"shard {shard} named by {directory / 'model.safetensors.index.json'} not found"
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        reader(directory)


def test_missing_shard_of_another_layer_does_not_matter(tmp_path):
    directory, weights = checkpoint(tmp_path, shards=3)
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    (directory / weight_map["model.embed_tokens.weight"]).unlink()  # the last shard: layer 13, attention
    assert torch.equal(reader(directory).expert(1)[2], expected(weights, 1, torch.bfloat16)[2])


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"metadata": {}}', '{"weight_map": {"a": 3}}'])
def test_unusable_index(tmp_path, text):
    (tmp_path / "model.safetensors.index.json").write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "model.safetensors.index.json"))):
        reader(tmp_path)


@pytest.mark.parametrize("scheme", ["deepseek", "mixtral"])
@pytest.mark.parametrize("shards", [1, 3])
def test_layer_without_experts(tmp_path, scheme, shards):
    directory, _ = checkpoint(tmp_path, scheme=scheme, shards=shards)
    message = (f"no expert weights for layer 7 in {directory}: expected names like "
               "model.layers.7.mlp.experts.0.gate_proj.weight or model.layers.7.block_sparse_moe.experts.0.w1.weight")
    with pytest.raises(ValueError, match=re.escape(message)):
        reader(directory, layer=7)


@pytest.mark.parametrize("shards", [1, 3])
def test_missing_tensors_are_counted_and_the_first_named(tmp_path, shards):
    dropped = [expert_tensor_names(LAYER, e, "mixtral")[k] for e in (1, 2, 3) for k in (0, 2)] + \
              [expert_tensor_names(LAYER, 0, "mixtral")[1]]
    directory, _ = checkpoint(tmp_path, scheme="mixtral", shards=shards, drop=dropped)
    with pytest.raises(ValueError) as info:
        reader(directory)
    message = str(info.value)
    assert message.startswith(f"7 expert tensor(s) missing for layer {LAYER} in {directory}: ")
    assert message.endswith(", ...")
    named = message.split(": ", 1)[1].removesuffix(", ...").split(", ")
    assert len(named) == 5 and set(named) <= set(dropped)


def test_tensor_in_the_index_but_not_in_its_shard(tmp_path):
    name = expert_tensor_names(LAYER, 2)[1]
    directory, _ = checkpoint(tmp_path, shards=3, drop=[name])
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][name] = index["weight_map"][expert_tensor_names(LAYER, 2)[0]]
    index_path.write_text(json.dumps(index))
    message = f"1 expert tensor(s) missing for layer {LAYER} in {directory}: {name}"
    with pytest.raises(ValueError, match=re.escape(message)):
        reader(directory)


def test_wrong_shape_names_tensor_and_shapes(tmp_path):
    directory, _ = checkpoint(tmp_path)
    name = expert_tensor_names(LAYER, 0)[0]
    message = f"{name} in {directory / 'model.safetensors'}: expected shape [{I}, {H + 1}], got [{I}, {H}]"
    with pytest.raises(ValueError, match=re.escape(message)):
        reader(directory, hidden=H + 1)


def test_transposed_down_projection_is_a_shape_error(tmp_path):
    gate, up, down = stacked_weights(2)
    directory = write_hf_checkpoint(tmp_path, {LAYER: (gate, up, down.transpose(1, 2))}, scheme="mixtral")
    name = expert_tensor_names(LAYER, 0, "mixtral")[2]
    with pytest.raises(ValueError, match=re.escape(f"{name} in {directory / 'model.safetensors'}: "
                                                   f"expected shape [{H}, {I}], got [{I}, {H}]")):
        reader(directory)


@pytest.mark.parametrize("dtype, code", [(torch.float64, "F64"), (torch.int8, "I8")])
def test_unsupported_dtype(tmp_path, dtype, code):
    directory, _ = checkpoint(tmp_path, dtype=dtype)
    name = expert_tensor_names(LAYER, 0)[0]
    message = (f"{name} in {directory / 'model.safetensors'}: dtype {code} not supported "
               "(expected one of BF16, F16, F32)")
    with pytest.raises(ValueError, match=re.escape(message)):
        reader(directory)


def test_both_naming_schemes_in_one_layer(tmp_path):
    extra = {expert_tensor_names(LAYER, 0, "mixtral")[0]: torch.zeros(I, H, dtype=torch.bfloat16)}
    directory = write_hf_checkpoint(tmp_path, {LAYER: stacked_weights(2)}, extra=extra)
    with pytest.raises(ValueError, match=re.escape(f"layer {LAYER} in {directory} has expert weights under both "
                                                   "naming schemes (deepseek and mixtral)")):
        reader(directory)


@pytest.mark.parametrize("bad", [-1, E])
def test_expert_id_out_of_range(tmp_path, bad):
    directory, _ = checkpoint(tmp_path)
    r = reader(directory)
    message = re.escape(f"expert id {bad} out of range [0, {E})")
    with pytest.raises(ValueError, match=message):
        r.expert(bad)
    with pytest.raises(ValueError, match=message):
        r.experts([0, bad])  # raised by the call, before anything is read
