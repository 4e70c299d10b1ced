"""bf16 GEMM kernels (native/kernels/gemm_bf16.hpp) at every ISA level this CPU runs, plus the
emulated AMX level: all four layout combinations, tails in M, N and K (odd K included), strided
operands, alpha and accumulate, empty products, the blocking paths of the packed kernels, real
sizes at the best level, concurrent callers, and the test hook's input checks.

The reference is the float64 product of the same bf16 values: the kernels accumulate in fp32, so
only the summation order may differ (each element within a few K ulp of sum |a||b|)."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import kt_moe
from kt_moe import _native

ROOT = Path(__file__).resolve().parent.parent
SELECTABLE = kt_moe.cpu_info()["selectable"]
BEST = kt_moe.cpu_info()["best"]
LAYOUTS = [(a, b) for a in ("mk", "km") for b in ("nk", "kn")]

# (M, N, K): 1, 2, 7, 15, 16, 17, 33, 69 in every position, K odd, K = 16 (rank), N = 16.
SHAPES = [
    (1, 1, 1), (2, 7, 15), (7, 2, 16), (15, 17, 33), (16, 16, 32), (17, 15, 31), (33, 16, 17),
    (16, 33, 69), (69, 33, 16), (1, 69, 64), (69, 1, 33), (2, 16, 7), (16, 2, 7), (33, 69, 16),
    (17, 16, 69), (69, 17, 2),
]


def bf16(rows, cols, pad, gen):
    """A [rows, cols] bf16 operand; with pad > 0 a column slice of a wider tensor (row stride > cols)."""
    full = torch.randn(rows, cols + pad, generator=gen).to(torch.bfloat16)
    return full[:, :cols]


def operands(m, n, k, a_layout, b_layout, pad=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = bf16(m, k, pad, gen) if a_layout == "mk" else bf16(k, m, pad, gen)
    b = bf16(n, k, pad, gen) if b_layout == "nk" else bf16(k, n, pad, gen)
    c = torch.randn(m, n + pad, generator=gen)[:, :n]
    return a, b, c


def as_mk(a, a_layout):
    return a.double() if a_layout == "mk" else a.double().t()


def as_kn(b, b_layout):
    return b.double().t() if b_layout == "nk" else b.double()


def check(level, m, n, k, a_layout, b_layout, alpha=1.0, accumulate=False, pad=0, seed=0):
    a, b, c = operands(m, n, k, a_layout, b_layout, pad, seed)
    c0 = c.clone()
    _native.gemm_bf16_test(level, a, a_layout, b, b_layout, c, alpha, accumulate, m, n, k)
    am, bm = as_mk(a, a_layout), as_kn(b, b_layout)
    ref = alpha * (am @ bm) + (c0.double() if accumulate else 0.0)
    bound = abs(alpha) * (am.abs() @ bm.abs()) + (c0.double().abs() if accumulate else 0.0)
    err = (c.double() - ref).abs()
    # fp32 summation in any order: within (K + 2) units of 2^-24 of the sum of magnitudes.
    limit = (k + 2) * 2.0**-24 * bound + 1e-30
    where = f"{level} {a_layout}/{b_layout} m={m} n={n} k={k} alpha={alpha} acc={accumulate} pad={pad}"
    assert bool((err <= limit).all()), f"{where}: worst excess {(err - limit).max().item():.3e}"
    if ref.norm() > 0:
        assert (err.norm() / ref.norm()).item() <= 1e-5, where
    return c


@pytest.mark.parametrize("a_layout,b_layout", LAYOUTS)
@pytest.mark.parametrize("level", SELECTABLE)
def test_layouts_and_tails(level, a_layout, b_layout):
    for i, (m, n, k) in enumerate(SHAPES):
        check(level, m, n, k, a_layout, b_layout, alpha=(1.0, -0.75, 2.5)[i % 3], accumulate=i % 2 == 1,
              pad=(0, 5, 64)[i % 3], seed=i)


@pytest.mark.parametrize("level", SELECTABLE)
def test_blocked_paths(level):
    """Shapes that cross the packed kernels' blocks: the weight read as [K, N] in several row blocks
    and column panels (partial sums kept between blocks; for AMX's few rows, passes of 4 chunks of 16
    rows, or of 3 for a weight of more than 1 MB with rows 4 KB apart or more, the last pass partial),
    a long K, and many tokens."""
    check(level, 33, 2048, 290, "mk", "kn", alpha=0.5, accumulate=True, pad=3)
    check(level, 2, 2048, 200, "mk", "kn")
    check(level, 12, 2048, 300, "mk", "kn", accumulate=True, pad=5)
    check(level, 20, 2050, 300, "mk", "kn", pad=3)
    check(level, 9, 7200, 160, "mk", "kn")
    check(level, 40, 40, 13001, "mk", "nk", pad=2)
    check(level, 20, 1100, 96, "km", "nk", accumulate=True)
    check(level, 300, 48, 40, "km", "kn")


@pytest.mark.parametrize("level", SELECTABLE)
def test_empty_products(level):
    a, b, c = operands(3, 4, 0, "mk", "nk")
    c0 = c.clone()
    _native.gemm_bf16_test(level, a, "mk", b, "nk", c, 2.0, True, 3, 4, 0)
    assert torch.equal(c, c0)
    _native.gemm_bf16_test(level, a, "mk", b, "nk", c, 2.0, False, 3, 4, 0)
    assert torch.equal(c, torch.zeros(3, 4))
    for m, n in ((0, 5), (5, 0), (0, 0)):
        a, b, c = operands(m, n, 7, "km", "kn")
        _native.gemm_bf16_test(level, a, "km", b, "kn", c, 1.0, False, m, n, 7)
        assert c.shape == (m, n)


@pytest.mark.parametrize("a_layout,b_layout", [("mk", "nk"), ("mk", "kn")])
def test_real_sizes_at_best_level(a_layout, b_layout):
    """The engines' products at DeepSeek-V2-Lite sizes: 12 tokens, H=2048, I=1408; the down
    projection's weight as a column half of a wider tensor."""
    if b_layout == "nk":
        check(BEST, 12, 1408, 2048, a_layout, b_layout, seed=1)
        check(BEST, 12, 2048, 1408, a_layout, b_layout, pad=1408, seed=2)
    else:
        check(BEST, 12, 2048, 1408, a_layout, b_layout, seed=3)
        check(BEST, 12, 1408, 2048, a_layout, b_layout, pad=1408, seed=4)


