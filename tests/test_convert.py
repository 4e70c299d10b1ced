"""`kt-moe convert` and the pre-quantized files: round trip against kt_moe.quant applied to the
Hugging Face tensors, layer discovery and selection, the file header, resume after an interruption
or damage, files written for other settings, the reader's checks, the SFT methods (AMXINT8_SFT and
AMXINT4_SFT share the inference methods' files; AMXINT4_KGroup_SFT with its group size and zero
point options) and the command line (summary, progress bar, one-line errors)."""

import io
import json
import os
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hf_fixtures import random_layers, write_hf_checkpoint
from kt_moe import cli
from kt_moe.quant import scheme_for_method
from kt_moe.weights import prequantized
from kt_moe.weights.convert import convert_checkpoint, format_layers, parse_layers
from kt_moe.weights.hf_checkpoint import MoELayerInfo, list_moe_layers
from kt_moe.weights.prequantized import (LayerSettings, PrequantizedCorruptError, PrequantizedLayerReader,
                                         PrequantizedMismatchError, layer_file, write_layer)

E, H, I = 4, 64, 40  # I = 40: down's K is padded to 48 by int4_group16
LAYERS = (1, 2, 4)
DENSE = {"model.layers.0.mlp.gate_proj.weight": torch.ones(I, H), "model.embed_tokens.weight": torch.ones(8, H)}
OLD = 1_000_000_000  # an mtime long past: a file still carrying it was not rewritten


@pytest.fixture
def weights():
    return random_layers(LAYERS, E, H, I)


def checkpoint(tmp_path, weights, scheme="deepseek", shards=2, name="hf", **kwargs):
    return write_hf_checkpoint(tmp_path / name, weights, scheme=scheme, shards=shards, extra=DENSE, **kwargs)


def reader(out, layer, method="AMXINT4", **kwargs):
    return PrequantizedLayerReader(out, layer, kwargs.pop("num_experts", E), kwargs.pop("hidden_size", H),
                                   kwargs.pop("intermediate_size", I), method, **kwargs)


def actions(results):
    return {r.layer_idx: r.action for r in results}


def age(out):
    """Give every layer file an old mtime."""
    for path in out.glob("layer_*.safetensors"):
        os.utime(path, (OLD, OLD))


def contents(path):
    """(metadata, {name: tensor}) of a file (safetensors writes the metadata keys in no fixed order)."""
    with safe_open(path, framework="pt") as f:
        return f.metadata(), {name: f.get_tensor(name) for name in f.keys()}


def same_contents(a, b):
    (meta_a, tensors_a), (meta_b, tensors_b) = contents(a), contents(b)
    return meta_a == meta_b and tensors_a.keys() == tensors_b.keys() and \
        all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)


# ---- discovery and selection ----

@pytest.mark.parametrize("scheme", ["deepseek", "mixtral"])
def test_list_moe_layers_finds_the_expert_layers(tmp_path, weights, scheme):
    layers = list_moe_layers(checkpoint(tmp_path, weights, scheme))
    assert layers == [MoELayerInfo(L, scheme, E, H, I) for L in LAYERS]


def test_parse_and_format_layers():
    assert list(parse_layers("1-3,7")) == [1, 2, 3, 7]
    assert list(parse_layers(" 5 , 2-3, 3")) == [2, 3, 5]
    assert str(parse_layers("4-6,1-2,3,9")) == "1-6, 9"
    assert format_layers([7, 1, 2, 3, 9]) == "1-3, 7, 9"
    for text in ["a", "1-2-3", "", "-1", "2,", "1.5", "\u00b2", "\u0661"]:
        with pytest.raises(ValueError, match="expected a layer, a range A-B or a comma-separated list"):
            parse_layers(text)
    with pytest.raises(ValueError, match="range '3-1' is empty"):
        parse_layers("3-1")
    for text, layer in [("0-2147483648", "2147483648"), ("9" * 5000, "9" * 5000)]:
        with pytest.raises(ValueError, match=f"^layer {layer} is out of range: layer ids go up to 2147483647$"):
            parse_layers(text)


