"""Every documented error of the AMXBF16_SFT wrapper: wrong order of calls (RuntimeError), bad
physical_to_logical_map, LoRA tensors, forward_sft and backward arguments (ValueError). A refused
call leaves the wrapper usable, and bad input never crashes the process."""

import re
import textwrap

import pytest
import torch

from sft_helpers import LORA_NAMES, TINY, build, make_batch, make_layer, make_wrapper, step

SHAPE = TINY
E, H, I, R = SHAPE.num_experts, SHAPE.hidden, SHAPE.intermediate, SHAPE.rank
K = 2


@pytest.fixture
def ready():
    """(wrapper, layer): weights loaded and LoRA initialised; chunked_prefill_size 16."""
    return build(SHAPE, top_k=K, chunk=16)


def good_batch(q=3):
    return make_batch(SHAPE, q, K, seed=q)


# ---- order of calls -------------------------------------------------------------------------------


def test_forward_before_loading_weights():
    wrapper = make_wrapper(SHAPE, top_k=K)
    batch = good_batch()
    with pytest.raises(RuntimeError, match="Weights not loaded"):
        wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=True)


def test_forward_before_init_lora():
    wrapper = make_wrapper(SHAPE, top_k=K)
    layer = make_layer(SHAPE)
    wrapper.load_weights_from_tensors(layer.gate, layer.up, layer.down, layer.physical_map)
    batch = good_batch()
    with pytest.raises(RuntimeError, match="LoRA weights not initialized"):
        wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=True)
    wrapper.init_lora_weights(*layer.lora)  # then it works
    step(wrapper, batch)


# ---- physical_to_logical_map ----------------------------------------------------------------------

BAD_MAPS = {
    "too_short": lambda: torch.arange(E - 1),
    "too_long": lambda: torch.arange(E + 1),
    "int32": lambda: torch.arange(E, dtype=torch.int32),
    "float": lambda: torch.arange(E, dtype=torch.float32),
    "two_dims": lambda: torch.arange(E).reshape(1, E),
    "entry_too_big": lambda: torch.tensor([0, 1, 2, 3, 4, E]),
    "entry_negative": lambda: torch.tensor([0, 1, -1, 3, 4, 5]),
}


@pytest.mark.parametrize("kind", sorted(BAD_MAPS))
def test_bad_physical_to_logical_map(kind):
    wrapper = make_wrapper(SHAPE, top_k=K)
    layer = make_layer(SHAPE)
    with pytest.raises(ValueError, match="physical_to_logical_map"):
        wrapper.load_weights_from_tensors(layer.gate, layer.up, layer.down, BAD_MAPS[kind]())


def test_map_bound_is_the_number_of_logical_experts():
    """Entries index gate.shape[0]: with 8 logical experts, 7 is valid and 8 is not."""
    layer = make_layer(SHAPE, num_logical=8, physical_map=torch.tensor([7, 6, 5, 4, 3, 2]))
    make_wrapper(SHAPE, top_k=K).load_weights_from_tensors(layer.gate, layer.up, layer.down, layer.physical_map)
    with pytest.raises(ValueError, match="physical_to_logical_map"):
        make_wrapper(SHAPE, top_k=K).load_weights_from_tensors(layer.gate, layer.up, layer.down,
                                                               torch.tensor([8, 6, 5, 4, 3, 2]))


# ---- LoRA tensors ---------------------------------------------------------------------------------


def lora_with(name, tensor):
    lora = make_layer(SHAPE).lora
    return lora._replace(**{name: tensor})


@pytest.mark.parametrize("dim", [0, 1, 2])
@pytest.mark.parametrize("name", LORA_NAMES)
def test_lora_shape_mismatch(name, dim):
    expected = SHAPE.lora_shapes()[name]
    bad = list(expected)
    bad[dim] += 1
    wrapper, _ = build(SHAPE, top_k=K)
    with pytest.raises(ValueError) as info:
        wrapper.init_lora_weights(*lora_with(name, torch.zeros(bad, dtype=torch.bfloat16)))
    assert str(info.value).startswith(f"{name} shape mismatch: expected {tuple(expected)}, got {tuple(bad)}")


