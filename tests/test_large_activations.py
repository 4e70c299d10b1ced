"""Hidden states of every magnitude LLMs produce: inputs scaled by 1e-4 .. 1e4 and rows with a few
outlier channels 1000 times the rest (all far inside bf16's range, the fp32 reference finite), for
every inference and SFT method at every level the host runs plus amx_emulated (a small layer
there): each result finite and within the method's usual bound (the tables of
test_inference_quantized.py and test_sft_quantized.py; for SFT the output, grad_input, the six LoRA
gradients and the routing-weight gradient). Then non-finite inputs: a row with a NaN, one with an
Inf and one with 3e38 (finite, but its products overflow) give non-finite outputs for those tokens
only, at every level and for every method, the other rows still within bounds."""

import pytest
import torch

import kt_moe
import inference_helpers as inf
import sft_helpers as sft
from kt_moe.quant import METHOD_SCHEMES, SCHEMES, scheme_for_method
from kt_moe.reference import relative_l2

LEVELS = kt_moe.cpu_info()["selectable"]
SCALES = (1e-4, 1e-2, 1.0, 1e2, 1e3, 1e4)
OUTLIER_FACTOR = 1000.0
INFER_METHODS = ("BF16", "AMXINT8", "AMXINT4")
INFER_BOUND = {"BF16": inf.TOL, "AMXINT8": 2e-2, "AMXINT4": 2e-2}  # against the dequantized layer
SFT_METHODS = [("AMXBF16_SFT", {}), ("AMXINT8_SFT", {}), ("AMXINT4_SFT", {}),
               ("AMXINT4_KGroup_SFT", dict(group_size=32, zero_point=True))]
SFT_BOUND = 1e-2  # sft_helpers.TOL for AMXBF16_SFT, VS_DEQUANTIZED for the others
INFER_SHAPE = inf.Shape(num_experts=8, hidden=160, intermediate=96)
SFT_SHAPE = sft.Shape(num_experts=8, hidden=96, intermediate=64, rank=4, alpha=8.0)
Q, TOP_K = 12, 3


def infer_shape(level):
    return inf.Shape(num_experts=6, hidden=64, intermediate=48) if level == "amx_emulated" else INFER_SHAPE


def sft_shape(level):
    return sft.SMALL if level == "amx_emulated" else SFT_SHAPE


def with_outliers(x):
    """A few channels of every row 1000 times larger."""
    x = x.float().clone()
    x[:, [3, 17, 40]] *= OUTLIER_FACTOR
    return x.to(torch.bfloat16)


def variants(x):
    """(name, input): x scaled by each of SCALES, then x with outlier channels."""
    for s in SCALES:
        yield f"x{s:g}", (x.float() * s).to(torch.bfloat16)
    yield "outliers", with_outliers(x)


def infer_reference_layer(layer, method):
    return layer if method == "BF16" else layer.dequantized(SCHEMES[METHOD_SCHEMES[method]])


@pytest.mark.parametrize("method", INFER_METHODS)
@pytest.mark.parametrize("isa_level", LEVELS, indirect=True)
def test_inference_at_every_scale(isa_level, method):
    shape = infer_shape(isa_level)
    wrapper, layer = inf.build(shape, method=method, top_k=TOP_K, seed=1)
    ref_layer = infer_reference_layer(layer, method)
    batch = layer.batch(Q, TOP_K, seed=2)
    for name, x in variants(batch.x):
        out = wrapper.forward(x, batch.ids, batch.weights)
        ref = ref_layer.reference(x, batch.ids, batch.weights)
        assert ref.isfinite().all()
        assert out.isfinite().all(), f"{name}: non-finite output"
        err = relative_l2(out, ref)
        assert err <= INFER_BOUND[method], f"{name}: relative L2 {err:.3g} above {INFER_BOUND[method]}"


def sft_errors(result, expected):
    """Relative L2 of every compared tensor (its scale follows the input's, so no norm floor)."""
    names = ("out", "grad_input") + sft.GRAD_NAMES
    pick = lambda r, n: getattr(r, n) if n in ("out", "grad_input") else r.grads[n]  # noqa: E731
    return {n: (pick(result, n), pick(expected, n)) for n in names}