@pytest.mark.parametrize("level", sorted({BEST, "amx_emulated"}))
def test_lora_products(level):
    m = 9 if level == "amx_emulated" else 48
    check(level, m, 16, 2048, "mk", "nk")       # A x: x [T, H] x lora_A [r, H]
    check(level, m, 1408, 16, "mk", "nk")       # B (A x): [T, r] x lora_B [I, r]
    check(level, m, 16, 2048, "mk", "kn")       # B^T d: d [T, H] x lora_B [H, r] (a P narrower than 32 columns)
    check(level, 1408, 16, m, "km", "kn")       # dB: dg^T [I, T] x (A x) [T, r]
    check(level, 16, 2048, m, "km", "kn")       # dA: (B^T dg)^T [r, T] x x [T, H]


@pytest.mark.skipif("amx" not in SELECTABLE, reason="this CPU has no AMX")
def test_emulated_amx_is_bit_identical_to_amx():
    """The emulation follows the SDM's TDPBF16PS (even/odd fp32 sums, DAZ/FTZ) closely enough to
    reproduce the hardware's results bit for bit, denormal inputs (read as zero) included."""
    for i, (m, n, k, a_layout, b_layout) in enumerate(
            [(16, 16, 32, "mk", "nk"), (33, 40, 100, "mk", "nk"), (17, 50, 77, "mk", "kn"), (5, 300, 64, "km", "nk"),
             (2, 2048, 300, "mk", "kn")]):
        a, b, c = operands(m, n, k, a_layout, b_layout, seed=i)
        a[0] = 1e-39  # bf16 denormals
        results = []
        for level in ("amx", "amx_emulated"):
            out = c.clone()
            _native.gemm_bf16_test(level, a, a_layout, b, b_layout, out, 0.5, True, m, n, k)
            results.append(out)
        assert torch.equal(results[0], results[1]), (m, n, k, a_layout, b_layout)


