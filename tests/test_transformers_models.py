"""kt-moe as the routed experts of transformers models (kt_moe.integrations.transformers): tiny
random models of every supported architecture (tests/transformers_models.py) give the logits of the
unpatched model, generate() runs, the hybrid mode (num_gpu_experts) gives the same, and models or
settings kt-moe cannot take are clear errors.

The reference is the unpatched model in fp32 (in bf16 a near-tie of the router flips a token's
experts between two runs of torch itself: 0.04 relative L2 between torch's bf16 and fp32 logits of
one tiny Mixtral); the bounds are the issue's: BF16 1e-2, AMXINT8 3e-2, AMXINT4 0.15."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kt_moe.integrations.transformers import offload_experts
from kt_moe.reference import relative_l2
from transformers_models import ARCHITECTURES, tiny_model, tokens

BOUNDS = {"BF16": 1e-2, "AMXINT8": 3e-2, "AMXINT4": 0.15}


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.fixture(scope="module", params=ARCHITECTURES)
def reference(request):
    """(architecture, fp32 model, its logits on tokens())."""
    model = tiny_model(request.param, torch.float32)
    return request.param, model, logits(model, tokens())


@pytest.mark.parametrize("method", BOUNDS)
def test_logits_match_the_unpatched_model(reference, method):
    architecture, model, expected = reference
    patched = offload_experts(copy.deepcopy(model), method=method, cpuinfer_threads=2)
    assert patched.config._experts_implementation == "kt_moe"
    assert relative_l2(logits(patched, tokens()), expected) <= BOUNDS[method]


def test_experts_parameters_are_freed(reference):
    _, model, _ = reference
    patched = offload_experts(copy.deepcopy(model), method="AMXINT4", cpuinfer_threads=2)
    names = [name for name, _ in patched.named_parameters()]
    assert not any(name.endswith(("experts.gate_up_proj", "experts.down_proj")) for name in names)
    assert any(name.endswith("self_attn.o_proj.weight") for name in names)  # the rest stays in torch


def test_greedy_generate_gives_the_unpatched_tokens(reference):
    _, model, _ = reference
    prompt = tokens(1, 6, seed=3)
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False)
    patched = offload_experts(copy.deepcopy(model), method="BF16", cpuinfer_threads=2)
    assert torch.equal(patched.generate(prompt, max_new_tokens=8, do_sample=False), expected)


@pytest.mark.parametrize("num_gpu_experts", [3, 8])
def test_hybrid_mode_keeps_the_first_experts_in_torch(reference, num_gpu_experts):
    _, model, expected = reference
    patched = offload_experts(copy.deepcopy(model), method="BF16", num_gpu_experts=num_gpu_experts,
                              cpuinfer_threads=2)
    assert relative_l2(logits(patched, tokens()), expected) <= BOUNDS["BF16"]
    experts = [module for name, module in patched.named_modules() if hasattr(module, "kt_moe")]
    assert all(module.kt_moe.gpu_gate_up.shape[0] == num_gpu_experts for module in experts)


def test_bf16_model_keeps_its_dtype():
    model = tiny_model("qwen3_moe", torch.bfloat16, seed=1)
    expected = logits(model, tokens())
    patched = offload_experts(copy.deepcopy(model), method="BF16", cpuinfer_threads=2)
    out = patched(tokens()).logits
    assert out.dtype == torch.bfloat16
    assert relative_l2(out.float(), expected) <= BOUNDS["BF16"]


def test_model_without_supported_experts_is_refused():
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match=r"model_type 'llama'.*supported: Qwen3-MoE \(qwen3_moe\)"):
        offload_experts(llama)


def test_other_activation_is_refused():
    model = tiny_model("qwen3_moe", torch.float32)
    model.config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="activation is 'gelu', not 'silu'"):
        offload_experts(model)


def test_offloading_twice_is_refused():
    model = offload_experts(tiny_model("mixtral", torch.float32), method="BF16", cpuinfer_threads=1)
    with pytest.raises(ValueError, match="already offloaded"):
        offload_experts(model, method="BF16", cpuinfer_threads=1)


def test_sft_method_refuses_gpu_experts():
    with pytest.raises(ValueError, match="num_gpu_experts: must be 0 with the SFT method AMXBF16_SFT"):
        offload_experts(tiny_model("qwen3_moe", torch.float32), method="AMXBF16_SFT", num_gpu_experts=2)


def test_wrapper_parameters_are_validated():
    with pytest.raises(ValueError, match="threadpool_count"):
        offload_experts(tiny_model("qwen3_moe", torch.float32), method="BF16", cpuinfer_threads=1, threadpool_count=2)


@pytest.mark.parametrize("architecture", ["qwen3_moe", "mixtral"])  # two MoE layers (DeepSeek's first is dense)
def test_a_failure_part_way_leaves_a_working_model(architecture, monkeypatch):
    """Layers before the failing one run on kt-moe, the others as before; the error names the layer."""
    import kt_moe.integrations.transformers as integration
    patched = tiny_model(architecture, torch.float32)
    expected = logits(patched, tokens())
    load, calls = integration._load, []

    def failing_second_load(wrapper, module, weight_path, num_experts):
        calls.append(wrapper.config.layer_idx)
        if len(calls) == 2:
            raise ValueError("damaged")
        load(wrapper, module, weight_path, num_experts)
    monkeypatch.setattr(integration, "_load", failing_second_load)
    first, second = [site.layer_idx for site in integration.find_experts(patched)][:2]
    with pytest.raises(ValueError, match=rf"layer {second}: damaged \(layers {first} run on kt-moe, the others as "):
        offload_experts(patched, method="BF16", cpuinfer_threads=2)
    offloaded = [hasattr(site.module, "kt_moe") for site in integration.find_experts(patched)]
    assert offloaded[0] and not any(offloaded[1:])
    assert relative_l2(logits(patched, tokens()), expected) <= BOUNDS["BF16"]


def test_a_failure_on_the_first_layer_changes_nothing(monkeypatch):
    import kt_moe.integrations.transformers as integration
    model = tiny_model("mixtral", torch.float32)

    def failing_load(*args):
        raise RuntimeError("no memory")
    monkeypatch.setattr(integration, "_load", failing_load)
    with pytest.raises(RuntimeError, match=r"layer 0: no memory \(nothing changed\)"):
        offload_experts(model, method="BF16", cpuinfer_threads=1)
    assert model.config._experts_implementation == "grouped_mm"
