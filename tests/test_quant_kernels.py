"""Quantized GEMM kernels (native/kernels/gemm_quant.hpp) at every ISA level this CPU runs, plus
the emulated AMX level: INT8 per-channel and INT4 group-32 weights (kt_moe.quant's canonical
formats) times activations quantized per (row, K group).

Two references per product, as DESIGN.md section 7 asks for quantized bases:
  - the float64 product of the dequantized activation records and the dequantized weight: the
    group dot products are exact integers, so only the fp32 accumulation order may differ (tight);
  - the fp32 product of the unquantized operands: checks the scheme (loose).
Also: the activation quantizer's documented rounding (bit-exact at every level), tails in M, N
and K, column ranges, gathered rows, accumulate, the levels agreeing with each other, and the test
hooks' input checks."""

import functools
import threading

import pytest
import torch

import kt_moe
from kt_moe import _native
from kt_moe.quant import (dequantize_int4_group32, dequantize_int8_channel, quantize_int4_group32,
                          quantize_int8_channel)

SELECTABLE = kt_moe.cpu_info()["selectable"]
BEST = kt_moe.cpu_info()["best"]
FORMATS = ["int8_channel", "int4_group32"]
MS = [1, 2, 3, 7, 16, 17, 48, 129]
# (N, K) per format: N past whole 16-column blocks, K past whole groups where the format allows it
# (INT4 needs K % 32 == 0; INT8 groups are 64 wide, so K = 32, 100, 200 end in partial groups).
SHAPES = {"int8_channel": [(1, 100), (33, 64), (50, 200), (16, 32)],
          "int4_group32": [(1, 96), (33, 64), (50, 160), (16, 32)]}