def test_concurrent_callers_get_their_own_scratch_and_tiles():
    results, errors = {}, []
    a, b, _ = operands(12, 1408, 2048, "mk", "nk", seed=5)
    ref = (a.double() @ b.double().t()).float()

    def work(i):
        try:
            for _ in range(3):
                c = torch.empty(12, 1408)
                _native.gemm_bf16_test(BEST, a, "mk", b, "nk", c, 1.0, False, 12, 1408, 2048)
                results[i] = c
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for c in results.values():
        assert ((c - ref).norm() / ref.norm()).item() < 1e-5


def test_hook_rejects_bad_input():
    a, b, c = operands(4, 5, 6, "mk", "nk")
    call = _native.gemm_bf16_test
    with pytest.raises(ValueError, match="unknown ISA level 'sse9'"):
        call("sse9", a, "mk", b, "nk", c, 1.0, False, 4, 5, 6)
    with pytest.raises(ValueError, match="a_layout"):
        call("generic", a, "km_", b, "nk", c, 1.0, False, 4, 5, 6)
    with pytest.raises(ValueError, match="b_layout"):
        call("generic", a, "mk", b, "NK", c, 1.0, False, 4, 5, 6)
    with pytest.raises(ValueError, match="a: expected dtype bfloat16"):
        call("generic", a.float(), "mk", b, "nk", c, 1.0, False, 4, 5, 6)
    with pytest.raises(ValueError, match="c: expected dtype float32"):
        call("generic", a, "mk", b, "nk", c.double(), 1.0, False, 4, 5, 6)
    with pytest.raises(ValueError, match=r"b: expected shape \(5, 6\), got \(6, 5\)"):
        call("generic", a, "mk", b.t().contiguous(), "nk", c, 1.0, False, 4, 5, 6)
    with pytest.raises(ValueError, match=r"a: expected shape \(6, 4\)"):
        call("generic", a, "km", b, "nk", c, 1.0, False, 4, 5, 6)
    with pytest.raises(ValueError, match="stride"):
        call("generic", a, "mk", b.t().contiguous().t(), "nk", c, 1.0, False, 4, 5, 6)
    with pytest.raises(ValueError, match="2-d"):
        call("generic", a.reshape(1, 4, 6), "mk", b, "nk", c, 1.0, False, 4, 5, 6)
    with pytest.raises(ValueError, match="m, n and k"):
        call("generic", a, "mk", b, "nk", c, 1.0, False, -4, 5, 6)
    overlapping = torch.zeros(30, dtype=torch.float32).as_strided((4, 5), (2, 1))
    with pytest.raises(ValueError, match="row stride"):
        call("generic", a, "mk", b, "nk", overlapping, 1.0, False, 4, 5, 6)
    missing = [lv for lv in ("avx512", "avx512_bf16", "amx") if lv not in SELECTABLE]
    for level in missing:
        with pytest.raises(ValueError, match="not available on this CPU"):
            call(level, a, "mk", b, "nk", c, 1.0, False, 4, 5, 6)


def test_bench_runs_and_checks_every_level(tmp_path):
    json_out = tmp_path / "gemm.jsonl"
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gemm.py"), "--tokens", "3", "--shapes",
                          "lora_a,lora_grad", "--repeats", "2", "--min-ms", "1", "--cache-mb", "0",
                          "--levels", ",".join(SELECTABLE), "--json-out", str(json_out)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in json_out.read_text().splitlines()]
    assert {(r["shape"], r["impl"]) for r in records} == {
        (s, impl) for s in ("lora_a", "lora_grad") for impl in ["torch-bf16"] + SELECTABLE}
    for r in records:
        assert r["median_ms"] > 0 and r["gflop_per_s"] > 0
        assert r["rel_err"] < (1e-5 if r["impl"] != "torch-bf16" else 1e-2), r