def test_layer_ranges_stay_unexpanded():
    layers = parse_layers("0-2147483647")  # 2**31 ids: expanded, they would not fit in memory
    assert 2147483647 in layers and 0 in layers and 5 in layers
    assert str(layers.without([0, 1, 5, 2147483647])) == "2-4, 6-2147483646"
    assert 3 not in parse_layers("1-2,4") and -1 not in parse_layers("0")
    assert not parse_layers("1-3").without([1, 2, 3, 4])


def test_layers_selects_a_subset(tmp_path, weights):
    out = tmp_path / "out"
    ckpt = checkpoint(tmp_path, weights)
    assert actions(convert_checkpoint(ckpt, out, "AMXINT8", layers=parse_layers("1-2"))) == {1: "written", 2: "written"}
    assert sorted(p.name for p in out.iterdir()) == ["layer_0001.safetensors", "layer_0002.safetensors"]
    written = convert_checkpoint(ckpt, out, "AMXINT8", layers=[4])
    assert actions(written) == {4: "written"}
    assert written[0].weight_bytes == 3 * E * I * H * 2 and written[0].seconds > 0  # the experts' bf16 bytes
    skipped = convert_checkpoint(ckpt, out, "AMXINT8")
    assert actions(skipped) == {1: "skipped", 2: "skipped", 4: "skipped"}
    assert all(r.weight_bytes == 0 and r.seconds > 0 for r in skipped)


def test_layers_without_experts_are_refused(tmp_path, weights):
    ckpt = checkpoint(tmp_path, weights)
    with pytest.raises(ValueError) as info:
        convert_checkpoint(ckpt, tmp_path / "out", "AMXINT4", layers=[0, 3, 4])
    assert str(info.value) == f"layer(s) 0, 3 have no routed experts in {ckpt}; its MoE layers are 1-2, 4"
    assert not (tmp_path / "out").exists()



# ---- round trip and format ----

@pytest.mark.parametrize("scheme", ["deepseek", "mixtral"])
@pytest.mark.parametrize("method", ["AMXINT8", "AMXINT4"])
def test_round_trip_equals_quantizing_the_hf_tensors(tmp_path, weights, method, scheme):
    out = tmp_path / "out"
    results = convert_checkpoint(checkpoint(tmp_path, weights, scheme), out, method)
    assert actions(results) == dict.fromkeys(LAYERS, "written")
    assert [r.path for r in results] == [layer_file(out, L) for L in LAYERS]
    quantize = scheme_for_method(method).quantize
    for L in LAYERS:
        with reader(out, L, method) as r:
            r.verify()
            stacked = r.stacked()
            for matrix, w in zip(("gate", "up", "down"), weights[L]):
                want = quantize(w.to(torch.bfloat16))  # HFExpertReader hands out bf16
                assert all(torch.equal(got, exp) for got, exp in zip(stacked[matrix], want)), (L, matrix)
            for e, parts in r.experts([3, 1]):
                assert all(torch.equal(parts["down"][i], stacked["down"][i][e]) for i in range(len(parts["down"])))


def test_file_header(tmp_path, weights):
    out = tmp_path / "out"
    ckpt = checkpoint(tmp_path, weights)
    convert_checkpoint(ckpt, out, "AMXINT4", layers=[2])
    with safe_open(layer_file(out, 2), framework="pt") as f:
        metadata = f.metadata()
        names = set(f.keys())
    source = json.loads(metadata.pop("source"))
    assert metadata.pop("checksum").startswith("sha256:")
    assert metadata == {"format": "kt-moe-prequantized", "format_version": "2", "method": "AMXINT4",
                        "scheme": "int4_group16", "group_size": "16", "layer_idx": "2", "num_experts": str(E),
                        "hidden_size": str(H), "intermediate_size": str(I), "tensor_parallel": "unsplit"}
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    files = {index[f"model.layers.2.mlp.experts.{e}.{p}.weight"] for e in range(E)
             for p in ("gate_proj", "up_proj", "down_proj")}
    assert source == {"files": {name: (ckpt / name).stat().st_size for name in files}}
    assert names == {f"experts.{e}.{m}.{part}" for e in range(E) for m in ("gate", "up", "down")
                     for part in ("codes", "scale", "zero")}