@pytest.mark.parametrize("method,options", SFT_METHODS, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("isa_level", LEVELS, indirect=True)
def test_sft_at_every_scale(isa_level, method, options):
    shape = sft_shape(isa_level)
    wrapper, layer = sft.build(shape, top_k=TOP_K, seed=3, method=method, **options)
    ref_layer = layer if method == "AMXBF16_SFT" else layer.dequantized(scheme_for_method(method, **options))
    batch = layer.batch(Q, TOP_K, seed=4)
    for name, x in variants(batch.x):
        scaled = batch._replace(x=x)
        result = sft.step(wrapper, scaled)
        expected = ref_layer.reference(scaled)
        for tensor_name, (actual, ref) in sft_errors(result, expected).items():
            assert ref.isfinite().all() and ref.abs().max() > 0, f"{name} {tensor_name}: reference"
            assert actual.isfinite().all(), f"{name} {tensor_name}: non-finite"
            err = relative_l2(actual, ref)
            assert err <= SFT_BOUND, f"{name} {tensor_name}: relative L2 {err:.3g} above {SFT_BOUND}"


BAD_ROWS = {1: float("nan"), 4: float("inf"), 6: 3e38}  # row -> the value put into one of its channels


def with_bad_rows(x):
    x = x.clone()
    for row, value in BAD_ROWS.items():
        x[row, 5] = value
    return x


def good_rows(q):
    return [r for r in range(q) if r not in BAD_ROWS]


@pytest.mark.parametrize("method", INFER_METHODS)
@pytest.mark.parametrize("isa_level", LEVELS, indirect=True)
def test_inference_non_finite_rows(isa_level, method):
    shape = infer_shape(isa_level)
    wrapper, layer = inf.build(shape, method=method, top_k=TOP_K, seed=5)
    batch = layer.batch(Q, TOP_K, seed=6)
    x = with_bad_rows(batch.x)
    out = wrapper.forward(x, batch.ids, batch.weights).float()
    ref = infer_reference_layer(layer, method).reference(x, batch.ids, batch.weights)
    for row in BAD_ROWS:
        assert not ref[row].isfinite().all()
        assert not out[row].isfinite().all(), f"row {row} ({BAD_ROWS[row]}): finite output"
    good = good_rows(Q)
    assert out[good].isfinite().all()
    assert relative_l2(out[good], ref[good]) <= INFER_BOUND[method]


@pytest.mark.parametrize("method,options", SFT_METHODS, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("isa_level", LEVELS, indirect=True)
def test_sft_non_finite_rows(isa_level, method, options):
    """Output and grad_input: non-finite in the bad rows where the reference is (the 3e38 row's
    grad_input is finite in the reference: its backward meets no overflow), right in the others.
    The LoRA and routing gradients are non-finite wherever the reference's are (a LoRA gradient sums
    over tokens)."""
    shape = sft_shape(isa_level)
    wrapper, layer = sft.build(shape, top_k=TOP_K, seed=7, method=method, **options)
    ref_layer = layer if method == "AMXBF16_SFT" else layer.dequantized(scheme_for_method(method, **options))
    batch = layer.batch(Q, TOP_K, seed=8)
    batch = batch._replace(x=with_bad_rows(batch.x))
    result, expected = sft.step(wrapper, batch), ref_layer.reference(batch)
    good = good_rows(Q)
    for name in ("out", "grad_input"):
        actual, ref = getattr(result, name).float(), getattr(expected, name)
        for row in BAD_ROWS:
            if not ref[row].isfinite().all():
                assert not actual[row].isfinite().all(), f"{name} row {row} ({BAD_ROWS[row]}): finite"
        assert not actual[[1, 4]].isfinite().all(1).any()  # NaN and Inf inputs: never finite
        assert actual[good].isfinite().all(), f"{name}: a good row is not finite"
        err = relative_l2(actual[good], ref[good])
        assert err <= SFT_BOUND, f"{name}: relative L2 {err:.3g} on the good rows"
    routing, routing_ref = result.grads["routing_weights"], expected.grads["routing_weights"]
    assert torch.equal(routing[good].isfinite(), routing_ref[good].isfinite())
    assert relative_l2(routing[good], routing_ref[good]) <= SFT_BOUND
    for name in sft.LORA_NAMES:
        assert torch.equal(result.grads[name].float().isfinite().all(), expected.grads[name].isfinite().all()), name