class Weight:
    """An fp32 weight [N, K], its canonical quantization, the packed QuantWeight and the dequantized
    fp32 matrix the kernels must reproduce. random_codes: canonical tensors drawn at random instead
    of quantized from w (fast for big shapes; self.w is then the dequantized matrix)."""

    def __init__(self, fmt, n, k, seed=0, random_codes=False):
        gen = torch.Generator().manual_seed(seed)
        self.fmt, self.n, self.k = fmt, n, k
        self.w = torch.randn(n, k, generator=gen) / k ** 0.5
        if random_codes and fmt == "int4_group32":
            codes = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8)
            scale = torch.rand(n, k // 32, generator=gen) * 0.02
            zero = torch.randint(0, 16, (n, k // 32), generator=gen, dtype=torch.uint8)
            self.packed = _native.quant_pack_int4(codes, scale, zero)
            self.dequant = self.w = dequantize_int4_group32(codes, scale, zero)
        elif fmt == "int8_channel":
            q, scale = quantize_int8_channel(self.w)
            self.packed = _native.quant_pack_int8(q, scale)
            self.dequant = dequantize_int8_channel(q, scale)
        else:
            codes, scale, zero = quantize_int4_group32(self.w)
            self.packed = _native.quant_pack_int4(codes, scale, zero)
            self.dequant = dequantize_int4_group32(codes, scale, zero)


@functools.lru_cache(maxsize=None)
def weight(fmt, n, k, seed=0):
    """Weight(...), built once per session (kt_moe.quant's INT4 quantizer searches clipping ratios)."""
    return Weight(fmt, n, k, seed)


def quantize(level, fmt, a, pad=0):
    """Activation records of bf16 a [M, K] from the quantizer of `level` (pad: extra bytes per record)."""
    layout = _native.quant_act_layout(fmt, a.shape[1])
    records = torch.full((a.shape[0], layout["row_bytes"] + pad), 0xA5, dtype=torch.uint8)
    _native.quantize_activations_test(level, fmt, a, records)
    return records


def fields(records, fmt, k):
    """(q int8 [M, k_padded], scale fp32 [M, groups], sum fp32 [M, groups]) of activation records."""
    layout = _native.quant_act_layout(fmt, k)
    g, so, su = layout["groups"], layout["scale_offset"], layout["sum_offset"]
    q = records[:, :layout["k_padded"]].view(torch.int8)
    return q, records[:, so:so + 4 * g].view(torch.float32), records[:, su:su + 4 * g].view(torch.float32)


def dequantize_records(records, fmt, k):
    """fp32 [M, k]: q * scale of each group."""
    q, scale, _ = fields(records, fmt, k)
    group = _native.quant_act_layout(fmt, k)["group"]
    return (q.float() * scale.repeat_interleave(group, dim=1))[:, :k]


def product_bound(a, w):
    """Per output, the magnitude the fp32 accumulation works on: sum_k |a| |w|, plus for INT8 the
    zero-point term the kernels add and take away again (weights are stored as q + 128)."""
    bound = a.abs().double() @ w.dequant.abs().double().t()
    if w.fmt == "int8_channel":
        scale = w.dequant.abs().amax(dim=1).double() / 127
        bound += 128 * a.abs().double().sum(dim=1, keepdim=True) * scale[None, :]
    return bound


def run(level, w, records, m, n0=0, n1=None, c=None, accumulate=False, row_ids=None):
    n1 = w.n if n1 is None else n1
    c = torch.zeros(m, w.n) if c is None else c
    _native.gemm_quant_test(level, w.packed, records, c, n0, n1, accumulate, row_ids)
    return c


def check_close(out, ref, bound, where, tol=1e-5):
    err = (out.double() - ref.double()).abs()
    assert bool((err <= tol * bound + 1e-30).all()), f"{where}: worst excess {(err - tol * bound).max().item():.3e}"
    if ref.norm() > 0:
        assert ((out.double() - ref.double()).norm() / ref.double().norm()).item() <= tol, where


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("level", SELECTABLE)
def test_matches_dequantized_reference(level, fmt):
    for i, (n, k) in enumerate(SHAPES[fmt]):
        w = weight(fmt, n, k, seed=i)
        for j, m in enumerate(MS):
            gen = torch.Generator().manual_seed(500 + 100 * i + j)
            a = torch.randn(m, k, generator=gen).to(torch.bfloat16)
            records = quantize(level, fmt, a, pad=(0, 4, 64)[j % 3])
            out = run(level, w, records, m)
            a_deq = dequantize_records(records, fmt, k)
            ref = a_deq.double() @ w.dequant.double().t()
            check_close(out, ref, product_bound(a_deq, w), f"{level} {fmt} m={m} n={n} k={k}")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("level", SELECTABLE)
def test_column_ranges_gather_and_accumulate(level, fmt):
    n, k, m = 70, 128, 19
    w = weight(fmt, n, k, seed=3)
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(40, k, generator=gen).to(torch.bfloat16)
    records = quantize(level, fmt, a)
    a_deq = dequantize_records(records, fmt, k)
    row_ids = torch.randint(0, 40, (m,), generator=gen, dtype=torch.int32)
    ref = a_deq[row_ids.long()].double() @ w.dequant.double().t()
    bound = product_bound(a_deq[row_ids.long()], w)
    for n0, n1 in [(0, 70), (16, 70), (0, 16), (32, 48), (64, 70), (48, 64), (32, 32)]:
        base = torch.randn(m, n + 5, generator=gen)  # ldc > N; columns outside [n0, n1) untouched
        for accumulate in (False, True):
            c = base.clone()
            run(level, w, records, m, n0, n1, c, accumulate, row_ids)
            expect = ref[:, n0:n1] + (base[:, n0:n1].double() if accumulate else 0.0)
            check_close(c[:, n0:n1], expect, bound[:, n0:n1] + base[:, n0:n1].abs().double(),
                        f"{level} {fmt} [{n0}, {n1}) acc={accumulate}")
            assert torch.equal(c[:, :n0], base[:, :n0]) and torch.equal(c[:, n1:], base[:, n1:])


@pytest.mark.parametrize("fmt", FORMATS)
def test_levels_agree(fmt):
    """The integer group sums are exact at every level; only the fp32 order may differ."""
    w = weight(fmt, 75, 192, seed=5)
    a = torch.randn(21, 192, generator=torch.Generator().manual_seed(1005)).to(torch.bfloat16)
    records = quantize("generic", fmt, a)
    outs = {level: run(level, w, records, 21) for level in SELECTABLE}
    bound = product_bound(dequantize_records(records, fmt, 192), w)
    for level, out in outs.items():
        check_close(out, outs["generic"], bound, f"{level} vs generic", tol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("level", SELECTABLE)
def test_activation_quantizer_rounding(level, fmt):
    """Per group: amax = max |a|; scale = amax / 127; q = round_half_even(a * (127 / amax)) in fp32;
    sum = sum of q; groups without a normal number quantize to zero (scale 0); K padding is zero."""
    k = 100 if fmt == "int8_channel" else 96
    gen = torch.Generator().manual_seed(11)
    a = (torch.randn(9, k, generator=gen) * torch.logspace(-3, 3, 9)[:, None]).to(torch.bfloat16)
    a[1, :] = 0
    a[2, :40] = 1e-39  # bf16 denormals
    a[3, 5] = 63.5 / 127 * 2.0  # with amax 2 below: a * (127 / amax) = 63.5, a tie
    a[3, 6] = -2.0
    layout = _native.quant_act_layout(fmt, k)
    group, groups = layout["group"], layout["groups"]
    records = quantize(level, fmt, a)
    q, scale, total = fields(records, fmt, k)
    x = torch.zeros(9, layout["k_padded"])
    x[:, :k] = a.float()
    x = x.view(9, groups, group)
    amax = x.abs().amax(dim=2)
    normal = amax >= torch.finfo(torch.float32).tiny
    inv = torch.where(normal, torch.tensor(127.0) / amax, torch.zeros(()))
    q_ref = torch.round(x * inv[..., None]).to(torch.int8)
    assert torch.equal(q.view(9, groups, group), q_ref)
    assert torch.equal(scale, torch.where(normal, amax / torch.tensor(127.0), torch.zeros(())))
    assert torch.equal(total, q_ref.float().sum(dim=2))
    assert q[3, 5].item() == 64  # the tie went to the even neighbour
    assert torch.equal(records, quantize("generic", fmt, a))  # every level: the same records


@pytest.mark.parametrize("fmt", FORMATS)
def test_scheme_error_against_unquantized_product(fmt):
    """The whole scheme (weights and activations quantized) against the fp32 product, at the best
    level on an expert-sized shape (measured: INT8 0.010, INT4 0.078, mostly from the weights)."""
    w = weight(fmt, 352, 1024, seed=9)
    a = torch.randn(48, 1024, generator=torch.Generator().manual_seed(1009))
    out = run(BEST, w, quantize(BEST, fmt, a.to(torch.bfloat16)), 48)
    ref = a.to(torch.bfloat16).float() @ w.w.t()
    err = ((out - ref).norm() / ref.norm()).item()
    assert err <= (2e-2 if fmt == "int8_channel" else 0.1), err


@pytest.mark.parametrize("fmt", FORMATS)
def test_real_size_at_best_level(fmt):
    """DeepSeek-V2-Lite gate/up product, 48 tokens x [1408, 2048], and one decode token."""
    w = Weight(fmt, 1408, 2048, seed=13, random_codes=True)
    a = torch.randn(48, 2048, generator=torch.Generator().manual_seed(1013)).to(torch.bfloat16)
    records = quantize(BEST, fmt, a)
    a_deq = dequantize_records(records, fmt, 2048)
    ref = a_deq.double() @ w.dequant.double().t()
    bound = product_bound(a_deq, w)
    check_close(run(BEST, w, records, 48), ref, bound, f"{BEST} {fmt} m=48")
    check_close(run(BEST, w, records[:1], 1), ref[:1], bound[:1], f"{BEST} {fmt} m=1")


@pytest.mark.skipif("amx" not in SELECTABLE, reason="this CPU has no AMX")
@pytest.mark.parametrize("fmt", FORMATS)
def test_tile_emulation_matches_amx(fmt):
    """The emulated tile instructions give the hardware's int32 sums: the two builds of the AMX
    kernel differ only in FMA contraction (last fp32 bits)."""
    w = Weight(fmt, 40, 256, seed=17)
    a = torch.randn(33, 256, generator=torch.Generator().manual_seed(1017)).to(torch.bfloat16)
    records = quantize("amx", fmt, a)
    bound = product_bound(dequantize_records(records, fmt, 256), w)
    check_close(run("amx_emulated", w, records, 33), run("amx", w, records, 33), bound, "amx_emulated vs amx",
                tol=1e-6)


def test_concurrent_callers():
    """Threads with different row counts at once: each has its own scratch and tile state."""
    w = weight("int4_group32", 352, 512, seed=19)
    a = torch.randn(32, 512, generator=torch.Generator().manual_seed(1019)).to(torch.bfloat16)
    records = quantize(BEST, "int4_group32", a)
    ref = run(BEST, w, records, 32)
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                results[i] = run(BEST, w, records[: 16 + 8 * i], 16 + 8 * i)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, c in results.items():
        assert torch.equal(c, ref[: 16 + 8 * i])


def test_empty_products():
    w = weight("int8_channel", 20, 64)
    records = quantize("generic", "int8_channel", torch.ones(2, 64, dtype=torch.bfloat16))
    for level in SELECTABLE:
        c = torch.full((2, 20), 3.0)
        run(level, w, records, 2, 16, 16, c)  # empty column range
        assert torch.equal(c, torch.full((2, 20), 3.0))
        run(level, w, records, 0, c=torch.zeros(0, 20))  # no rows


def test_packed_sizes():
    assert _native.quant_pack_int8(torch.zeros(16, 64, dtype=torch.int8), torch.ones(16)).nbytes == 64 + 1024
    w = _native.quant_pack_int8(torch.zeros(17, 100, dtype=torch.int8), torch.ones(17))
    assert (w.format, w.n, w.k, w.nbytes) == ("int8_channel", 17, 100, 2 * (64 + 2 * 1024))
    w = _native.quant_pack_int4(torch.zeros(1408, 1024, dtype=torch.uint8), torch.ones(1408, 64),
                                torch.zeros(1408, 64, dtype=torch.uint8))
    assert (w.format, w.n, w.k) == ("int4_group32", 1408, 2048)
    assert w.nbytes == 88 * (64 * 320 + 64 * 16)  # 0.66 bytes per weight: codes, fp32 scales, zeros
    layout = _native.quant_act_layout("int4_group32", 2048)
    assert layout == dict(k=2048, group=32, groups=64, k_padded=2048, scale_offset=2048, sum_offset=2304,
                          row_bytes=2560)
    assert _native.quant_act_layout("int8_channel", 100)["group"] == 64


def test_hooks_reject_bad_input():
    w8 = weight("int8_channel", 20, 64)
    w4 = weight("int4_group32", 20, 64)
    rec = quantize("generic", "int8_channel", torch.ones(3, 64, dtype=torch.bfloat16))
    c = torch.zeros(3, 20)
    call = _native.gemm_quant_test
    with pytest.raises(ValueError, match="unknown ISA level 'sse9'"):
        call("sse9", w8.packed, rec, c, 0, 20)
    with pytest.raises(ValueError, match="multiple of 16"):
        call("generic", w8.packed, rec, c, 8, 20)
    with pytest.raises(ValueError, match="multiple of 16"):
        call("generic", w8.packed, rec, c, 0, 10)
    with pytest.raises(ValueError, match="not inside"):
        call("generic", w8.packed, rec, torch.zeros(3, 40), 0, 32)
    with pytest.raises(ValueError, match="not inside"):
        call("generic", w8.packed, rec, c, 16, 0)
    with pytest.raises(ValueError, match="fewer than n1 columns"):
        call("generic", w8.packed, rec, torch.zeros(3, 19), 0, 20)
    with pytest.raises(ValueError, match="m = 4 rows but 3 quantized"):
        call("generic", w8.packed, rec, torch.zeros(4, 20), 0, 20)
    with pytest.raises(ValueError, match=r"row_ids\[1\] = 3 is not in \[0, 3\)"):
        call("generic", w8.packed, rec, torch.zeros(2, 20), 0, 20, False, torch.tensor([0, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="row_ids: expected dtype int32, got int64"):
        call("generic", w8.packed, rec, torch.zeros(2, 20), 0, 20, False, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="records: rows shorter"):
        call("generic", w4.packed, rec[:, :64], c, 0, 20)
    with pytest.raises(ValueError, match="c: expected dtype float32, got float64"):
        call("generic", w8.packed, rec, c.double(), 0, 20)
    with pytest.raises(ValueError, match="row stride"):
        call("generic", w8.packed, rec, torch.zeros(60).as_strided((3, 20), (2, 1)), 0, 20)
    with pytest.raises(ValueError, match="needs k to be a multiple of 32"):
        _native.quant_pack_int4(torch.zeros(4, 40, dtype=torch.uint8), torch.ones(4, 2),
                                torch.zeros(4, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"zero points must be in \[0, 15\], got 16 at \[1, 0\]"):
        _native.quant_pack_int4(torch.zeros(4, 16, dtype=torch.uint8), torch.ones(4, 1),
                                torch.tensor([[0], [16], [0], [0]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="scale: dimension 0 is 3, expected 4"):
        _native.quant_pack_int8(torch.zeros(4, 16, dtype=torch.int8), torch.ones(3))
    with pytest.raises(ValueError, match="q: expected dtype int8, got uint8"):
        _native.quant_pack_int8(torch.zeros(4, 16, dtype=torch.uint8), torch.ones(4))
    with pytest.raises(ValueError, match="unknown format 'int3'"):
        _native.quant_act_layout("int3", 64)
    with pytest.raises(ValueError, match="k must be in"):
        _native.quant_act_layout("int8_channel", 0)
    with pytest.raises(ValueError, match="a: expected dtype bfloat16, got float32"):
        _native.quantize_activations_test("generic", "int8_channel", torch.ones(2, 64), rec)
    with pytest.raises(ValueError, match="out: rows shorter"):
        _native.quantize_activations_test("generic", "int8_channel", torch.ones(3, 64, dtype=torch.bfloat16),
                                          rec[:, :64])
    missing = [lv for lv in ("avx512", "avx512_bf16", "amx") if lv not in SELECTABLE]
    for level in missing:
        with pytest.raises(ValueError, match="not available on this CPU"):
            call(level, w8.packed, rec, c, 0, 20)
