"""The experts' LoRA of an offloaded model as a PEFT adapter (kt_moe.integrations.peft_adapters).

- an adapter save_expert_adapter wrote loads with plain PEFT (PeftModel.from_pretrained on the
  unpatched model, experts in torch) and gives kt-moe's logits;
- an adapter PEFT trained alone (target_parameters on the experts, plus attention LoRA that
  load_expert_adapter ignores) loads into kt-moe and gives PEFT's logits, also with use_rslora,
  another lora_alpha, or only one of the two experts parameters targeted;
- save then load is bit-exact; wrong adapters are ValueErrors naming the file and key.

Models are the tiny fp32 ones of tests/transformers_models.py; the bound is BF16's 1e-2 relative L2
of the logits (kt-moe's AMXBF16_SFT rounds the experts' weights and activations to bf16, PEFT runs
in fp32). Every adapter moves the logits by more than 0.05, so a lost or misplaced LoRA fails."""

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from kt_moe.integrations.peft_adapters import WEIGHTS_FILE, load_expert_adapter, save_expert_adapter
from kt_moe.integrations.transformers import expert_lora_parameters, offload_experts
from kt_moe.reference import relative_l2
from transformers_models import tiny_model, tokens

peft = pytest.importorskip("peft")

RANK, ALPHA = 4, 8.0   # the offloaded models' lora_rank / lora_alpha
BOUND = 1e-2           # relative L2 of kt-moe's logits (bf16 experts) against PEFT's (fp32)
MOVES = 0.05           # an adapter changes the logits by at least this much
BOTH = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def logits(model, ids=None):
    with torch.no_grad():
        return model(tokens() if ids is None else ids).logits.float()


def offloaded(architecture, rank=RANK, alpha=ALPHA, lora_dtype=torch.float32):
    return offload_experts(tiny_model(architecture, torch.float32), method="AMXBF16_SFT", lora_rank=rank,
                           lora_alpha=alpha, lora_dtype=lora_dtype, cpuinfer_threads=2)


