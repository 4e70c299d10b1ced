"""`kt-moe demo` and bench/bench_moe.py run end to end at a small size: both examples, every
method listed and run, errors within the bounds the tests hold each
method to, progress shown as cases run; the table's rows, flags and progress line; --help defaults."""

import importlib.util
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import inference_helpers
import sft_helpers
import test_inference_quantized
import test_llamafile
import test_sft_quantized
from kt_moe import cli
from kt_moe.benchmark.cases import BASELINE_NAMES, ERROR_BOUNDS, error_bound
from kt_moe.benchmark.report import TABLE_WIDTH, Reporter
from kt_moe.config import INFERENCE_METHODS, SFT_METHODS

ROOT = Path(__file__).resolve().parent.parent
# The bench's sft gradients here come from one and three tokens: the quantized bases' error is then a
# draw of few tokens (the INT4 methods reach 0.27 at q = 1 in tests/test_sft_quantized.py, which
# checks the bars from q = 7 on), so this smoke test only bounds them by twice the bars.
GRAD_BOUND_FACTOR = {"AMXINT8_SFT": 2, "AMXINT4_SFT": 2, "AMXINT4_KGroup_SFT": 2, "AMXFP8_SFT": 2}


def test_error_bounds_are_the_tests_bounds():
    assert ERROR_BOUNDS["BF16"] == inference_helpers.TOL
    assert ERROR_BOUNDS["AMXBF16_SFT"] == sft_helpers.TOL
    for case, bound in test_inference_quantized.VS_ORIGINAL.items():  # methods and "AMXINT4:<group>" cases
        assert error_bound(case) == bound
    for method in ("AMXINT8_SFT", "AMXINT4_SFT", "AMXFP8_SFT"):
        assert ERROR_BOUNDS[method] == test_sft_quantized.VS_ORIGINAL[method]
    assert ERROR_BOUNDS["AMXINT4_KGroup_SFT"] == test_sft_quantized.VS_ORIGINAL_OTHER_KGROUP  # groups of 128
    assert ERROR_BOUNDS["LLAMAFILE"] == test_llamafile.Q8_0_VS_ORIGINAL  # the bench's default gguf_type
    assert set(ERROR_BOUNDS) == set(INFERENCE_METHODS) | set(SFT_METHODS) | set(BASELINE_NAMES)


def test_demo_runs_both_examples(capsys):
    assert cli.main(["demo", "--shape", "small", "--tokens", "8", "--repeats", "1"]) == 0
    out, err = capsys.readouterr()
    assert "\nInference: forward(" in out and "\nLoRA fine-tuning: forward_sft(" in out and "spec" not in out
    assert "'bound': the error the tests allow the method" in out
    for method in BASELINE_NAMES + INFERENCE_METHODS + SFT_METHODS:
        assert f" {method} " in out, method
        assert f"{method}: setting up" in err, method  # progress, as each case starts
    assert err.count("timing ") == 2  # one line per example (the rounds are redrawn on a terminal only)
    assert "JSON" not in out


def test_demo_rejects_bad_numbers(run_python):
    out = run_python("-m", "kt_moe.cli", "demo", "--tokens", "0")
    assert out.returncode != 0 and "must be positive" in out.stderr


def test_bench_prints_table_and_json_lines(tmp_path):
    json_out = tmp_path / "bench.jsonl"
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_moe.py"), "--shape", "small", "--q", "1,3",
                          "--repeats", "2", "--warmup", "1", "--mode", "both", "--json-out", str(json_out)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "median ms" in out.stdout
    records = [json.loads(line) for line in json_out.read_text().splitlines()]
    gemm = [r for r in records if r["kind"] == "torch_gemm"]
    cases = [r for r in records if r["kind"] == "case"]
    assert len(gemm) == 1 and gemm[0]["gflop_per_s"] > 0
    assert {r["method"] for r in cases} == set(BASELINE_NAMES) | set(INFERENCE_METHODS) | set(SFT_METHODS)
    assert {r["q"] for r in cases} == {1, 3}
    for r in cases:
        assert r["status"] == "ok", r
        if r["status"] == "ok":
            assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
            bound = ERROR_BOUNDS[r["method"]]
            assert r["err_bound"] == bound and r["err_out"] < bound, r
            assert r["vs_torch"] is not None and r["vs_grouped_mm"] is not None and r["threads"] == 2
            assert r["cpu"] and r["isa_levels"] and r["torch"] == torch.__version__
            if r["mode"] == "sft":
                assert r["err_grad"] < bound * GRAD_BOUND_FACTOR.get(r["method"], 1) and not r["grads_missing"]
        else:
            assert r["reason"]


