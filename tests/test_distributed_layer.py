"""ExpertParallelMoE, a bare layer over 2 and 4 spawned ranks (gloo on loopback): the ranks' outputs,
input and routing gradients and each expert's LoRA gradients equal one process holding every
expert with the whole batch; each rank holds only its share of the weights; placement, collectives,
micro-batches, and a lost rank raise instead of hanging."""

import pytest
import torch

from distributed_helpers import in_turn, run_ranks, run_ranks_raw
from distributed_layer_programs import Case, E, expert_parallel, lost_peer, micro_batches, single_process
from kt_moe.distributed import ExpertParallelMoE, ExpertPlacement
from kt_moe.reference import relative_l2
from sft_helpers import LORA_NAMES

INFERENCE_TOL = 1e-2  # inference: each rank rounds its partial sums to bf16 before they are added
SFT_TOL = 1e-3  # SFT: fp32 partials, added and rounded once as in one process (measured: <= 1e-7)

TWO_RANKS = [
    Case("BF16", (7, 5)),
    Case("AMXINT8", (3, 9)),
    Case("AMXBF16_SFT", (7, 5)),
    # a load-balanced placement, point-to-point transfers, and rows received above chunked_prefill_size
    Case("AMXINT4_SFT", (7, 6), placement=((0, 3, 5, 6), (1, 2, 4, 7)), collective="send_recv", chunk=8),
]
# 4 ranks of 2 experts with top-3 routing (k > experts per rank), one rank without tokens
FOUR_RANKS = Case("AMXBF16_SFT", (9, 0, 4, 6))
MICRO_BATCHES = Case("AMXBF16_SFT", (8, 6))


def check_case(case, results):
    expected = single_process(case)
    tol = SFT_TOL if case.sft else INFERENCE_TOL
    for key in ("out", "grad_input", "routing_weights"):
        if key in expected:
            got = torch.cat([r[key] for r in results])
            assert relative_l2(got, expected[key]) <= tol, (case, key)
    for name in LORA_NAMES if case.sft else ():
        for result in results:
            want = expected[name][result["experts"]]
            assert want.norm() > 0
            assert relative_l2(result[name], want) <= tol, (case, name, result["experts"])
    held = sorted(e for r in results for e in r["experts"])
    assert held == list(range(E)), case
    if case.placement:
        assert [r["experts"] for r in results] == [list(p) for p in case.placement]
    total = sum(r["resident"] for r in results)
    for result in results:  # each rank holds the bytes of its experts only
        assert result["resident"] == total * len(result["experts"]) // E, case


def test_two_ranks_match_one_process():
    calls = [(expert_parallel, (case,)) for case in TWO_RANKS] + [(micro_batches, (MICRO_BATCHES,))]
    per_rank = run_ranks(2, in_turn, calls)
    for i, case in enumerate(TWO_RANKS):
        check_case(case, [results[i] for results in per_rank])
    # two saved forwards, backward in reverse order: the gradients of the two together
    expected = single_process(MICRO_BATCHES)
    for results, experts in zip(per_rank, ([0, 1, 2, 3], [4, 5, 6, 7])):
        for name, grad in zip(LORA_NAMES, results[-1]):
            assert relative_l2(grad, expected[name][experts]) <= SFT_TOL, name


def test_four_ranks_match_one_process():
    check_case(FOUR_RANKS, run_ranks(4, expert_parallel, FOUR_RANKS))


@pytest.mark.parametrize("how", ["exit", "stall"])
def test_lost_rank_raises_within_the_timeout(how):
    group_timeout = 3
    outcomes = run_ranks_raw(2, lost_peer, Case("BF16", (4, 4)), how, timeout=60, group_timeout_s=group_timeout)
    survivor = outcomes[0]
    assert survivor.exitcode == 0, survivor.error
    assert survivor.result["error"], "the call on the lost rank returned"
    assert survivor.result["seconds"] < group_timeout + 10


def test_placement_rules():
    assert ExpertPlacement(10, 3).as_lists() == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    placement = ExpertPlacement(4, 2, [[3, 0], [2, 1]])
    assert placement.owner.tolist() == [0, 1, 1, 0] and placement.local_index.tolist() == [1, 1, 0, 0]
    for bad, message in [([[0, 1]], "expected a list of 2 lists"), ([[0, 1], [1, 2, 3]], "expert 1 is on rank 0"),
                         ([[0, 1], [2]], r"experts \[3\] are on no rank"), ([[0, 1], [2, 7]], "expected expert ids"),
                         ([[0, 1, 2, 3], []], "at least one expert")]:
        with pytest.raises(ValueError, match=message):
            ExpertPlacement(4, 2, bad)


def test_needs_an_initialized_process_group():
    with pytest.raises(ValueError, match="process_group: torch.distributed is not initialized"):
        ExpertParallelMoE(**Case("BF16", (1,)).arguments())


def test_collective_choice(monkeypatch):
    from kt_moe.distributed import expert_parallel
    for backend, expected in (("gloo", "all_to_all"), ("mpi", "all_to_all"), ("cpu:gloo,cuda:nccl", "all_to_all"),
                              ("ucc", "send_recv")):
        monkeypatch.setattr(expert_parallel.dist, "get_backend", lambda group, backend=backend: backend)
        assert expert_parallel._collective("auto", None) == expected
    assert expert_parallel._collective("send_recv", None) == "send_recv"
    with pytest.raises(ValueError, match="collective: expected 'auto'"):
        expert_parallel._collective("ring", None)
    monkeypatch.setattr(expert_parallel.dist, "get_backend", lambda group: "nccl")
    with pytest.raises(ValueError, match="process_group: its backend is nccl"):
        expert_parallel._collective("auto", None)
