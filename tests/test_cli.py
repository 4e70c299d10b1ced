"""The `kt-moe` command: validate on YAML, TOML and JSON files, schema, info, demo dispatch, and the
installed console script."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types

import pytest

import kt_moe
from kt_moe import cli, wrapper
from kt_moe.closed_pipe import SIGPIPE_STATUS
from kt_moe.config import KTMoEConfig
from kt_moe.config_files import ConfigFileError, load_config_file

VALID = dict(layer_idx=0, num_experts=8, num_experts_per_tok=2, hidden_size=64, moe_intermediate_size=32,
             num_gpu_experts=0, cpuinfer_threads=4, threadpool_count=2, weight_path=tempfile.gettempdir(),
             chunked_prefill_size=64, mode="sft", method="AMXBF16_SFT", lora_rank=8, lora_alpha=16.0)


def dump(kind, data):
    if kind == "json":
        return json.dumps(data)
    lines = []
    for key, value in data.items():
        text = json.dumps(value)  # a JSON scalar reads the same in YAML and TOML
        lines.append(f"{key}: {text}" if kind == "yaml" else f"{key} = {text}")
    return "\n".join(lines) + "\n"


def write(tmp_path, kind, data, name="config"):
    path = tmp_path / f"{name}.{kind}"
    path.write_text(dump(kind, data))
    return path


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", ["yaml", "toml", "json"])
def test_validate_valid_file(tmp_path, capsys, kind):
    assert run(capsys, "validate", str(write(tmp_path, kind, VALID))) == (0, "OK\n", "")


@pytest.mark.parametrize("kind", ["yaml", "toml", "json"])
def test_validate_invalid_file_lists_every_error(tmp_path, capsys, kind):
    path = write(tmp_path, kind, dict(VALID, num_experts=0, hidden_size=1.5, bogus=1))
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 1
    assert out.splitlines() == [
        f"{path}: num_experts: num_experts must be positive, got 0",
        f"{path}: hidden_size: hidden_size must be an integer, got float",
        f"{path}: bogus: unknown parameter 'bogus'",
    ]


def test_validate_cross_field_and_mode_rules(tmp_path, capsys):
    path = write(tmp_path, "yaml", dict(VALID, mode="inference", method="AMXINT4", num_experts_per_tok=9))
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 1
    assert out.splitlines() == [
        f"{path}: num_experts_per_tok: num_experts_per_tok (9) must not exceed num_experts (8)",
        f"{path}: lora_rank: lora_rank is only used with mode='sft' (got mode='inference')",
        f"{path}: lora_alpha: lora_alpha is only used with mode='sft' (got mode='inference')",
    ]


def test_validate_accepts_every_method(tmp_path, capsys):
    for method in wrapper.BACKENDS:
        mode = "sft" if method.endswith("_SFT") else "inference"
        extra = {} if mode == "sft" else dict(lora_rank=16, lora_alpha=32.0)
        path = write(tmp_path, "yaml", dict(VALID, mode=mode, method=method, **extra))
        assert run(capsys, "validate", str(path)) == (0, "OK\n", ""), method


@pytest.mark.parametrize("weight_path,problem", [
    ("{tmp}/absent", "weight_path '{tmp}/absent' does not exist"),
    ("{tmp}/config.json", "weight_path '{tmp}/config.json' is not a directory"),
    ("", "weight_path is empty"),
])
def test_validate_warns_about_weight_path(tmp_path, capsys, weight_path, problem):
    weight_path, problem = weight_path.format(tmp=tmp_path), problem.format(tmp=tmp_path)
    path = write(tmp_path, "json", dict(VALID, weight_path=weight_path))
    line = f"{path}: weight_path: {problem}: load_weights() will fail (load_weights_from_tensors() does not read it)"
    code, out, _ = run(capsys, "validate", str(path))
    assert (code, out.splitlines()) == (0, [line.replace("weight_path: ", "weight_path: warning: ", 1),
                                           "OK (1 warning)"])
    code, out, _ = run(capsys, "validate", "--strict", str(path))
    assert (code, out.splitlines()) == (1, [line])


def test_validate_strict_passes_a_good_file(tmp_path, capsys):
    assert run(capsys, "validate", "--strict", str(write(tmp_path, "toml", VALID))) == (0, "OK\n", "")


def test_validate_accepts_kt_moe_section_and_yml(tmp_path, capsys):
    path = tmp_path / "train.yml"
    path.write_text("trainer:\n  epochs: 3\nkt_moe:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in VALID.items()))
    assert run(capsys, "validate", str(path)) == (0, "OK\n", "")
    toml = tmp_path / "train.toml"
    toml.write_text("[kt_moe]\n" + dump("toml", VALID))
    assert load_config_file(toml) == VALID


@pytest.mark.parametrize("name,text,reason", [
    ("c.txt", "a: 1", "unsupported file type '.txt'"),
    ("c.yaml", "a: [1,\n", "invalid YAML at line"),
    ("c.toml", "a = = 1\n", "invalid TOML"),
    ("c.json", '{"a": 1,,}', "invalid JSON at line 1, column"),
    ("c.json", "[1, 2]", "expected a mapping of parameters at the top level, found list"),
    ("c.yaml", "", "expected a mapping of parameters at the top level, found nothing"),
    ("c.yaml", "- 1\n", "expected a mapping of parameters at the top level, found list"),
    ("c.json", '{"num_experts": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid JSON: nested too deeply"),
    ("c.yaml", "num_experts: " + "[" * 2000 + "]" * 2000, "invalid YAML: nested too deeply"),
    ("c.yaml", "".join(" " * i + "a:\n" for i in range(3000)), "invalid YAML: nested too deeply"),
    ("c.toml", "a = " + "{b = " * 5000 + "1" + "}" * 5000, "invalid TOML: nested too deeply"),
    ("c.json", '{"num_experts": ' + "9" * 5000 + "}", "invalid JSON: Exceeds the limit (4300 digits)"),
    ("c.yaml", "num_experts: !!timestamp 2020-99-99", "invalid YAML: month must be in 1..12"),
    ("c.yaml", "num_experts: !!float abc", "invalid YAML: could not convert string to float"),
    ("c.yaml", "a: \x01", "invalid YAML: unacceptable character #x0001: special characters are not allowed; in "),
])
def test_validate_unusable_file_is_one_line(tmp_path, capsys, name, text, reason):
    path = tmp_path / name
    path.write_text(text)
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 1
    assert len(out.splitlines()) == 1 and out.startswith(f"{path}: {reason}"), out
    with pytest.raises(ConfigFileError) as info:
        load_config_file(path)
    assert isinstance(info.value, ValueError) and info.value.path == str(path)


def test_validate_missing_and_unreadable_file(tmp_path, capsys):
    code, out, _ = run(capsys, "validate", str(tmp_path / "absent.yaml"))
    assert (code, out) == (1, f"{tmp_path / 'absent.yaml'}: cannot read file: No such file or directory\n")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    code, out, _ = run(capsys, "validate", str(binary))
    assert (code, out) == (1, f"{binary}: cannot read file: not UTF-8 text\n")


def test_schema_prints_the_json_schema(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0
    assert json.loads(out) == KTMoEConfig.model_json_schema()
    assert out.startswith('{\n  "additionalProperties"')


def test_info_prints_levels(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["levels"].strip().startswith("generic")
    assert fields["active"].strip() in fields["levels"]


def test_info_reports_bad_isa_env_as_one_line(run_python):
    out = run_python("-m", "kt_moe.cli", "info", env={"KT_MOE_ISA": "sse9"})
    assert out.returncode == 1
    assert out.stderr.startswith("kt-moe: error: KT_MOE_ISA: unknown ISA level 'sse9'")
    assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr


def test_demo_dispatches_to_the_demo_module(monkeypatch, capsys):
    fake = types.ModuleType("kt_moe.demo")
    fake.add_arguments = lambda parser: parser.add_argument("--tokens", type=int, default=1)
    fake.run = lambda args: print("tokens", args.tokens) or 7
    monkeypatch.setitem(sys.modules, "kt_moe.demo", fake)
    monkeypatch.setattr("kt_moe.demo", fake, raising=False)
    assert run(capsys, "demo", "--tokens", "4") == (7, "tokens 4\n", "")
    assert run(capsys, "demo") == (7, "tokens 1\n", "")


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert (info.value.code, capsys.readouterr().out) == (0, f"kt-moe {kt_moe.__version__}\n")
    assert kt_moe.__version__ == importlib.metadata.version("kt-moe")


@pytest.mark.parametrize("command,status", [(["schema"], SIGPIPE_STATUS), (["info"], SIGPIPE_STATUS),
                                            (["validate", "{config}"], SIGPIPE_STATUS), (["--help"], 0)])
def test_closed_pipe_is_quiet(tmp_path, command, status):
    """The reader of stdout is gone before the first line (`kt-moe schema | head` once head exits)."""
    config = write(tmp_path, "json", VALID)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run([sys.executable, "-m", "kt_moe.cli", *(a.format(config=config) for a in command)],
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                             cwd=tmp_path)  # not the checkout: `-m` would import its kt_moe/, not the installed one
    finally:
        os.close(write_end)
    assert (out.returncode, out.stderr) == (status, "")


def test_unknown_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["schema", "--pretty"])
    assert info.value.code == 2
    assert "unrecognized arguments: --pretty" in capsys.readouterr().err


def test_installed_console_script(tmp_path):
    script = shutil.which("kt-moe")
    if script is None:
        pytest.skip("kt-moe console script not on PATH")
    path = write(tmp_path, "json", dict(VALID, threadpool_count=3))
    out = subprocess.run([script, "validate", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stdout == (f"{path}: moe_intermediate_size: moe_intermediate_size (32) must be divisible by "
                          "threadpool_count (3)\n")
    out = subprocess.run([script, "validate", str(write(tmp_path, "json", VALID, "ok"))],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "OK\n")
