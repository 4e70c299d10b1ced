"""kt_moe.reference against independent computations: a per-token, per-slot float64 loop of the
forward, the explicit backward formulas of docs/design.md section 3, and the routing rules (-1 ids,
GPU experts, duplicates, experts with no token, bad ids, bf16 inputs)."""

import pytest
import torch

from kt_moe.reference import (LoraWeights, lora_moe_backward, lora_moe_forward, moe_forward, random_experts,
                              random_lora, random_routing, relative_l2)

E, H, I, R = 6, 12, 10, 3
SCALE = 2.0
GPU = 1  # expert 0 lives on the GPU
# Row 2 routes expert 3 twice; row 3 is all -1; row 5 has only the GPU expert and -1; expert 5 gets no token.
IDS = torch.tensor([[2, 3, -1], [0, 2, 4], [3, 3, 1], [-1, -1, -1], [4, 1, 2], [0, 0, -1], [1, 2, 3]])
SKIPPED_ROWS = [3, 5]
IDLE_EXPERTS = [0, 5]
TOL = 1e-5


@pytest.fixture(scope="module")
def case():
    """Tiny layer: bf16 experts and LoRA, fp32 tokens, routing weights and grad_output."""
    gen = torch.Generator().manual_seed(0)
    q, k = IDS.shape
    return dict(
        x=torch.randn(q, H, generator=gen), expert_ids=IDS, weights=torch.rand(q, k, generator=gen),
        experts=random_experts(E, H, I, seed=3), lora=random_lora(E, H, I, R, seed=4),
        grad_output=torch.randn(q, H, generator=gen))


def f64(t):
    return t.detach().double()


def active(e):
    return e >= 0 and e >= GPU


def loop_forward(x, expert_ids, weights, experts, lora, scale):
    """out [q, H] float64, one token and one slot at a time (lora=None: no LoRA term)."""
    wg, wu, wd = (f64(t) for t in experts)
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        xt = f64(x[t])
        for j, e in enumerate(expert_ids[t].tolist()):
            if not active(e):
                continue
            g, u = wg[e] @ xt, wu[e] @ xt
            if lora is not None:
                ag, bg, au, bu, _, _ = (f64(l[e]) for l in lora)
                g, u = g + scale * bg @ (ag @ xt), u + scale * bu @ (au @ xt)
            z = torch.nn.functional.silu(g) * u
            y = wd[e] @ z
            if lora is not None:
                ad, bd = f64(lora.down_lora_a[e]), f64(lora.down_lora_b[e])
                y = y + scale * bd @ (ad @ z)
            out[t] += float(weights[t, j]) * y
    return out


def formula_backward(x, expert_ids, weights, experts, lora, scale, grad_output):
    """(grad_input, grads) float64 by the explicit formulas of docs/design.md section 3, per token and slot."""
    wg, wu, wd = (f64(t) for t in experts)
    s = scale
    grads = {name: torch.zeros(t.shape, dtype=torch.float64) for name, t in lora._asdict().items()}
    grads["routing_weights"] = torch.zeros(weights.shape, dtype=torch.float64)
    dx = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        xt, dy = f64(x[t]), f64(grad_output[t])
        for j, e in enumerate(expert_ids[t].tolist()):
            if not active(e):
                continue
            ag, bg, au, bu, ad, bd = (f64(l[e]) for l in lora)
            g = wg[e] @ xt + s * bg @ (ag @ xt)
            u = wu[e] @ xt + s * bu @ (au @ xt)
            z = torch.nn.functional.silu(g) * u
            y = wd[e] @ z + s * bd @ (ad @ z)
            grads["routing_weights"][t, j] = dy @ y  # dL/dw_j = <dy, y_e>
            d = float(weights[t, j]) * dy
            grads["down_lora_b"][e] += s * torch.outer(d, ad @ z)
            grads["down_lora_a"][e] += s * torch.outer(bd.T @ d, z)
            dz = wd[e].T @ d + s * ad.T @ (bd.T @ d)
            sg = torch.sigmoid(g)
            dg = dz * u * sg * (1 + g * (1 - sg))
            du = dz * torch.nn.functional.silu(g)
            grads["gate_lora_b"][e] += s * torch.outer(dg, ag @ xt)
            grads["gate_lora_a"][e] += s * torch.outer(bg.T @ dg, xt)
            grads["up_lora_b"][e] += s * torch.outer(du, au @ xt)
            grads["up_lora_a"][e] += s * torch.outer(bu.T @ du, xt)
            dx[t] += wg[e].T @ dg + wu[e].T @ du + s * ag.T @ (bg.T @ dg) + s * au.T @ (bu.T @ du)
    return dx, grads


def args(case, lora=True):
    base = (case["x"], case["expert_ids"], case["weights"], *case["experts"])
    return base + (case["lora"], SCALE) if lora else base


def test_forward_matches_per_token_loop(case):
    expected = loop_forward(case["x"], IDS, case["weights"], case["experts"], None, SCALE)
    out = moe_forward(*args(case, lora=False), num_gpu_experts=GPU)
    assert out.dtype == torch.float32 and out.shape == case["x"].shape
    assert relative_l2(out, expected) < TOL


def test_lora_forward_matches_per_token_loop(case):
    expected = loop_forward(case["x"], IDS, case["weights"], case["experts"], case["lora"], SCALE)
    out = lora_moe_forward(*args(case), num_gpu_experts=GPU)
    assert relative_l2(out, expected) < TOL
    assert relative_l2(out, moe_forward(*args(case, lora=False), num_gpu_experts=GPU)) > 1e-2  # LoRA term is seen