def test_slots_filled_by_a_few_built_experts():
    """A replicated shape's problem: slot e holds built expert e % built; the reference and a kt-moe
    method see the same layer."""
    from kt_moe.benchmark.cases import ktmoe_wrapper
    from kt_moe.benchmark.problem import Problem
    from kt_moe.benchmark.shapes import SHAPES
    from kt_moe.reference import moe_forward
    problem = Problem(SHAPES["small"], 5, 4, built_experts=3)
    assert problem.experts[0].shape[0] == 3
    assert problem.expert_map.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    gate, up, down = problem.experts
    slots = [torch.stack([m[e] for e in problem.expert_map.tolist()]) for m in (gate, up, down)]
    expected = moe_forward(problem.x, problem.expert_ids, problem.weights, *slots)
    torch.testing.assert_close(problem.reference("inference").out, expected)  # fp32, summed in another order
    out = ktmoe_wrapper("BF16", problem, threads=2).forward(problem.x, problem.expert_ids, problem.weights)
    err = ((out.float() - expected).norm() / expected.norm()).item()
    assert err < ERROR_BOUNDS["BF16"]
    with pytest.raises(ValueError, match="sft reference needs one built expert per slot"):
        problem.reference("sft")


@pytest.mark.parametrize("argv", [["--shape", "deepseek-v3"], ["--shape", "deepseek-v3", "--methods", "AMXINT4_SFT"],
                                  ["--shape", "deepseek-v3", "--methods", "AMXINT4", "--mode", "both"]])
def test_bench_runs_a_replicated_shape_with_inference_methods_only(capsys, argv):
    with pytest.raises(SystemExit):
        bench_script("bench_moe").parse_args(argv)
    assert "--shape deepseek-v3 runs inference methods only, named in --methods (8 distinct experts" in \
        capsys.readouterr().err
    bench_script("bench_moe").parse_args(["--shape", "deepseek-v3", "--methods", "AMXINT4"])


def test_bench_runs_a_replicated_shape_without_baselines(tmp_path, monkeypatch):
    bench = bench_script("bench_moe")
    monkeypatch.setattr(bench, "REPLICATED_SHAPES", {"small": 3})  # small, built as 3 distinct experts
    json_out = tmp_path / "bench.jsonl"
    assert bench.main(["--shape", "small", "--q", "2", "--methods", "BF16,AMXINT8", "--repeats", "1",
                       "--warmup", "0", "--json-out", str(json_out)]) == 0
    cases = [r for r in map(json.loads, json_out.read_text().splitlines()) if r["kind"] == "case"]
    assert [r["method"] for r in cases] == ["BF16", "AMXINT8"]
    for r in cases:
        assert r["status"] == "ok" and r["err_out"] < r["err_bound"] and r["vs_torch"] is None, r


def record(**fields):
    base = dict(shape="small", q=8, mode="inference", method="AMXINT4", threads=2, pools=1, isa="avx512", status="ok",
                median_ms=1.0, min_ms=1.0, max_ms=1.0, tokens_per_s=8.0, gb_per_s=None, read_share=None,
                gflop_per_s=1.0, vs_torch=1.0, vs_grouped_mm=1.0, err_out=0.1, err_grad=None, err_bound=0.15, grads_missing=[])
    return dict(base, **fields)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_rows_flag_only_errors_above_their_bound(capsys):
    reporter = Reporter(io.StringIO(), io.StringIO())
    for fields in [dict(err_out=0.149), dict(err_out=0.151), dict(mode="sft", err_out=0.1, err_grad=0.2),
                   dict(method="RAWINT4", err_bound=None, err_out=0.5)]:
        reporter.case(record(**fields))
    rows = capsys.readouterr().out.splitlines()
    assert [row.split()[-3:] for row in rows] == [["1.5e-01", "n/a", "1.5e-01"], ["1.5e-01!", "n/a", "1.5e-01"],
                                                   ["1.0e-01", "2.0e-01!", "1.5e-01"], ["5.0e-01", "n/a", "n/a"]]


def test_failed_row_shows_the_whole_reason(capsys):
    reason = "RuntimeError: " + " ".join(f"word{i}" for i in range(100))
    Reporter(io.StringIO(), io.StringIO()).case(record(status="error", reason=reason))
    row, *below = capsys.readouterr().out.splitlines()
    assert row.split()[-2:] == ["avx512", "error:"]
    assert len(below) > 1 and all(line.startswith("    ") and len(line) <= TABLE_WIDTH for line in below)
    assert " ".join(" ".join(below).split()) == reason


