"""Quantized GEMM kernels (native/kernels/gemm_quant.hpp) at every ISA level this CPU runs, plus
the emulated AMX level: INT8 per-channel, INT4 group-16 and INT4 k-group weights (kt_moe.quant's
canonical formats: the INT4 ones have fp16 scales and zero points in sixteenths of a code;
int4_kgroup, native/formats/int4_kgroup/layout.hpp, has groups of G = 64 or 128 k, with zero points
or symmetric, the fixed zero point 8) times activations quantized per (row, 64 k).

References, pure torch (the dequantized operands are exact in fp32; the products are taken in
float64):
  - exact: the product of the dequantized activation records and the dequantized weight. The
    integer dot products are exact, so only the fp32 accumulation order may differ (tight). The
    generic, avx2 and VNNI levels compute INT4 this way, bit-identically (avx2 INT8 too), and
    int4_kgroup at every level, the AMX tiles included (one scale per 64-k unit: no requantization);
  - requantized: for int4_group16 on AMX tiles (amx from quant_amx_min_rows rows on, amx_emulated
    always), the same product with the weights requantized to int8 per (column, 64-k unit) as
    gemm_quant.hpp defines it (tight; amx and amx_emulated bit-identical);
  - the fp32 product of the unquantized operands: checks the scheme (loose).
Also: the packed layout byte for byte, the activation quantizer's documented rounding (bit-exact at
every level), tails in M, N and K, column ranges, gathered rows, accumulate, all-zero requantized
units, and the test hooks' input checks."""

import functools
import threading

import pytest
import torch

import kt_moe
from kt_moe import _native
from kt_moe.quant import dequantize_int8_channel, quantize_int8_channel
from kt_moe.quant.int4_groups import dequantize_int4, quantize_int4

SELECTABLE = kt_moe.cpu_info()["selectable"]
BEST = kt_moe.cpu_info()["best"]
# The int4_kgroup variants under test: name -> (group size G, zero points). They share the format's
# activation records and kernels; the group size and the zero points are the packer's options.
KGROUPS = {"int4_kgroup64": (64, True), "int4_kgroup64_sym": (64, False),
           "int4_kgroup128": (128, True), "int4_kgroup128_sym": (128, False)}
FORMATS = ["int8_channel", "int4_group16", *KGROUPS]
ACT_FORMATS = ["int8_channel", "int4_group16", "int4_kgroup"]  # the registered formats' records
MS = [1, 2, 3, 7, 9, 16, 17, 24, 48, 70, 129]
# (N, K) per format: N past whole 16-column blocks, K past whole 64-k units (and, for INT4, past
# whole groups: K = 100, 40 and 130 end inside a group).
SHAPES = {"int8_channel": [(1, 100), (33, 64), (50, 200), (16, 32)],
          "int4_group16": [(1, 100), (33, 64), (50, 208), (16, 16), (20, 40)],
          **{fmt: [(1, 100), (33, 64), (50, 200), (20, 130), (16, 1408)] for fmt in KGROUPS}}
AMX_LEVELS = ("amx", "amx_emulated")
TINY = torch.finfo(torch.float32).tiny


# ---- references ------------------------------------------------------------------------------

def unpack_codes(codes):
    """uint8 [N, Kp / 2] -> the codes as float32 [N, Kp] (low nibble = even k)."""
    return torch.stack([codes & 0x0F, codes >> 4], dim=-1).reshape(codes.shape[0], -1).float()


def native_format(fmt):
    """The registered format of a FORMATS entry (the int4_kgroup variants are one format)."""
    return "int4_kgroup" if fmt in KGROUPS else fmt


def int4_options(fmt):
    """(group size, zero points) of an INT4 format of FORMATS."""
    return KGROUPS.get(fmt, (16, True))


def dequantize_int4_groups(codes, scale, zero, group):
    """The canonical INT4 matrix [N, Kp] in fp32, exact: (code - zero / 16) * scale per group of
    `group` k; zero None: symmetric groups, the fixed zero point 8."""
    z = 8.0 if zero is None else zero.float().repeat_interleave(group, dim=1) / 16
    return (unpack_codes(codes) - z) * scale.float().repeat_interleave(group, dim=1)