@pytest.mark.parametrize("name", LORA_NAMES)
def test_lora_wrong_number_of_dims(name):
    expected = SHAPE.lora_shapes()[name]
    wrapper, _ = build(SHAPE, top_k=K)
    with pytest.raises(ValueError) as info:
        wrapper.init_lora_weights(*lora_with(name, torch.zeros(expected[1:], dtype=torch.bfloat16)))
    assert str(info.value).startswith(f"{name} shape mismatch: expected {tuple(expected)}, got {tuple(expected[1:])}")


def noncontiguous(shape):
    """A view of `shape` that is not contiguous (every other element of a wider tensor)."""
    return torch.zeros(*shape[:-1], 2 * shape[-1], dtype=torch.bfloat16)[..., ::2]


BAD_LORA = {
    "float16": lambda shape: torch.zeros(shape, dtype=torch.float16),
    "float64": lambda shape: torch.zeros(shape, dtype=torch.float64),
    "int32": lambda shape: torch.zeros(shape, dtype=torch.int32),
    "noncontiguous": noncontiguous,
    "meta_device": lambda shape: torch.empty(shape, dtype=torch.bfloat16, device="meta"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LORA))
@pytest.mark.parametrize("name", LORA_NAMES)
def test_lora_bad_tensor_is_named(name, kind):
    tensor = BAD_LORA[kind](SHAPE.lora_shapes()[name])
    assert tuple(tensor.shape) == SHAPE.lora_shapes()[name]
    wrapper, _ = build(SHAPE, top_k=K)
    with pytest.raises(ValueError, match=re.escape(name)):
        wrapper.init_lora_weights(*lora_with(name, tensor))


# ---- forward_sft ----------------------------------------------------------------------------------


def test_q_up_to_chunked_prefill_size(ready):
    wrapper, _ = ready
    batch = good_batch(16)
    wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=False)
    batch = good_batch(17)
    with pytest.raises(ValueError, match="chunked_prefill_size"):
        wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=True)


@pytest.mark.parametrize("bad_id", [E, E + 100, -2, -1000])
def test_expert_id_out_of_range(ready, bad_id):
    wrapper, _ = ready
    batch = good_batch()
    ids = batch.expert_ids.clone()
    ids[1, 1] = bad_id
    with pytest.raises(ValueError):
        wrapper.forward_sft(batch.x, ids, batch.weights, save_for_backward=True)
    with pytest.raises(ValueError):
        wrapper.forward_sft(batch.x, ids.to(torch.int32), batch.weights, save_for_backward=True)


BAD_FORWARD = {  # name -> (hidden_states, expert_ids, weights) from a good q=3 batch
    "hidden_wrong_H": lambda b: (torch.zeros(3, H + 1, dtype=torch.bfloat16), b.expert_ids, b.weights),
    "hidden_1d": lambda b: (b.x[0], b.expert_ids[:1], b.weights[:1]),
    "hidden_3d": lambda b: (b.x.unsqueeze(0), b.expert_ids, b.weights),
    "ids_wrong_k": lambda b: (b.x, torch.zeros(3, K + 1, dtype=torch.int64), torch.zeros(3, K + 1)),
    "ids_wrong_q": lambda b: (b.x, b.expert_ids[:2], b.weights),
    "ids_1d": lambda b: (b.x, b.expert_ids.flatten(), b.weights),
    "weights_wrong_k": lambda b: (b.x, b.expert_ids, b.weights[:, :1]),
    "weights_wrong_q": lambda b: (b.x, b.expert_ids, torch.cat([b.weights, b.weights[:1]])),
}


@pytest.mark.parametrize("kind", sorted(BAD_FORWARD))
def test_forward_wrong_shapes(ready, kind):
    wrapper, _ = ready
    args = BAD_FORWARD[kind](good_batch())
    with pytest.raises(ValueError):
        wrapper.forward_sft(*args, save_for_backward=True)


@pytest.mark.parametrize("kind", ["float_ids", "bool_ids"])
def test_forward_wrong_id_dtype(ready, kind):
    wrapper, _ = ready
    batch = good_batch()
    ids = batch.expert_ids.to(torch.float32 if kind == "float_ids" else torch.bool)
    with pytest.raises((ValueError, TypeError)):
        wrapper.forward_sft(batch.x, ids, batch.weights, save_for_backward=True)