def test_progress_is_redrawn_on_a_terminal_and_erased_by_the_table(capsys):
    terminal = Terminal()
    reporter = Reporter(io.StringIO(), terminal)
    reporter.progress("AMXINT4: setting up")
    reporter.progress("timing: round 1/3", True)
    assert terminal.getvalue() == "\rAMXINT4: setting up\rtiming: round 1/3  "
    reporter.case(record())
    assert terminal.getvalue().endswith("\r" + " " * len("timing: round 1/3") + "\r")
    assert capsys.readouterr().out.split()[3] == "AMXINT4"
    elsewhere = io.StringIO()
    reporter = Reporter(io.StringIO(), elsewhere)
    reporter.progress("AMXINT4: setting up")
    reporter.progress("timing: round 1/3", True)  # left out: a line per round would flood a log
    assert elsewhere.getvalue() == "AMXINT4: setting up\n"


def bench_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,defaults", [
    ("bench_moe", ["--shape SHAPE comma list of small, dsv2-lite, qwen3-30b; deepseek-v3 with a few distinct experts "
                   "filling its slots (inference methods only) (default: small)",
                   "--q Q comma list of token counts (default: 1,128)", "--evict-mb", "(default: 512.0)",
                   "--repeats REPEATS timed steps per case (default: 10)"]),
    ("bench_gemm", ["--tokens TOKENS comma list of token counts T (default: 1,12,48,128)",
                    "--min-ms MIN_MS each repeat loops calls for at least this long (default: 20.0)"]),
    ("bench_qgemm", ["--formats FORMATS comma list of weight formats (default: "
                     "int8_channel,int4_group16,int4_kgroup64,int4_kgroup128)",
                     "--threads {1,2} threads per product (column halves) (default: 1)"]),
])
def test_bench_help_shows_defaults(capsys, name, defaults):
    with pytest.raises(SystemExit) as info:
        bench_script(name).parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # as one line, whatever the terminal's width
    assert info.value.code == 0
    for default in defaults:
        assert default in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_demo_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--tokens TOKENS tokens per call (default: 128)" in text
    assert "--steps STEPS training steps of the SFT example (default: 5)" in text


def test_bench_load_prints_rows_and_json_lines(capsys):
    assert bench_script("bench_load").main(["--shape", "small", "--methods", "AMXINT4,BF16", "--repeats", "1",
                                            "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["method"] for r in records] == ["AMXINT4", "BF16"]
    for r in records:
        assert r["kind"] == "load" and r["median_s"] > 0 and r["resident_mib"] > 0 and r["cpu"]
    bf16_layer_mib = 3 * 8 * 1024 * 512 * 2 / 2**20  # the small shape in bf16
    assert records[1]["resident_mib"] >= bf16_layer_mib > 2 * records[0]["resident_mib"]
    assert any(line.startswith("AMXINT4 ") for line in lines)


def test_bench_distributed_times_the_exchange_of_two_ranks():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_distributed.py"), "--shape", "small", "--q", "8",
                          "--repeats", "1", "--method", "AMXBF16_SFT"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [r["rank"] for r in records] == [0, 1]
    for r in records:
        assert r["kind"] == "expert_parallel" and r["experts"] == 4 and r["collective_calls"] == 5
        assert r["step_ms"] >= r["exchange_ms"] > 0 and r["sent_mb"] > 0 and r["cpu"]


def test_bench_distributed_traffic_model(capsys):
    bench = bench_script("bench_distributed")
    assert bench.main(["--traffic", "--q", "128"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["ranks"] for r in records] == [2, 4, 8]
    two = records[0]  # DeepSeek-V3: a token's 8 experts miss the other rank's 128 with probability C(128,8)/C(256,8)
    assert two["other_ranks"] == pytest.approx(1 - math.comb(128, 8) / math.comb(256, 8))
    assert two["forward_kb_per_token"] == pytest.approx(two["other_ranks"] * (6 * 7168 + 64) / 1e3)
    assert records[2]["step_mb_per_rank"] > records[1]["step_mb_per_rank"] > two["step_mb_per_rank"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--shape", "deepseek-v3"])  # too large to build here: --traffic only


def test_bench_load_rejects_an_unknown_method(capsys):
    with pytest.raises(SystemExit):
        bench_script("bench_load").parse_args(["--methods", "AMXINT4,INT3"])
    assert "unknown method(s) INT3" in capsys.readouterr().err