# ---- resume ----

@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "empty"])
def test_rerun_rewrites_only_damaged_or_missing_files(tmp_path, weights, damage):
    out = tmp_path / "out"
    ckpt = checkpoint(tmp_path, weights)
    convert_checkpoint(ckpt, out, "AMXINT4")
    shutil.copytree(out, tmp_path / "original")
    age(out)
    layer_file(out, 2).unlink()
    damaged = layer_file(out, 4)
    data = bytearray(damaged.read_bytes())
    if damage == "flipped byte":
        data[-3] ^= 0xFF  # in the tensor data: the header still reads, the checksum fails
    damaged.write_bytes(bytes(data[:len(data) // 2] if damage == "truncated" else b"" if damage == "empty" else data))
    os.utime(damaged, (OLD, OLD))

    assert actions(convert_checkpoint(ckpt, out, "AMXINT4")) == {1: "skipped", 2: "written", 4: "rewritten"}
    assert layer_file(out, 1).stat().st_mtime == OLD
    assert layer_file(out, 4).stat().st_mtime != OLD
    assert sorted(p.name for p in out.iterdir()) == [f"layer_{L:04d}.safetensors" for L in LAYERS]
    assert all(same_contents(layer_file(out, L), layer_file(tmp_path / "original", L)) for L in LAYERS)


def test_resume_after_an_interrupted_write(tmp_path, weights, monkeypatch):
    out = tmp_path / "out"
    ckpt = checkpoint(tmp_path, weights)
    real_save = prequantized.save_file

    def interrupted_save(tensors, path, metadata):
        if "layer_0002" in str(path):
            path.write_bytes(b"half a file")
            raise KeyboardInterrupt
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(prequantized, "save_file", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(ckpt, out, "AMXINT8")
    assert sorted(p.name for p in out.iterdir()) == ["layer_0001.safetensors"]  # no partial file left
    age(out)
    monkeypatch.setattr(prequantized, "save_file", real_save)
    assert actions(convert_checkpoint(ckpt, out, "AMXINT8")) == {1: "skipped", 2: "written", 4: "written"}
    assert layer_file(out, 1).stat().st_mtime == OLD
    for L in LAYERS:
        with reader(out, L, "AMXINT8") as r:
            r.verify()


def test_a_stale_partial_file_is_replaced(tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    (out / "layer_0001.safetensors.partial").write_bytes(b"left by a killed run")
    convert_checkpoint(checkpoint(tmp_path, weights), out, "AMXINT4", layers=[1])
    assert sorted(p.name for p in out.iterdir()) == ["layer_0001.safetensors"]


# ---- files for other settings ----

def test_other_settings_are_refused_unless_forced(tmp_path, weights):
    out = tmp_path / "out"
    ckpt = checkpoint(tmp_path, weights)
    convert_checkpoint(ckpt, out, "AMXINT4")
    age(out)
    with pytest.raises(ValueError) as info:
        convert_checkpoint(ckpt, out, "AMXINT8")
    assert str(info.value) == (
        f"{layer_file(out, 1)} was written for other settings: method='AMXINT4' (expected 'AMXINT8'), "
        "scheme='int4_group16' (expected 'int8_channel'), group_size='16' (expected '0') "
        "(so were the files of layer(s) 2, 4); use another output directory, or --force to overwrite")
    assert all(p.stat().st_mtime == OLD for p in out.iterdir())

    assert actions(convert_checkpoint(ckpt, out, "AMXINT8", force=True)) == dict.fromkeys(LAYERS, "replaced")
    reader(out, 1, "AMXINT8").verify()
    with pytest.raises(PrequantizedMismatchError, match="method='AMXINT8' \\(expected 'AMXINT4'\\)"):
        reader(out, 1, "AMXINT4")


def test_another_source_is_refused(tmp_path, weights):
    out = tmp_path / "out"
    convert_checkpoint(checkpoint(tmp_path, weights, shards=2), out, "AMXINT4", layers=[1])
    other = checkpoint(tmp_path, weights, shards=1, name="other")
    with pytest.raises(ValueError, match=r"layer_0001.safetensors was written for other settings: source="):
        convert_checkpoint(other, out, "AMXINT4", layers=[1])


def test_a_foreign_file_is_refused(tmp_path, weights):
    out = tmp_path / "out"
    out.mkdir()
    save_file({"x": torch.zeros(2)}, layer_file(out, 1))
    with pytest.raises(ValueError, match="format missing \\(expected 'kt-moe-prequantized'\\)"):
        convert_checkpoint(checkpoint(tmp_path, weights), out, "AMXINT4", layers=[1])


# ---- bad input ----

def test_missing_or_unusable_input(tmp_path, weights):
    with pytest.raises(FileNotFoundError, match=f"checkpoint directory not found: {tmp_path / 'absent'}"):
        convert_checkpoint(tmp_path / "absent", tmp_path / "out", "AMXINT4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model.safetensors or model.safetensors.index.json in"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "out", "AMXINT4")
    dense = write_hf_checkpoint(tmp_path / "dense", {}, extra=DENSE)
    with pytest.raises(ValueError, match=f"no routed-expert weights found in {dense}"):
        convert_checkpoint(dense, tmp_path / "out", "AMXINT4")
    holey = checkpoint(tmp_path, weights, name="holey", drop=["model.layers.4.mlp.experts.2.up_proj.weight"])
    with pytest.raises(ValueError, match="1 expert tensor\\(s\\) missing for layer 4"):
        convert_checkpoint(holey, tmp_path / "out", "AMXINT4")
    with pytest.raises(ValueError, match="method 'LLAMAFILE' has no kt-moe quantization scheme"):
        convert_checkpoint(checkpoint(tmp_path, weights), tmp_path / "out", "LLAMAFILE")
    with pytest.raises(ValueError, match="method 'FP8' reads quantized checkpoints in place with load_weights"):
        convert_checkpoint(checkpoint(tmp_path, weights), tmp_path / "out", "FP8")
    assert not (tmp_path / "out").exists()  # every check comes before the first write
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=f"output {tmp_path / 'file'} exists and is not a directory"):
        convert_checkpoint(checkpoint(tmp_path, weights), tmp_path / "file", "AMXINT4")


# ---- the reader ----

@pytest.fixture
def converted(tmp_path, weights):
    out = tmp_path / "out"
    convert_checkpoint(checkpoint(tmp_path, weights), out, "AMXINT4", layers=[1])
    return out


@pytest.mark.parametrize("setting,value,expected", [
    ("num_experts", 8, "num_experts='4' (expected '8')"),
    ("hidden_size", 32, "hidden_size='64' (expected '32')"),
    ("intermediate_size", 48, "intermediate_size='40' (expected '48')"),
])
def test_reader_names_the_setting_that_differs(converted, setting, value, expected):
    with pytest.raises(PrequantizedMismatchError) as info:
        reader(converted, 1, **{setting: value})
    assert str(info.value) == f"{layer_file(converted, 1)} was written for other settings: {expected}"
    assert isinstance(info.value, ValueError)


def test_reader_refuses_another_layer_and_format_version(converted):
    shutil.copy(layer_file(converted, 1), layer_file(converted, 3))
    with pytest.raises(PrequantizedMismatchError, match="layer_idx='1' \\(expected '3'\\)"):
        reader(converted, 3)
    metadata, tensors = contents(layer_file(converted, 1))
    save_file(tensors, layer_file(converted, 3), metadata={**metadata, "format_version": "1"})
    with pytest.raises(PrequantizedMismatchError, match="format_version='1' \\(expected '2'\\)"):
        reader(converted, 3)


def test_reader_checks_tensors_and_checksum(converted):
    path = layer_file(converted, 1)
    with pytest.raises(FileNotFoundError) as info:
        reader(converted, 9)
    assert str(info.value) == (f"pre-quantized file for layer 9 not found: {layer_file(converted, 9)} "
                               "(write it with: kt-moe convert --method AMXINT4)")
    metadata, tensors = contents(path)
    save_file({k: v for k, v in tensors.items() if k != "experts.3.up.zero"}, path, metadata=metadata)
    with pytest.raises(PrequantizedCorruptError, match="1 tensor\\(s\\) missing: experts.3.up.zero"):
        reader(converted, 1)
    save_file({**tensors, "experts.0.gate.scale": torch.zeros(3)}, path, metadata=metadata)
    with pytest.raises(PrequantizedCorruptError, match=r"experts.0.gate.scale is F32 \(3,\), expected F16 \(40, 4\)"):
        reader(converted, 1)
    save_file({**tensors, "experts.0.gate.scale": tensors["experts.0.gate.scale"] * 2}, path, metadata=metadata)
    r = reader(converted, 1)
    with pytest.raises(PrequantizedCorruptError, match="checksum mismatch"):
        r.verify()
    with pytest.raises(ValueError, match=r"expert id 4 out of range \[0, 4\)"):
        r.expert(4)
    r.close()


def test_write_layer_checks_the_parts(tmp_path):
    settings = LayerSettings("AMXINT8", 0, 1, H, I)
    quantize = settings.scheme.quantize
    good = {m: quantize(torch.zeros(shape)) for m, shape in settings.matrix_shapes().items()}
    with pytest.raises(ValueError, match=r"experts.0.down.q must be torch.int8 \(64, 40\) for AMXINT8, got"):
        write_layer(tmp_path, settings, [{**good, "down": quantize(torch.zeros(H, H))}], source="")
    with pytest.raises(ValueError, match="experts must hold 1 experts, got 2"):
        write_layer(tmp_path, settings, [good, good], source="")
    assert write_layer(tmp_path, settings, [good], source="s") == layer_file(tmp_path, 0)


# ---- the SFT methods ----

@pytest.mark.parametrize("method,group_size,zero_point", [
    ("AMXINT4_KGroup_SFT", None, None), ("AMXINT4_KGroup_SFT", 32, True), ("AMXINT4_KGroup_SFT", 64, False),
    ("AMXINT4_KGroup_SFT", 128, False), ("AMXINT4", 64, None), ("AMXINT4", 128, False)])
def test_kgroup_round_trip_and_header(tmp_path, weights, method, group_size, zero_point):
    """int4_kgroup files: AMXINT4_KGroup_SFT's, and AMXINT4's at group_size 64 or 128."""
    out = tmp_path / "out"
    convert_checkpoint(checkpoint(tmp_path, weights), out, method, layers=[2], group_size=group_size,
                       zero_point=zero_point)
    scheme = scheme_for_method(method, group_size, zero_point)
    metadata, _ = contents(layer_file(out, 2))
    assert {key: metadata[key] for key in ("method", "scheme", "group_size", "zero_point")} == \
        {"method": method, "scheme": "int4_kgroup", "group_size": str(scheme.group_size),
         "zero_point": "true" if scheme.zero_point else "false"}
    with reader(out, 2, method, group_size=group_size, zero_point=zero_point) as r:
        r.verify()
        stacked = r.stacked()
    for matrix, w in zip(("gate", "up", "down"), weights[2]):
        want = scheme.quantize(w.to(torch.bfloat16))
        assert len(stacked[matrix]) == len(want) and all(torch.equal(a, b) for a, b in zip(stacked[matrix], want))


def test_sft_methods_share_the_inference_files(tmp_path, weights):
    out = tmp_path / "out"
    convert_checkpoint(checkpoint(tmp_path, weights), out, "AMXINT4_SFT", layers=[1])
    assert contents(layer_file(out, 1))[0]["method"] == "AMXINT4"
    reader(out, 1, "AMXINT4").close()
    reader(out, 1, "AMXINT4_SFT").close()
    with pytest.raises(PrequantizedMismatchError, match="method='AMXINT4' \\(expected 'AMXINT8'\\)"):
        reader(out, 1, "AMXINT8_SFT")


def test_kgroup_settings_are_part_of_the_file(tmp_path, weights):
    ckpt, out = checkpoint(tmp_path, weights), tmp_path / "out"
    convert_checkpoint(ckpt, out, "AMXINT4_KGroup_SFT", layers=[1], group_size=64)
    with pytest.raises(ValueError, match="group_size='64' \\(expected '32'\\).*--force to overwrite"):
        convert_checkpoint(ckpt, out, "AMXINT4_KGroup_SFT", layers=[1], group_size=32)
    with pytest.raises(FileNotFoundError, match="--method AMXINT4_KGroup_SFT --group-size 32 --no-zero-point"):
        reader(out, 2, "AMXINT4_KGroup_SFT", group_size=32, zero_point=False)
    with pytest.raises(ValueError, match="^group_size and zero_point are options of the INT4 group methods"):
        convert_checkpoint(ckpt, out, "AMXINT8", group_size=64)


def test_cli_kgroup_options(tmp_path, weights, capsys):
    ckpt, out = checkpoint(tmp_path, weights), tmp_path / "out"
    code, stdout, stderr = run(capsys, "--method", "AMXINT4_KGroup_SFT", "--group-size", "64", "--no-zero-point",
                               "--input", str(ckpt), "--output", str(out), "--layers", "4")
    assert (code, stderr) == (0, "") and stdout.startswith(f"1 layer(s) in {out} (1 written); quantized ")
    metadata, _ = contents(layer_file(out, 4))
    assert (metadata["group_size"], metadata["zero_point"]) == ("64", "false")
    code, stdout, stderr = run(capsys, "--method", "AMXINT8_SFT", "--zero-point", "--input", str(ckpt), "--output",
                               str(tmp_path / "other"))
    assert (code, stdout) == (1, "") and stderr.startswith("kt-moe: error: group_size and zero_point are options")
    with pytest.raises(SystemExit):
        cli.main(["convert", "--method", "AMXINT4_KGroup_SFT", "--group-size", "48", "--input", str(ckpt),
                  "--output", str(out)])
    assert "argument --group-size: invalid choice: 48" in capsys.readouterr().err


# ---- the command line ----

def run(capsys, *argv):
    code = cli.main(["convert", *argv])
    out, err = capsys.readouterr()
    return code, out, err


SUMMARY_TAIL = r" MB of bf16 weights in \d+\.\d s \([\d,]+\.\d MB/s\)\n"


def test_cli_converts_and_summarises(tmp_path, weights, capsys):
    """The summary names what was done and the throughput over the layers quantized (the bf16 bytes
    of their experts read, quantized and written), the skipped ones not counted."""
    ckpt, out = checkpoint(tmp_path, weights), tmp_path / "out"
    layer_mb = 3 * E * I * H * 2 / 1e6  # gate, up and down of every expert, bf16
    code, stdout, stderr = run(capsys, "--method", "AMXINT4", "--input", str(ckpt), "--output", str(out),
                               "--layers", "1-2")
    assert (code, stderr) == (0, "")
    assert re.fullmatch(re.escape(f"2 layer(s) in {out} (2 written); quantized {2 * layer_mb:,.1f}") + SUMMARY_TAIL,
                        stdout)
    code, stdout, stderr = run(capsys, "--method", "AMXINT4", "--input", str(ckpt), "--output", str(out))
    assert (code, stderr) == (0, "")
    assert re.fullmatch(re.escape(f"3 layer(s) in {out} (1 written, 2 skipped); quantized {layer_mb:,.1f}")
                        + SUMMARY_TAIL, stdout)
    assert run(capsys, "--method", "AMXINT4", "--input", str(ckpt), "--output", str(out)) == \
        (0, f"3 layer(s) in {out} (3 skipped)\n", "")
    assert run(capsys, "--method", "AMXINT4", "--input", str(ckpt), "--output", str(out), "--quiet") == (0, "", "")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_cli_progress_bar_on_a_terminal(tmp_path, weights, capsys, monkeypatch):
    ckpt, out = checkpoint(tmp_path, weights), tmp_path / "out"
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert cli.main(["convert", "--method", "AMXINT8", "--input", str(ckpt), "--output", str(out)]) == 0
    text = terminal.getvalue()
    assert text.startswith("\r[") and text.endswith("\n") and text.count("\n") == 1
    frames = text.rstrip("\n").split("\r")[1:]
    # each frame is padded to cover the previous one
    assert all(len(frame) >= len(previous.rstrip()) for previous, frame in zip(frames, frames[1:]))
    frames = [frame.rstrip() for frame in frames]
    assert frames[0] == "[" + "." * 24 + "]   0%  0/12 experts  layer 1: quantizing (0/4)"
    assert "[##......................]   8%  1/12 experts  layer 1: quantizing (1/4)" in frames
    assert frames[-1] == "[" + "#" * 24 + "] 100%  12/12 experts  layer 4: writing"
    terminal.truncate(0)
    assert cli.main(["convert", "--method", "AMXINT8", "--input", str(ckpt), "--output", str(out), "--quiet"]) == 0
    assert terminal.getvalue() == ""


def test_cli_errors_are_one_line(tmp_path, weights, capsys):
    absent = tmp_path / "absent"
    assert run(capsys, "--method", "AMXINT4", "--input", str(absent), "--output", str(tmp_path / "out")) == \
        (1, "", f"kt-moe: error: checkpoint directory not found: {absent}\n")
    ckpt, out = checkpoint(tmp_path, weights), tmp_path / "out"
    run(capsys, "--method", "AMXINT4", "--input", str(ckpt), "--output", str(out))
    code, stdout, stderr = run(capsys, "--method", "AMXINT8", "--input", str(ckpt), "--output", str(out))
    assert (code, stdout) == (1, "")
    assert stderr.startswith("kt-moe: error: ") and stderr.count("\n") == 1 and "--force to overwrite" in stderr
    with pytest.raises(SystemExit) as info:
        cli.main(["convert", "--method", "AMXINT4", "--input", str(ckpt), "--output", str(out), "--layers", "x"])
    assert info.value.code == 2
    assert "argument --layers: expected a layer, a range A-B" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["convert", "--method", "RAWINT4", "--input", str(ckpt), "--output", str(out)])
    assert "argument --method: invalid choice: 'RAWINT4'" in capsys.readouterr().err


def test_cli_huge_layer_range_is_one_line(tmp_path, weights, capsys):
    ckpt = checkpoint(tmp_path, weights)
    code, out, err = run(capsys, "--method", "AMXINT4", "--input", str(ckpt), "--output", str(tmp_path / "out"),
                         "--layers", "0-400000000")
    assert (code, out) == (1, "")
    assert err == (f"kt-moe: error: layer(s) 0, 3, 5-400000000 have no routed experts in {ckpt}; "
                   "its MoE layers are 1-2, 4\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["convert", "--method", "AMXINT4", "--input", str(ckpt), "--output", str(tmp_path / "out"),
                  "--layers", "1-99999999999"])
    assert info.value.code == 2
    assert "argument --layers: layer 99999999999 is out of range" in capsys.readouterr().err


def test_cli_process_reports_errors_without_traceback(tmp_path, run_python):
    result = run_python("-m", "kt_moe.cli", "convert", "--method", "AMXINT8", "--input", str(tmp_path / "absent"),
                        "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr == f"kt-moe: error: checkpoint directory not found: {tmp_path / 'absent'}\n"
