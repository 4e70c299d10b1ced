"""kt_moe.integrations.model_loading.load_offloaded: a model built from a checkpoint with its routed
experts on kt-moe, the experts read from the files one at a time and never held in torch.

- it is the model from_pretrained + offload_experts gives (logits, greedy generate, every tensor),
  for each architecture of transformers_models, in bf16 and fp32; tied embeddings and a sharded
  checkpoint too; experts kept in torch (num_gpu_experts) are read from the checkpoint;
- memory: on a Qwen3-MoE whose experts are most of its bytes, the peak RSS load_offloaded adds stays
  well below the bf16 experts' size, while from_pretrained + offload_experts adds more than it;
- a tensor missing from the checkpoint is a ValueError naming it.
"""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

from kt_moe.integrations.model_loading import load_offloaded, read_torch_experts
from kt_moe.integrations.transformers import offload_experts
from transformers_models import ARCHITECTURES, CONFIGS, tiny_model, tokens

MIB = 1 << 20


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.float(), expected.float()
    return ((actual - expected).norm() / expected.norm()).item()


def from_pretrained_offloaded(path, dtype, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return offload_experts(model, method="BF16", cpuinfer_threads=1, **kwargs)


def assert_same_model(model, expected):
    """Same tensors (names, dtypes, values, non-persistent buffers included), same logits and greedy
    tokens."""
    mine, theirs = dict(model.named_buffers()), dict(expected.named_buffers())
    assert mine.keys() == theirs.keys()
    for name, buffer in theirs.items():
        assert mine[name].dtype == buffer.dtype and torch.equal(mine[name], buffer), name
    state, expected_state = model.state_dict(), expected.state_dict()
    assert state.keys() == expected_state.keys()
    for name, tensor in expected_state.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    assert not model.training
    x = tokens()
    mask = torch.ones_like(x)
    with torch.no_grad():
        assert relative_l2(model(x).logits, expected(x).logits) <= 1e-3
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(model.generate(x, **kwargs), expected.generate(x, **kwargs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_equals_from_pretrained_and_offload_experts(tmp_path, architecture, dtype):
    tiny_model(architecture, dtype, seed=1).save_pretrained(tmp_path)
    model = load_offloaded(tmp_path, method="BF16", dtype=dtype, cpuinfer_threads=1)
    assert_same_model(model, from_pretrained_offloaded(tmp_path, dtype))


def test_tied_embeddings_and_a_sharded_checkpoint(tmp_path):
    config = CONFIGS["qwen3_moe"]()
    config.tie_word_embeddings = True
    torch.manual_seed(2)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = load_offloaded(tmp_path, method="BF16", cpuinfer_threads=1)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert_same_model(model, from_pretrained_offloaded(tmp_path, torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_read_torch_experts_is_the_modules_layout(tmp_path, dtype):
    tiny_model("mixtral", dtype, seed=3).save_pretrained(tmp_path)
    experts = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype).model.layers[1].mlp.experts
    gate_up, down = read_torch_experts(tmp_path, 1, 3, experts.hidden_dim, experts.intermediate_dim, dtype)
    assert gate_up.dtype == down.dtype == dtype
    assert torch.equal(gate_up, experts.gate_up_proj.detach()[:3])
    assert torch.equal(down, experts.down_proj.detach()[:3])


def test_experts_kept_in_torch_come_from_the_checkpoint(tmp_path):
    tiny_model("qwen3_moe", torch.bfloat16, seed=4).save_pretrained(tmp_path)
    model = load_offloaded(tmp_path, method="BF16", cpuinfer_threads=1, num_gpu_experts=3)
    expected = from_pretrained_offloaded(tmp_path, torch.bfloat16, num_gpu_experts=3)
    for layer, expected_layer in zip(model.model.layers, expected.model.layers):
        kept, expected_kept = layer.mlp.experts.kt_moe, expected_layer.mlp.experts.kt_moe
        assert torch.equal(kept.gpu_gate_up, expected_kept.gpu_gate_up)
        assert torch.equal(kept.gpu_down, expected_kept.gpu_down)
    assert_same_model(model, expected)


def test_a_missing_tensor_is_named(tmp_path):
    tiny_model("qwen3_moe", torch.bfloat16, seed=5).save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    del tensors["model.layers.1.self_attn.q_proj.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.q_proj\.weight.*not in the checkpoint"):
        load_offloaded(tmp_path, method="BF16", cpuinfer_threads=1)


# ---- memory --------------------------------------------------------------------------------------

# Experts 8 layers x 32 x 3 x 512 x 512 bf16 = 384 MiB; everything else about 2 MiB. Eight layers
# keep one layer's experts, whose file pages count in the RSS while the reader maps them, an eighth.
BIG = dict(vocab_size=256, hidden_size=512, intermediate_size=512, moe_intermediate_size=512, num_experts=32,
           num_experts_per_tok=2, num_hidden_layers=8, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
           max_position_embeddings=64, tie_word_embeddings=False)
SMALL = {**BIG, "hidden_size": 64, "intermediate_size": 64, "moe_intermediate_size": 64, "num_experts": 4,
         "num_hidden_layers": 1}
# Peak RSS of loading `big` in a fresh interpreter, above a baseline taken after loading `small` (the
# same architecture, tiny) the same way: importing transformers' integration and modeling code costs
# about 150 MiB whatever the model, which is not the experts' memory. The peak is the process's
# VmHWM: getrusage's ru_maxrss is no use in a child, Linux carries the parent's peak over fork and
# exec (a child of this pytest process starts at its peak, 1 GiB once the checkpoints are built).
MEASURE = """
import json, sys
import torch, transformers, kt_moe
from kt_moe.integrations.model_loading import load_offloaded
from kt_moe.integrations.transformers import offload_experts

torch.set_num_threads(1)
small, big, how = sys.argv[1:4]

def load(path):
    if how == "load_offloaded":
        return load_offloaded(path, method="AMXINT4", cpuinfer_threads=1)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    return offload_experts(model, method="AMXINT4", cpuinfer_threads=1)

def peak_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB

after_import = peak_mib()
warm = load(small)
baseline = peak_mib()
model = load(big)
print(json.dumps({"after_import_mib": after_import, "baseline_mib": baseline, "peak_mib": peak_mib()}))
"""


def save_qwen3(config: dict, path, seed: int) -> None:
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(Qwen3MoeConfig(**config), dtype=torch.bfloat16).save_pretrained(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(small, big) checkpoint directories, and the big one's (experts, other) bytes."""
    small, big = tmp_path_factory.mktemp("small"), tmp_path_factory.mktemp("big")
    save_qwen3(SMALL, small, seed=6)
    save_qwen3(BIG, big, seed=7)
    sizes = {True: 0, False: 0}
    with safe_open(big / "model.safetensors", framework="pt") as f:
        for name in f.keys():
            tensor = f.get_slice(name)
            assert tensor.get_dtype() == "BF16"
            sizes[".mlp.experts." in name] += 2 * torch.Size(tensor.get_shape()).numel()
    return small, big, sizes[True], sizes[False]


def added_peak_mib(run_python, checkpoints, how: str) -> float:
    small, big, experts, other = checkpoints
    result = run_python("-c", MEASURE, str(small), str(big), how, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    added = measured["peak_mib"] - measured["baseline_mib"]
    print(f"{how}: bf16 experts {experts / MIB:.1f} MiB, other tensors {other / MIB:.1f} MiB; RSS after import "
          f"{measured['after_import_mib']:.0f} MiB, baseline {measured['baseline_mib']:.0f} MiB, peak "
          f"{measured['peak_mib']:.0f} MiB: added {added:.0f} MiB = {added * MIB / experts:.2f} x bf16 experts")
    return added


def test_load_offloaded_never_holds_the_bf16_experts(run_python, checkpoints):
    _, _, experts, other = checkpoints
    added = added_peak_mib(run_python, checkpoints, "load_offloaded")
    # INT4 experts ~0.36 of bf16 with their scales, one layer's mapped file pages 1/8, a few MiB per wrapper
    assert added * MIB < other + 0.6 * experts


def test_from_pretrained_then_offload_holds_them(run_python, checkpoints):
    """The measurement above can fail: from_pretrained materializes the bf16 experts first."""
    _, _, experts, other = checkpoints
    assert added_peak_mib(run_python, checkpoints, "from_pretrained") * MIB > other + experts
