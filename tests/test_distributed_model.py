"""A tiny Qwen3-MoE with kt-moe experts over 2 and 4 spawned ranks (gloo on loopback): expert
parallel (offload_experts(..., process_group=...)) and data parallel (DistributedDataParallel)
give the logits, input gradients and experts' LoRA gradients of one process with the whole batch,
train like it, and save one PEFT adapter that loads back on every rank."""

import torch
from safetensors.torch import load_file

from distributed_helpers import in_turn, run_ranks
from distributed_model_programs import Plan, attention_and_experts, base_model, run
from kt_moe.reference import relative_l2

TOL = 1e-3  # the ranks' fp32 partials are added, then rounded once as in one process: only the order
# of fp32 additions differs (measured: <= 1e-7)


def _compare(results, expected, input_scale=1.0):
    logits = torch.cat([r["logits"] for r in results])
    assert relative_l2(logits, expected["logits"]) <= TOL
    grad_embeds = torch.cat([r["grad_embeds"] for r in results]) * input_scale
    assert relative_l2(grad_embeds, expected["grad_embeds"]) <= TOL
    _compare_grads(results, expected)


def _compare_grads(results, expected):
    """Each rank's experts' LoRA gradients against the rows of one process's."""
    for name, grad in expected["grads"].items():
        module = name.rsplit(".", 1)[0]
        assert grad.norm() > 0
        for result in results:
            experts = result["experts"][module]
            want = grad if experts is None else grad[experts]
            assert relative_l2(result["grads"][name], want) <= TOL, (name, experts)


def test_two_ranks_expert_and_data_parallel(tmp_path):
    """Expert parallel from a checkpoint (load_offloaded), with the adapter saved and reloaded; data
    parallel under DDP; 20 training steps of each; expert parallel with DDP training the attention
    too: one spawn of two ranks running them in turn."""
    base_model().save_pretrained(tmp_path / "checkpoint")
    plans = [Plan(checkpoint=str(tmp_path / "checkpoint"), adapter_dir=str(tmp_path / "ranks")),
             Plan(mode="data"), Plan(steps=20), Plan(mode="data", steps=20)]
    per_rank = run_ranks(2, in_turn, [(run, (plan,)) for plan in plans] + [(attention_and_experts, ())])
    expert, data, expert_training, data_training, with_ddp = ([results[i] for results in per_rank] for i in range(5))

    _compare(expert, run(0, 1, Plan(adapter_dir=str(tmp_path / "one"))))
    assert all(len(experts) == 4 for experts in expert[0]["experts"].values())
    # one adapter, written by rank 0, with every expert in logical order; each rank reloads its share
    saved, single = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("ranks", "one"))
    assert saved.keys() == single.keys()
    for key in saved:
        assert torch.equal(saved[key], single[key]), key
    assert all(r["reloaded"] for r in expert)

    # DDP averages the parameters' gradients; the input gradient is each rank's own (of a loss over half the tokens)
    _compare(data, run(0, 1, Plan(mode="data")), input_scale=0.5)

    # expert parallel with DDP for the attention (docs/distributed.md): both kinds of gradient as one process's
    whole = attention_and_experts(0, 1)
    for result in with_ddp:
        assert relative_l2(result["q_proj"], whole["q_proj"]) <= TOL
    _compare_grads(with_ddp, whole)

    one = run(0, 1, Plan(steps=20))["losses"]
    for training in (expert_training, data_training):
        ranks = training[0]["losses"]
        assert ranks[-1] < ranks[0] / 4 and one[-1] < one[0] / 4
        for step in range(10):  # the same descent while the loss is large (later steps amplify rounding)
            assert abs(ranks[step] - one[step]) <= 0.02 * one[step], step


def test_four_ranks_expert_parallel_with_a_placement():
    plan = Plan(placement=((7, 0), (1, 6), (2, 5), (3, 4)))
    results = run_ranks(4, run, plan)
    _compare(results, run(0, 1, Plan()))
    assert [r["experts"]["model.layers.0.mlp.experts"] for r in results] == [list(p) for p in plan.placement]