def test_backward_matches_design_formulas(case):
    out, grad_input, grads = lora_moe_backward(*args(case), case["grad_output"], num_gpu_experts=GPU)
    dx, expected = formula_backward(case["x"], IDS, case["weights"], case["experts"], case["lora"], SCALE,
                                    case["grad_output"])
    assert relative_l2(out, lora_moe_forward(*args(case), num_gpu_experts=GPU)) == 0
    assert relative_l2(grad_input, dx) < TOL
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        assert grad.dtype == torch.float32 and grad.shape == expected[name].shape, name
        assert relative_l2(grad, expected[name]) < TOL, name


def test_skipped_slots_contribute_nothing_and_get_zero_grads(case):
    out, grad_input, grads = lora_moe_backward(*args(case), case["grad_output"], num_gpu_experts=GPU)
    assert not out[SKIPPED_ROWS].any() and not grad_input[SKIPPED_ROWS].any()
    skipped = (IDS < GPU)
    assert not grads["routing_weights"][skipped].any() and grads["routing_weights"][~skipped].all()
    for name in LoraWeights._fields:
        assert not grads[name][IDLE_EXPERTS].any(), name
        assert grads[name][[1, 2, 3, 4]].flatten(1).any(1).all(), name


def test_every_slot_skipped(case):
    ids = torch.tensor([[-1, 0], [0, -1]])
    x, w = case["x"][:2], case["weights"][:2, :2]
    assert not moe_forward(x, ids, w, *case["experts"], num_gpu_experts=GPU).any()
    out, grad_input, grads = lora_moe_backward(x, ids, w, *case["experts"], case["lora"], SCALE,
                                               case["grad_output"][:2], num_gpu_experts=GPU)
    assert not out.any() and not grad_input.any() and not any(g.any() for g in grads.values())


def test_duplicate_ids_count_twice(case):
    x, lora = case["x"][:1], case["lora"]
    twice = lora_moe_backward(x, torch.tensor([[3, 3]]), torch.tensor([[0.25, 0.5]]), *case["experts"], lora,
                              SCALE, case["grad_output"][:1])
    once = lora_moe_backward(x, torch.tensor([[3]]), torch.tensor([[0.75]]), *case["experts"], lora,
                             SCALE, case["grad_output"][:1])
    assert relative_l2(twice[0], once[0]) < TOL and relative_l2(twice[1], once[1]) < TOL
    for name in LoraWeights._fields:
        assert relative_l2(twice[2][name], once[2][name]) < TOL, name
    dw = twice[2]["routing_weights"]
    assert torch.allclose(dw[0, 0], dw[0, 1]) and torch.allclose(dw[0, 0], once[2]["routing_weights"][0, 0])


@pytest.mark.parametrize("bad", [-2, E, E + 7])
def test_bad_expert_id_raises(case, bad):
    ids = IDS.clone()
    ids[4, 1] = bad
    routed = (case["x"], ids, case["weights"], *case["experts"])
    with pytest.raises(ValueError, match=f"expert id {bad} "):
        moe_forward(*routed)
    with pytest.raises(ValueError, match=f"expert id {bad} "):
        lora_moe_forward(*routed, case["lora"], SCALE)
    with pytest.raises(ValueError, match=f"expert id {bad} "):
        lora_moe_backward(*routed, case["lora"], SCALE, case["grad_output"])


def test_mismatched_shapes_raise(case):
    with pytest.raises(ValueError, match="expert_ids"):
        moe_forward(case["x"], IDS[:3], case["weights"][:3], *case["experts"])
    with pytest.raises(ValueError, match="hidden_states"):
        moe_forward(case["x"][:, :5], IDS, case["weights"], *case["experts"])


def test_bf16_inputs_are_computed_in_fp32(case):
    bf = lambda t: t.to(torch.bfloat16)
    x, w, dy = bf(case["x"]), bf(case["weights"]), bf(case["grad_output"])
    lora16 = LoraWeights(*(bf(t) for t in case["lora"]))
    lora32 = LoraWeights(*(t.float() for t in case["lora"]))
    experts32 = [t.float() for t in case["experts"]]
    got = lora_moe_backward(x, IDS, w, *case["experts"], lora16, SCALE, dy, num_gpu_experts=GPU)
    want = lora_moe_backward(x.float(), IDS, w.float(), *experts32, lora32, SCALE, dy.float(), num_gpu_experts=GPU)
    assert all(t.dtype == torch.float32 for t in (got[0], got[1], *got[2].values()))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert all(torch.equal(got[2][n], want[2][n]) for n in want[2])
    assert not x.requires_grad and not lora16.gate_lora_a.requires_grad  # caller's tensors untouched


def test_zero_b_lora_is_the_base_layer(case):
    lora = random_lora(E, H, I, R, seed=5, zero_b=True)
    base = moe_forward(*args(case, lora=False), num_gpu_experts=GPU)
    assert torch.equal(lora_moe_forward(*args(case, lora=False), lora, SCALE, num_gpu_experts=GPU), base)


def test_random_helpers_are_deterministic_and_realistic():
    ids, w = random_routing(64, 16, 4, seed=9)
    assert ids.shape == (64, 4) and ids.dtype == torch.int64 and w.dtype == torch.float32
    assert all(len(set(row)) == 4 for row in ids.tolist()) and ids.min() >= 0 and ids.max() < 16
    assert torch.allclose(w.sum(1), torch.ones(64))
    assert torch.equal(random_routing(64, 16, 4, seed=9)[0], ids)
    gate, up, down = random_experts(16, 256, 128, seed=1)
    assert gate.dtype == torch.bfloat16 and torch.equal(random_experts(16, 256, 128, seed=1)[2], down)
    out = moe_forward(torch.randn(64, 256, generator=torch.Generator().manual_seed(0)), ids, w, gate, up, down)
    assert 0.1 < out.std() < 2  # O(1) outputs: relative errors mean something