def randomize(params, seed=1, std=0.05):
    """Overwrite each parameter with N(0, std^2) values (a trained adapter: B no longer zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params:
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def expert_params(model):
    return {name: param.detach().clone() for name, param in expert_lora_parameters(model)}


# ---- kt-moe -> PEFT ------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["qwen3_moe", "mixtral", "deepseek_v3"])
def test_saved_adapter_loads_in_plain_peft(tmp_path, architecture):
    model = offloaded(architecture)
    randomize([param for _, param in expert_lora_parameters(model)])
    expected = logits(model)
    save_expert_adapter(model, str(tmp_path))

    base = tiny_model(architecture, torch.float32)  # the same weights, experts in torch
    without_adapter = logits(base)
    with_adapter = logits(peft.PeftModel.from_pretrained(base, str(tmp_path)))
    error = relative_l2(expected, with_adapter)
    print(f"{architecture}: kt-moe vs PEFT {error:.2e} (the adapter moves the logits by "
          f"{relative_l2(without_adapter, with_adapter):.2f})")
    assert relative_l2(without_adapter, with_adapter) > MOVES
    assert error <= BOUND


def test_adapter_of_a_peft_wrapped_model_has_the_same_keys(tmp_path):
    model = offloaded("qwen3_moe")
    randomize([param for _, param in expert_lora_parameters(model)])
    save_expert_adapter(model, str(tmp_path / "plain"))
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    save_expert_adapter(wrapped, str(tmp_path / "wrapped"))
    plain, from_wrapped = (load_file(str(tmp_path / name / WEIGHTS_FILE)) for name in ("plain", "wrapped"))
    assert plain.keys() == from_wrapped.keys()
    assert all(torch.equal(plain[key], from_wrapped[key]) for key in plain)


# ---- PEFT -> kt-moe ------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture, lora_alpha, use_rslora, targets", [
    ("qwen3_moe", ALPHA, False, BOTH),
    ("qwen3_moe", ALPHA, True, BOTH),                        # scaling alpha / sqrt(r)
    ("deepseek_v3", 16.0, False, BOTH),                      # another lora_alpha than the model's
    ("mixtral", ALPHA, False, ["mlp.experts.down_proj"]),    # gate_up_proj's LoRA: none
], ids=["qwen3_moe", "qwen3_moe-rslora", "deepseek_v3-alpha16", "mixtral-down_proj-only"])
def test_peft_trained_adapter_loads_into_kt_moe(tmp_path, architecture, lora_alpha, use_rslora, targets):
    # A combined adapter: the attention's LoRA (left at B = 0, so it does not change PEFT's function)
    # is in the file and ignored by load_expert_adapter.
    config = peft.LoraConfig(r=RANK, lora_alpha=lora_alpha, use_rslora=use_rslora, target_parameters=targets,
                             target_modules=["q_proj"])
    peft_model = peft.get_peft_model(tiny_model(architecture, torch.float32), config)
    randomize([param for name, param in peft_model.named_parameters() if ".experts." in name and "lora_" in name])
    expected = logits(peft_model)
    with peft_model.disable_adapter():
        without_adapter = logits(peft_model)
    peft_model.save_pretrained(str(tmp_path))

    model = offloaded(architecture)
    randomize([param for _, param in expert_lora_parameters(model)], seed=7)  # all to be overwritten
    load_expert_adapter(model, str(tmp_path))
    error = relative_l2(logits(model), expected)
    print(f"{architecture} alpha={lora_alpha} rslora={use_rslora} {targets}: kt-moe vs PEFT {error:.2e} (the "
          f"adapter moves the logits by {relative_l2(without_adapter, expected):.2f})")
    assert relative_l2(without_adapter, expected) > MOVES
    assert error <= BOUND
    if "mlp.experts.gate_up_proj" not in targets:
        assert all(not param.any() for name, param in expert_lora_parameters(model) if name.endswith("gate_up_B"))


# ---- round trip ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lora_dtype", [torch.float32, torch.bfloat16])
def test_save_then_load_is_bit_exact(tmp_path, lora_dtype):
    model = offloaded("deepseek_v3", lora_dtype=lora_dtype)
    randomize([param for _, param in expert_lora_parameters(model)])
    save_expert_adapter(model, str(tmp_path))
    assert {tensor.dtype for tensor in load_file(str(tmp_path / WEIGHTS_FILE)).values()} == {lora_dtype}

    fresh = offloaded("deepseek_v3", lora_dtype=lora_dtype)
    load_expert_adapter(fresh, str(tmp_path))
    saved, loaded = expert_params(model), expert_params(fresh)
    assert saved.keys() == loaded.keys() and len(saved) == 4  # one MoE layer, four parameters
    assert all(torch.equal(saved[name], loaded[name]) for name in saved)
    assert torch.equal(logits(fresh), logits(model))  # the engine took the loaded values


# ---- errors --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    """A folder with the adapter of a randomized qwen3_moe model of rank RANK."""
    directory = tmp_path_factory.mktemp("adapter")
    model = offloaded("qwen3_moe")
    randomize([param for _, param in expert_lora_parameters(model)])
    save_expert_adapter(model, str(directory))
    return directory


def test_other_rank_is_refused(saved_adapter):
    model = offloaded("qwen3_moe", rank=8)
    with pytest.raises(ValueError, match=r"adapter_config\.json: .* has rank 4, the model's kt-moe lora_rank is 8"):
        load_expert_adapter(model, str(saved_adapter))


@pytest.mark.parametrize("missing", ["adapter_config.json", WEIGHTS_FILE])
def test_missing_file_is_refused(saved_adapter, tmp_path, missing):
    for name in ("adapter_config.json", WEIGHTS_FILE):
        if name != missing:
            (tmp_path / name).write_bytes((saved_adapter / name).read_bytes())
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / missing}: no such file")):
        load_expert_adapter(offloaded("qwen3_moe"), str(tmp_path))


def copy_with_weights(saved_adapter, directory, edit):
    """A copy of saved_adapter into `directory` whose state dict is edit(state dict)."""
    (directory / "adapter_config.json").write_bytes((saved_adapter / "adapter_config.json").read_bytes())
    state = load_file(str(saved_adapter / WEIGHTS_FILE))
    edit(state)
    save_file(state, str(directory / WEIGHTS_FILE))


def test_missing_key_is_refused_and_nothing_is_loaded(saved_adapter, tmp_path):
    key = "base_model.model.model.layers.1.mlp.experts.lora_B.weight"
    copy_with_weights(saved_adapter, tmp_path, lambda state: state.pop(key))
    model = offloaded("qwen3_moe")
    before = expert_params(model)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / WEIGHTS_FILE}: no {key}")):
        load_expert_adapter(model, str(tmp_path))
    after = expert_params(model)
    assert all(torch.equal(before[name], after[name]) for name in before)  # layer 0 untouched too


def test_per_expert_target_modules_are_refused(saved_adapter, tmp_path):
    # transformers 4's experts were Linear layers per expert; an adapter on those cannot map onto a
    # shared gate/up A.
    key = "base_model.model.model.layers.0.mlp.experts.3.gate_proj.lora_A.weight"
    copy_with_weights(saved_adapter, tmp_path, lambda state: state.update({key: torch.zeros(RANK, 128)}))
    with pytest.raises(ValueError, match=re.escape(key) + ".*cannot take"):
        load_expert_adapter(offloaded("qwen3_moe"), str(tmp_path))


def test_model_without_experts_lora_is_refused(tmp_path):
    model = offload_experts(tiny_model("qwen3_moe", torch.float32), method="BF16", cpuinfer_threads=2)
    with pytest.raises(ValueError, match="inference method"):
        save_expert_adapter(model, str(tmp_path))