def test_refused_forward_pushes_nothing(ready):
    """max_cache_depth is 1: after refused forwards a valid one still finds room."""
    wrapper, layer = ready
    batch = good_batch()
    bad_ids = batch.expert_ids.clone()
    bad_ids[0, 0] = E
    with pytest.raises(ValueError):
        wrapper.forward_sft(batch.x, bad_ids, batch.weights, save_for_backward=True)
    big = good_batch(17)
    with pytest.raises(ValueError):
        wrapper.forward_sft(big.x, big.expert_ids, big.weights, save_for_backward=True)
    step(wrapper, batch)


# ---- backward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("grad_shape", [(2, H), (4, H), (3, H + 1), (3 * H,)])
def test_backward_grad_output_shape(ready, grad_shape):
    wrapper, _ = ready
    batch = good_batch(3)
    wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=True)
    with pytest.raises(ValueError):
        wrapper.backward(torch.zeros(grad_shape, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.int32])
def test_output_dtypes_other_than_bf16_and_fp32(ready, dtype):
    """A refused output_dtype pushes nothing; a refused grad_input_dtype pops nothing."""
    wrapper, _ = ready
    batch = good_batch(3)
    with pytest.raises(ValueError, match=r"output_dtype must be torch.bfloat16 or torch.float32, got torch"):
        wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=True, output_dtype=dtype)
    wrapper.forward_sft(batch.x, batch.expert_ids, batch.weights, save_for_backward=True)
    with pytest.raises(ValueError, match=r"grad_input_dtype must be torch.bfloat16 or torch.float32, got torch"):
        wrapper.backward(batch.grad_output, grad_input_dtype=dtype)
    wrapper.backward(batch.grad_output)
    with pytest.raises(RuntimeError):
        wrapper.backward(batch.grad_output)


# ---- no crash -------------------------------------------------------------------------------------

CRASH_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests_dir!r})
    import torch
    from sft_helpers import TINY, build, make_batch
    E, H = TINY.num_experts, TINY.hidden
    w, layer = build(TINY, top_k=2, chunk=16)
    b = make_batch(TINY, 3, 2)
    big = make_batch(TINY, 40, 2)
    calls = [
        lambda: w.backward(b.grad_output),
        lambda: w.forward_sft(big.x, big.expert_ids, big.weights),
        lambda: w.forward_sft(b.x, torch.full((3, 2), 1 << 40), b.weights),
        lambda: w.forward_sft(b.x, torch.full((3, 2), -(1 << 40)), b.weights),
        lambda: w.forward_sft(b.x[:, :7], b.expert_ids, b.weights),
        lambda: w.forward_sft(torch.zeros(0, H, dtype=torch.bfloat16), b.expert_ids[:0], b.weights[:0]),
        lambda: w.forward_sft(b.x, b.expert_ids[:, :1], b.weights),
        lambda: w.forward_sft(b.x.t(), b.expert_ids, b.weights),
        lambda: w.forward_sft(b.x, b.expert_ids, b.weights[:1]),
        lambda: w.init_lora_weights(*[t[:1] for t in layer.lora]),
        lambda: w.init_lora_weights(*[torch.zeros(0) for t in layer.lora]),
        lambda: w.load_weights_from_tensors(layer.gate, layer.up, layer.down, torch.full((E,), 1 << 40)),
        lambda: w.load_weights_from_tensors(layer.gate, layer.up, layer.down, torch.zeros(0, dtype=torch.int64)),
        lambda: w.load_weights_from_tensors(layer.gate[:, :1], layer.up, layer.down, layer.physical_map),
        lambda: w.load_weights_from_tensors(layer.gate, layer.up, layer.down[:, :, :1], layer.physical_map),
    ]
    for i, call in enumerate(calls):
        try:
            call()
        except Exception as e:
            print(i, type(e).__name__)
        else:
            print(i, "ok")
    # The library still works afterwards (pool alive, nothing left locked):
    w2, layer2 = build(TINY, top_k=2, chunk=16)
    w2.forward_sft(b.x, b.expert_ids, b.weights)
    w2.backward(b.grad_output)
    print("DONE")
""")


def test_bad_input_never_crashes_the_process(run_python, request):
    """In a separate interpreter, so that a crash fails this test instead of killing the run."""
    tests_dir = str(request.path.parent)
    out = run_python("-c", CRASH_SCRIPT.format(tests_dir=tests_dir))
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}"
    assert out.stdout.rstrip().endswith("DONE"), out.stdout
    for line in out.stdout.splitlines()[:-1]:
        assert line.split()[1] != "ok" or line.split()[0] == "5", f"bad call {line} was accepted"