def requantize(w):
    """The AMX path's int8 weights: w fp32 [N, Kp] padded with zeros to whole 64-k units; per
    (column, unit) amax, S = amax / 127, w8 = round_half_even(w * (127 / amax)), or S = 0 and
    w8 = 0 when amax < FLT_MIN. Returns (w8 * S [N, units * 64], S [N, units])."""
    n, kp = w.shape
    units = -(-kp // 64)
    padded = torch.zeros(n, units * 64)
    padded[:, :kp] = w
    padded = padded.view(n, units, 64)
    amax = padded.abs().amax(dim=2)
    normal = amax >= TINY
    inv = torch.where(normal, torch.tensor(127.0) / amax, torch.zeros(()))
    s = torch.where(normal, amax / torch.tensor(127.0), torch.zeros(()))
    w8 = torch.round(padded * inv[..., None])
    assert bool((w8.abs() <= 127).all())
    return (w8 * s[..., None]).view(n, units * 64), s


class Weight:
    """A weight W [N, K] in a format of FORMATS, the packed QuantWeight, the dequantized fp32 matrix
    `dequant` [N, K] and, for int4_group16, the requantized matrix of the AMX path [N, units * 64].
    quantize: W = randn quantized by kt_moe.quant (self.w the original); otherwise canonical tensors
    drawn at random (every code, zero point 0..255, fp16 scales; self.w = the dequantized matrix)."""

    def __init__(self, fmt, n, k, seed=0, quantize=False):
        gen = torch.Generator().manual_seed(seed)
        self.fmt, self.n, self.k = fmt, n, k
        self.w = torch.randn(n, k, generator=gen) / k ** 0.5
        if fmt == "int8_channel":
            self.set_int8(*quantize_int8_channel(self.w))
            return
        group, zero_point = int4_options(fmt)
        if quantize and fmt == "int4_group16":
            from kt_moe.quant import quantize_int4_group16
            parts = quantize_int4_group16(self.w)
        elif quantize:
            parts = quantize_int4(self.w, group, zero_point)
        else:
            kp = -(-k // group) * group
            parts = (torch.randint(0, 256, (n, kp // 2), generator=gen, dtype=torch.uint8),
                     (torch.rand(n, kp // group, generator=gen) * 0.02 + 1e-3).half())
            if zero_point:
                parts += (torch.randint(0, 256, (n, kp // group), generator=gen, dtype=torch.uint8),)
        self.set_int4(*parts)
        if not quantize:
            self.w = self.dequant

    def set_int8(self, q, scale):
        self.packed = _native.quant_pack_int8(q, scale)
        self.dequant = dequantize_int8_channel(q, scale)

    def set_int4(self, codes, scale, zero=None):
        """Packs the canonical parts (zero None: symmetric int4_kgroup groups)."""
        self.codes, self.scale, self.zero = codes, scale, zero
        group, zero_point = int4_options(self.fmt)
        if self.fmt == "int4_group16":
            self.packed = _native.quant_pack_int4(codes, scale, zero, self.k)
        else:
            parts = [codes, scale] + ([zero] if zero_point else [])
            self.packed = _native.quant_pack("int4_kgroup", parts, self.k, group, zero_point)
        full = dequantize_int4_groups(codes, scale, zero, group)
        self.dequant = full[:, :self.k]
        if self.fmt == "int4_group16":
            self.requantized, self.unit_scales = requantize(full)

    def requantizes(self, level, m):
        """Whether the kernel of `level` multiplies m rows by the requantized INT4 weights (the
        int4_group16 AMX tiles; int4_kgroup's tiles multiply its codes as they are)."""
        return self.fmt == "int4_group16" and (level == "amx_emulated" or
                                               (level == "amx" and m >= _native.quant_amx_min_rows(self.fmt)))

    def same_order(self, level):
        """Whether `level` takes the fp32 order of the level its reference stands for (generic, or
        amx_emulated where it requantizes): bit-identical results. INT4: every level; INT8: avx2."""
        return self.fmt != "int8_channel" or level in ("generic", "avx2")

    def reference(self, level, m):
        """The matrix the kernel of `level` multiplies by for m rows."""
        return self.requantized if self.requantizes(level, m) else self.dequant


@functools.lru_cache(maxsize=None)
def weight(fmt, n, k, seed=0):
    """Weight(...), built once per session."""
    return Weight(fmt, n, k, seed)


def quantize(level, fmt, a, pad=0):
    """Activation records of bf16 a [M, K] from the quantizer of `level` (pad: extra bytes per record)."""
    layout = _native.quant_act_layout(native_format(fmt), a.shape[1])
    records = torch.full((a.shape[0], layout["row_bytes"] + pad), 0xA5, dtype=torch.uint8)
    _native.quantize_activations_test(level, native_format(fmt), a, records)
    return records


def fields(records, fmt, k):
    """(q int8 [M, k_padded], scale fp32 [M, groups], sum fp32 [M, sums]) of activation records."""
    layout = _native.quant_act_layout(native_format(fmt), k)
    so, su = layout["scale_offset"], layout["sum_offset"]
    q = records[:, :layout["k_padded"]].view(torch.int8)
    return (q, records[:, so:so + 4 * layout["groups"]].view(torch.float32),
            records[:, su:su + 4 * layout["sums"]].view(torch.float32))


def dequantize_records(records, fmt, k):
    """fp32 [M, k_padded]: q * scale of each group of 64 (zero past k)."""
    q, scale, _ = fields(records, fmt, k)
    return q.float() * scale.repeat_interleave(64, dim=1)


def product(a_deq, w_ref):
    """float64 a_deq [M, >= K'] @ w_ref [N, K']^T over the K' columns of w_ref."""
    return a_deq[:, :w_ref.shape[1]].double() @ w_ref.double().t()


def product_bound(a_deq, w_ref, w):
    """Per output, the magnitude the fp32 accumulation works on: sum_k |a| |w|, plus for INT8 the
    zero-point term the kernels add and take away again (weights are stored as q + 128)."""
    bound = a_deq[:, :w_ref.shape[1]].abs().double() @ w_ref.abs().double().t()
    if w.fmt == "int8_channel":
        scale = w.dequant.abs().amax(dim=1).double() / 127
        bound += 128 * a_deq.abs().double().sum(dim=1, keepdim=True) * scale[None, :]
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


def check_against_reference(level, w, records, out, m, where, row_ids=None):
    a_deq = dequantize_records(records, w.fmt, w.k)
    if row_ids is not None:
        a_deq = a_deq[row_ids.long()]
    w_ref = w.reference(level, m)
    check_close(out, product(a_deq, w_ref), product_bound(a_deq, w_ref, w), where)


# ---- the product -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("level", SELECTABLE)
def test_matches_reference(level, fmt):
    for i, (n, k) in enumerate(SHAPES[fmt]):
        w = weight(fmt, n, k, seed=i)
        for j, m in enumerate(MS):
            gen = torch.Generator().manual_seed(500 + 100 * i + j)
            a = torch.randn(m, k, generator=gen).to(torch.bfloat16)
            records = quantize(level, fmt, a, pad=(0, 4, 64)[j % 3])
            out = run(level, w, records, m)
            check_against_reference(level, w, records, out, m, f"{level} {fmt} m={m} n={n} k={k}")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("level", SELECTABLE)
def test_column_ranges_gather_and_accumulate(level, fmt):
    """m = 37 gathered rows: the amx level's tiles (2 whole row tiles and a tail) for INT4 too."""
    n, k, m = 70, 200, 37
    w = weight(fmt, n, k, seed=3)
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(50, k, generator=gen).to(torch.bfloat16)
    records = quantize(level, fmt, a)
    row_ids = torch.randint(0, 50, (m,), generator=gen, dtype=torch.int32)
    a_deq = dequantize_records(records, fmt, k)[row_ids.long()]
    w_ref = w.reference(level, m)
    ref, bound = product(a_deq, w_ref), product_bound(a_deq, w_ref, w)
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
    """The integer sums are exact at every level; only the fp32 order may differ. The avx2 level
    takes the generic level's order (bit-identical), and so do, for INT4, the VNNI levels, for
    int4_group16 amx and amx_emulated among themselves, and for int4_kgroup every level."""
    w = weight(fmt, 75, 200, seed=5)
    a = torch.randn(41, 200, generator=torch.Generator().manual_seed(1005)).to(torch.bfloat16)
    records = quantize("generic", fmt, a)
    for m in (7, 41):  # the amx level: VNNI below quant_amx_min_rows, tiles from there on
        outs = {level: run(level, w, records[:m], m) for level in SELECTABLE}
        a_deq = dequantize_records(records[:m], fmt, 200)
        for level, out in outs.items():
            ref = outs["amx_emulated" if w.requantizes(level, m) else "generic"]
            check_close(out, ref, product_bound(a_deq, w.reference(level, m), w), f"{level} m={m}", tol=1e-6)
            if w.same_order(level):
                assert torch.equal(out, ref), f"{level} m={m} is not bit-identical"


def extreme_weight(fmt, n, k):
    """A weight at its codes' extremes: int8_channel q = +127 (stored byte 255) in column 0, -127
    in column 1, +-127 alternating along k in column 2 (the sign pattern of extreme_activations'
    row 2), -128 (stored byte 0) in column 3, random signs of 127 elsewhere; INT4 codes 15 in
    column 0, 0 in column 1, 15 / 0 alternating in column 2, random 0 / 15 elsewhere, zero points 0
    and 255 (symmetric int4_kgroup: none, the fixed 8) and fp16 scales 1 and 1024."""
    gen = torch.Generator().manual_seed(31)
    w = Weight(fmt, n, k)
    signs = torch.randint(0, 2, (n, k), generator=gen) * 2 - 1
    signs[0], signs[1], signs[3] = 1, -1, -1
    signs[2] = torch.arange(k) % 2 * -2 + 1
    if fmt == "int8_channel":
        q = (signs * 127).to(torch.int8)
        q[3] = -128
        w.set_int8(q, torch.rand(n, generator=gen) + 0.5)
        return w
    group, zero_point = int4_options(fmt)
    kp = -(-k // group) * group
    code = torch.zeros(n, kp, dtype=torch.uint8)
    code[:, :k] = torch.where(signs > 0, 15, 0).to(torch.uint8)
    codes = code[:, 0::2] | (code[:, 1::2] << 4)
    groups = kp // group
    zero = torch.where(torch.arange(groups) % 2 == 0, 0, 255).to(torch.uint8).repeat(n, 1)
    zero[1] = 255 - zero[1]
    scale = torch.where(torch.rand(n, groups, generator=gen) < 0.5, 1.0, 1024.0).half()
    w.set_int4(codes, scale, zero if zero_point else None)
    return w


def extreme_activations(k):
    """bf16 [9, k] whose records hold the quantizer's extremes: rows of +1 and -1 (every q = +127 or
    -127), +-1 alternating along k, an amax row (1 at every 64th k, 1e-3 elsewhere: q = 127 and 0),
    random signs of 1, two rows of random values with one 1 per 64 k, -+1 alternating, and +1
    again."""
    gen = torch.Generator().manual_seed(37)
    a = torch.empty(9, k)
    a[0], a[1] = 1.0, -1.0
    a[2] = (torch.arange(k) % 2 * -2 + 1).float()
    a[3] = torch.where(torch.arange(k) % 64 == 0, 1.0, 1e-3)
    a[4] = (torch.randint(0, 2, (k,), generator=gen) * 2 - 1).float()
    a[5:7] = torch.rand(2, k, generator=gen) * 2 - 1
    a[5:7, ::64] = 1.0
    a[7] = -a[2]
    a[8] = 1.0
    return a.to(torch.bfloat16)


@pytest.mark.parametrize("fmt", FORMATS)
def test_extreme_operands(fmt):
    """Weights at the codes' extremes against activations at +-127 over a long K, at every level:
    the integer dot products must be exact where a 16-bit pair sum of u8 x s8 products would
    saturate (int8_channel: 255 * 127 * 2 > 32767; the int4 codes' high nibbles in place, 16 times
    the code, too; int4_kgroup's avx2 kernel sums 32 k in int16 words, which reach 16 * 15 * 127 =
    30480 here and must not wrap). Against the float64 product of the dequantized operands (tight), and,
    where a level takes the generic level's fp32 order (the avx2 kernels, the VNNI kernels for
    INT4, every int4_kgroup kernel), bit-identical to it. m = 7 runs the 4-row and the 3-row
    micro-kernels, m = 9 two 4-row ones and a row (and int4_kgroup's AMX tiles: quant_amx_min_rows = 9)."""
    n, k = 40, 8192 + 40  # a partial last column block, K ending inside a 64-k unit
    w = extreme_weight(fmt, n, k)
    a = extreme_activations(k)
    records = quantize("generic", fmt, a)
    q, _, _ = fields(records, fmt, k)
    assert bool((q[:2, :k].abs() == 127).all()) and int(q[3, :k].abs().max()) == 127
    for m in (7, 9):
        generic = run("generic", w, records[:m], m)
        for level in SELECTABLE:
            out = generic if level == "generic" else run(level, w, records[:m], m)
            check_against_reference(level, w, records[:m], out, m, f"{level} {fmt} m={m} extreme operands")
            if w.same_order(level) and not w.requantizes(level, m):
                assert torch.equal(out, generic), f"{level} {fmt} m={m}: not bit-identical to generic"


@pytest.mark.skipif("amx" not in SELECTABLE, reason="this CPU has no AMX")
@pytest.mark.parametrize("fmt", FORMATS)
def test_tile_emulation_matches_amx(fmt):
    """The emulated tile instructions give the hardware's int32 sums, the requantization
    (int4_group16) the same bytes and the folds the same FMAs: bit-identical results."""
    w = Weight(fmt, 40, 256, seed=17)
    a = torch.randn(33, 256, generator=torch.Generator().manual_seed(1017)).to(torch.bfloat16)
    records = quantize("amx", fmt, a)
    assert torch.equal(run("amx_emulated", w, records, 33), run("amx", w, records, 33))


@pytest.mark.parametrize("level", [lv for lv in SELECTABLE if lv in AMX_LEVELS])
def test_requantized_zero_units(level):
    """Units whose weights are all exactly 0 (scales 0, or every code equal to its zero point)
    requantize to S = 0 and contribute exactly nothing; their neighbours are unaffected."""
    n, k, m = 20, 256, 32
    w = Weight("int4_group16", n, k, seed=23)
    codes, scale, zero = w.codes.clone(), w.scale.clone(), w.zero.clone()
    scale[3, 4:8] = 0  # column 3, unit 1: zero scales
    codes[5, 64:96] = 0x77  # column 5, unit 2 (k 128..191): code 7 ...
    zero[5, 8:12] = 7 * 16  # ... and zero point 7
    scale[17, :] = 0  # column 17: every unit
    w.set_int4(codes, scale, zero)
    assert w.unit_scales[3, 1] == 0 and w.unit_scales[5, 2] == 0 and bool((w.unit_scales[17] == 0).all())
    assert bool((w.unit_scales[3, [0, 2, 3]] > 0).all())
    a = torch.randn(m, k, generator=torch.Generator().manual_seed(1023)).to(torch.bfloat16)
    records = quantize(level, "int4_group16", a)
    out = run(level, w, records, m)
    check_against_reference(level, w, records, out, m, f"{level} zero units")
    assert bool((out[:, 17] == 0).all())


def test_real_size_at_best_level():
    """DeepSeek-V2-Lite gate/up product, 48 tokens x [1408, 2048] (tiles at the amx level), and one
    decode token (VNNI)."""
    for fmt in ("int8_channel", "int4_group16", "int4_kgroup64"):
        w = Weight(fmt, 1408, 2048, seed=13)
        a = torch.randn(48, 2048, generator=torch.Generator().manual_seed(1013)).to(torch.bfloat16)
        records = quantize(BEST, fmt, a)
        check_against_reference(BEST, w, records, run(BEST, w, records, 48), 48, f"{BEST} {fmt} m=48")
        check_against_reference(BEST, w, records[:1], run(BEST, w, records[:1], 1), 1, f"{BEST} {fmt} m=1")


# The relative error bound of test_scheme_error_against_unquantized_product per format.
SCHEME_ERROR_BOUNDS = {"int8_channel": 2e-2, "int4_group16": 0.07, "int4_kgroup64": 0.10,
                       "int4_kgroup64_sym": 0.115, "int4_kgroup128": 0.115, "int4_kgroup128_sym": 0.12}


@pytest.mark.parametrize("fmt", FORMATS)
def test_scheme_error_against_unquantized_product(fmt):
    """The whole scheme (weights and activations quantized, kt_moe.quant's quantizers) against the
    fp32 product, on an expert-sized shape (measured: INT8 0.010; int4_group16 0.058, 0.059 with
    the AMX requantization; int4_kgroup at every level G = 64 0.084, symmetric 0.095, G = 128 0.095,
    symmetric 0.101), at every level."""
    w = Weight(fmt, 352, 1024, seed=9, quantize=True)
    a = torch.randn(48, 1024, generator=torch.Generator().manual_seed(1009))
    ref = a.to(torch.bfloat16).float() @ w.w.t()
    for level in (BEST, "generic"):
        out = run(level, w, quantize(level, fmt, a.to(torch.bfloat16)), 48)
        err = ((out - ref).norm() / ref.norm()).item()
        assert err <= SCHEME_ERROR_BOUNDS[fmt], (level, err)


def test_requantization_error():
    """The AMX path's requantization on weights from the INT4 quantizer: ~0.6% relative error of the
    product against the exact one (the approximation gemm_quant.hpp documents)."""
    w = Weight("int4_group16", 352, 1024, seed=29, quantize=True)
    a = torch.randn(64, 1024, generator=torch.Generator().manual_seed(1029)).to(torch.bfloat16)
    records = quantize("generic", "int4_group16", a)
    a_deq = dequantize_records(records, "int4_group16", 1024)
    exact, requantized = product(a_deq, w.dequant), product(a_deq, w.requantized)
    err = ((requantized - exact).norm() / exact.norm()).item()
    assert 1e-3 < err < 1e-2, err
    level = "amx" if "amx" in SELECTABLE else "amx_emulated"
    out = run(level, w, records, 64)
    assert ((out.double() - exact).norm() / exact.norm()).item() < 1e-2


def test_concurrent_callers():
    """Threads with different row counts at once: each has its own scratch and tile state."""
    w = weight("int4_group16", 352, 512, seed=19)
    a = torch.randn(40, 512, generator=torch.Generator().manual_seed(1019)).to(torch.bfloat16)
    records = quantize(BEST, "int4_group16", a)
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
        assert torch.equal(c, run(BEST, w, records[: 16 + 8 * i], 16 + 8 * i))


def test_empty_products():
    for fmt in FORMATS:
        w = weight(fmt, 20, 64)
        records = quantize("generic", fmt, torch.ones(2, 64, dtype=torch.bfloat16))
        for level in SELECTABLE:
            c = torch.full((2, 20), 3.0)
            run(level, w, records, 2, 16, 16, c)  # empty column range
            assert torch.equal(c, torch.full((2, 20), 3.0))
            run(level, w, records, 0, c=torch.zeros(0, 20))  # no rows


# ---- activations -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ACT_FORMATS)
@pytest.mark.parametrize("level", SELECTABLE)
def test_activation_quantizer_rounding(level, fmt):
    """Per group of 64: amax = max |a|; scale = amax / 127; q = round_half_even(a * (127 / amax)) in
    fp32; groups without a normal number quantize to zero (scale 0); K padding is zero. Sums of q per
    64 k (int8_channel, int4_kgroup) or per 16 k (int4_group16)."""
    k = 100
    gen = torch.Generator().manual_seed(11)
    a = (torch.randn(9, k, generator=gen) * torch.logspace(-3, 3, 9)[:, None]).to(torch.bfloat16)
    a[1, :] = 0
    a[2, :40] = 1e-39  # bf16 denormals
    a[3, 5] = 63.5 / 127 * 2.0  # with amax 2 below: a * (127 / amax) = 63.5, a tie
    a[3, 6] = -2.0
    layout = _native.quant_act_layout(fmt, k)
    groups, sum_group = layout["groups"], layout["sum_group"]
    assert (layout["group"], layout["k_padded"], sum_group) == (64, 128, 16 if fmt == "int4_group16" else 64)
    records = quantize(level, fmt, a)
    q, scale, total = fields(records, fmt, k)
    x = torch.zeros(9, layout["k_padded"])
    x[:, :k] = a.float()
    x = x.view(9, groups, 64)
    amax = x.abs().amax(dim=2)
    normal = amax >= TINY
    inv = torch.where(normal, torch.tensor(127.0) / amax, torch.zeros(()))
    q_ref = torch.round(x * inv[..., None]).to(torch.int8)
    assert torch.equal(q.view(9, groups, 64), q_ref)
    assert torch.equal(scale, torch.where(normal, amax / torch.tensor(127.0), torch.zeros(())))
    assert torch.equal(total, q_ref.float().view(9, -1, sum_group).sum(dim=2))
    assert q[3, 5].item() == 64  # the tie went to the even neighbour
    assert torch.equal(records, quantize("generic", fmt, a))  # every level: the same records


@pytest.mark.parametrize("fmt", ACT_FORMATS)
def test_activation_records_agree_across_levels(fmt):
    """Long rows of whole groups (the avx512 build quantizes those with explicit vectors) over 60
    decades, with groups of zeros, bf16 denormals, Inf, -Inf and NaN and a tie among them: every
    level writes the generic level's record bytes."""
    k = 1000
    gen = torch.Generator().manual_seed(12)
    a = (torch.randn(33, k, generator=gen) * torch.logspace(-30, 30, 33)[:, None]).to(torch.bfloat16)
    a[0, :64] = 0
    a[1, 64:128] = 1e-39
    a[2, 130] = float("inf")
    a[3, 200] = float("nan")
    a[4, 256:320] = -float("inf")
    a[5, 320], a[5, 321] = 2.0, 1.0  # 1.0 * (127 / 2) = 63.5: a tie, to 64
    reference = quantize("generic", fmt, a)
    q, _, _ = fields(reference, fmt, k)
    assert q[5, 321].item() == 64
    for level in SELECTABLE:
        assert torch.equal(quantize(level, fmt, a), reference), level


# ---- packing -----------------------------------------------------------------------------------

def test_packed_int4_layout():
    """The int4_group16 bytes of gemm_quant.hpp, built here from the spec for n = 19 (a second,
    partial block), k = 40 (a partial group, and groups 3 of the unit past Kp = 48)."""
    n, k = 19, 40
    gen = torch.Generator().manual_seed(31)
    codes = torch.randint(0, 256, (n, 24), generator=gen, dtype=torch.uint8)
    scale = (torch.rand(n, 3, generator=gen) + 0.5).half()
    zero = torch.randint(0, 256, (n, 3), generator=gen, dtype=torch.uint8)
    w = _native.quant_pack_int4(codes, scale, zero, k)
    assert (w.format, w.n, w.k, w.nbytes) == ("int4_group16", n, k, 2 * 704)
    code = unpack_codes(codes).to(torch.uint8)  # [n, 48]; the codes of k 40..47 are kept as given
    expect = torch.zeros(2, 704, dtype=torch.uint8)
    scale_bits = scale.view(torch.int16)
    for col in range(n):
        b, c = divmod(col, 16)
        for kk in range(48):
            u, rest = divmod(kk, 32)
            high, rest = divmod(rest, 16)
            j, i = divmod(rest, 4)
            expect[b, (4 * u + j) * 64 + 4 * c + i] |= int(code[col, kk]) << (4 * high)
        for h in range(3):
            bits = int(scale_bits[col, h]) & 0xFFFF
            expect[b, 512 + 2 * (16 * h + c)] = bits & 0xFF
            expect[b, 512 + 2 * (16 * h + c) + 1] = bits >> 8
            expect[b, 640 + 16 * h + c] = zero[col, h]
    packed = torch.frombuffer(bytearray(w.packed_bytes()), dtype=torch.uint8).view(2, 704)
    assert torch.equal(packed, expect)


@pytest.mark.parametrize("fmt", KGROUPS)
def test_packed_kgroup_layout(fmt):
    """The int4_kgroup bytes of layout.hpp, built here from the spec for n = 19 (a second, partial
    block) and k = 100 (Kp = 128: two units, the codes of k 100..127 kept as given; G = 128 one
    group, its scale and zero point in both units). Per unit of 64 k, 576 B: 8 x 64 B of codes, byte
    4 c + i of vector j holding k = 4 j + i in its low nibble and k = 32 + 4 j + i in its high one;
    fp16 scales [16] at 512; uint8 zero points [16] at 544 (symmetric: 128); 16 B of zeros. Padding
    columns are zero. Also: the dequantized reference is kt_moe.quant's dequantize_int4."""
    group, zero_point = KGROUPS[fmt]
    n, k, units = 19, 100, 2
    gen = torch.Generator().manual_seed(41)
    codes = torch.randint(0, 256, (n, 64), generator=gen, dtype=torch.uint8)
    scale = (torch.rand(n, 128 // group, generator=gen) + 0.5).half()
    zero = torch.randint(0, 256, (n, 128 // group), generator=gen, dtype=torch.uint8) if zero_point else None
    w = Weight(fmt, n, k)
    w.set_int4(codes, scale, zero)
    assert torch.equal(w.dequant, dequantize_int4(codes, scale, zero, group_size=group)[:, :k])
    assert (w.packed.format, w.packed.n, w.packed.k, w.packed.nbytes) == ("int4_kgroup", n, k, 2 * units * 576)
    code = unpack_codes(codes).to(torch.uint8)  # [n, 128]
    scale_bytes = scale.view(torch.uint8).view(n, -1, 2)  # little-endian fp16
    expect = torch.zeros(2, units, 576, dtype=torch.uint8)
    for col in range(n):
        b, c = divmod(col, 16)
        for u in range(units):
            for kk in range(64):
                high, rest = divmod(kk, 32)
                j, i = divmod(rest, 4)
                expect[b, u, 64 * j + 4 * c + i] |= int(code[col, 64 * u + kk]) << (4 * high)
            g = 64 * u // group
            expect[b, u, 512 + 2 * c:514 + 2 * c] = scale_bytes[col, g]
            expect[b, u, 544 + c] = zero[col, g] if zero_point else 128
    packed = torch.frombuffer(bytearray(w.packed.packed_bytes()), dtype=torch.uint8).view(2, units, 576)
    assert torch.equal(packed, expect)


def test_packed_sizes():
    assert _native.quant_pack_int8(torch.zeros(16, 64, dtype=torch.int8), torch.ones(16)).nbytes == 64 + 1024
    w = _native.quant_pack_int8(torch.zeros(17, 100, dtype=torch.int8), torch.ones(17))
    assert (w.format, w.n, w.k, w.nbytes) == ("int8_channel", 17, 100, 2 * (64 + 2 * 1024))
    w = _native.quant_pack_int4(torch.zeros(1408, 1024, dtype=torch.uint8), torch.ones(1408, 128).half(),
                                torch.zeros(1408, 128, dtype=torch.uint8))
    assert (w.format, w.n, w.k) == ("int4_group16", 1408, 2048)
    assert w.nbytes == 88 * 32 * 704  # 0.6875 bytes per weight: codes, fp16 scales, zeros
    layout = _native.quant_act_layout("int4_group16", 2048)
    assert layout == dict(k=2048, group=64, groups=32, k_padded=2048, sum_group=16, sums=128, scale_offset=2048,
                          sum_offset=2176, row_bytes=2688)
    assert _native.quant_act_layout("int8_channel", 100)["sums"] == 2
    assert _native.quant_amx_min_rows("int8_channel") >= 1 and _native.quant_amx_min_rows("int4_group16") >= 16
    w = _native.quant_pack("int4_kgroup", [torch.zeros(1408, 1024, dtype=torch.uint8), torch.ones(1408, 16).half()],
                           2048, 128, False)
    assert (w.format, w.n, w.k) == ("int4_kgroup", 1408, 2048)
    assert w.nbytes == 88 * 32 * 576  # 0.5625 bytes per weight: codes, a scale and a zero point per 64 k
    layout = _native.quant_act_layout("int4_kgroup", 2048)
    assert layout == dict(k=2048, group=64, groups=32, k_padded=2048, sum_group=64, sums=32, scale_offset=2048,
                          sum_offset=2176, row_bytes=2304)
    assert _native.quant_amx_min_rows("int4_kgroup") == 9


def test_hooks_reject_bad_input():
    w8 = weight("int8_channel", 20, 64)
    w4 = weight("int4_group16", 20, 64)
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
    ones, zeros = torch.ones(4, 2).half(), torch.zeros(4, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="Kp = k rounded up to a multiple of 16, got 12 bytes per row for k = 24"):
        _native.quant_pack_int4(torch.zeros(4, 12, dtype=torch.uint8), ones, zeros)
    with pytest.raises(ValueError, match="got 16 bytes per row for k = 16"):
        _native.quant_pack_int4(torch.zeros(4, 16, dtype=torch.uint8), ones, zeros, 16)
    with pytest.raises(ValueError, match="scale: expected dtype float16, got float32"):
        _native.quant_pack_int4(torch.zeros(4, 16, dtype=torch.uint8), ones.float(), zeros)
    with pytest.raises(ValueError, match="zero: dimension 1 is 1, expected 2"):
        _native.quant_pack_int4(torch.zeros(4, 16, dtype=torch.uint8), ones, zeros[:, :1])
    bad = ones.clone()
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"scales must be finite, got an fp16 infinity or NaN at \[2, 1\]"):
        _native.quant_pack_int4(torch.zeros(4, 16, dtype=torch.uint8), bad, zeros)
    with pytest.raises(ValueError, match="scale: dimension 0 is 3, expected 4"):
        _native.quant_pack_int8(torch.zeros(4, 16, dtype=torch.int8), torch.ones(3))
    with pytest.raises(ValueError, match="q: expected dtype int8, got uint8"):
        _native.quant_pack_int8(torch.zeros(4, 16, dtype=torch.uint8), torch.ones(4))
    with pytest.raises(ValueError, match="unknown format 'int4_group32'"):
        _native.quant_act_layout("int4_group32", 64)
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


def test_kgroup_pack_rejects_bad_parts():
    """quant_pack("int4_kgroup", ...) checks the canonical parts against k, G and zero_point, and
    refuses the group size the format has but no packed GEMM for (32) and those it lacks (16)."""
    codes, scale, zero = quantize_int4(torch.randn(4, 100), 64, True)  # Kp = 128

    def pack(parts, group=64, zero_point=True, k=100):
        return _native.quant_pack("int4_kgroup", parts, k, group, zero_point)

    assert pack([codes, scale, zero]).format == "int4_kgroup"
    with pytest.raises(ValueError, match="codes must be uint8"):
        pack([codes.view(torch.int8), scale, zero])
    with pytest.raises(ValueError, match="scale must be float16"):
        pack([codes, scale.float(), zero])
    with pytest.raises(ValueError, match="zero must be uint8"):
        pack([codes, scale, zero.view(torch.int8)])
    with pytest.raises(ValueError, match=r"codes shape mismatch: expected \(4, 64\), got \(4, 32\)"):
        pack([codes[:, :32], scale, zero])
    with pytest.raises(ValueError, match=r"codes shape mismatch: expected \(4, 128\), got \(4, 64\)"):
        pack([codes, scale, zero], k=200)
    with pytest.raises(ValueError, match=r"scale shape mismatch: expected \(4, 1\), got \(4, 2\)"):
        pack([codes, scale, zero], group=128)
    with pytest.raises(ValueError, match=r"zero shape mismatch: expected \(4, 2\), got \(3, 2\)"):
        pack([codes, scale, zero[:3]])
    with pytest.raises(ValueError, match=r"\[codes, scale, zero\] \(int4_kgroup\), got 2 tensors"):
        pack([codes, scale])
    with pytest.raises(ValueError, match=r"\[codes, scale\] \(int4_kgroup\), got 3 tensors"):
        pack([codes, scale, zero], zero_point=False)
    bad = scale.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"scales must be finite, got an fp16 infinity or NaN at \[2, 1\]"):
        pack([codes, bad, zero])
    for zero_point in (True, False):
        parts = list(quantize_int4(torch.randn(4, 100), 32, zero_point))
        with pytest.raises(ValueError, match="int4_kgroup has no quantized GEMM kernels"):
            pack(parts, 32, zero_point)
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128"):
        pack(list(quantize_int4(torch.randn(4, 100), 16, True)), 16)
