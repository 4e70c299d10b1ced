"""Pool topology and thread counts: KT_MOE_FAKE_NUMA_NODES splits the allowed CPUs into pseudo-nodes
so that the multi-node paths run on a one-node machine (subpools pinned to their node's CPUs,
memory bound with mbind, engines giving the results of one node; run in fresh interpreters, the
variable being read at process start); more cpuinfer_threads than allowed CPUs warns; threads that
cannot start give an error that says so."""

import json
import os
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

import inference_helpers
import sft_helpers
from kt_moe.pool import shared_pool

TESTS = str(Path(__file__).parent)
ALLOWED = sorted(os.sched_getaffinity(0))
TWO_NODES = {"KT_MOE_FAKE_NUMA_NODES": "2"}
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="two pseudo-nodes need two allowed CPUs")

# Every kt_moe pool thread of the process (named kt_moe-s<subpool>-<k>) and the CPUs it may run on.
POOL_THREADS = r"""
import json, os, re
from kt_moe._native import WorkerPool, pool_numa_nodes
pool = WorkerPool(4, 2)
threads = {}
for task in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{task}/comm") as f:
        name = f.read().strip()
    if re.fullmatch(r"kt_moe-s\d+-\d+", name):
        with open(f"/proc/self/task/{task}/status") as f:
            threads[name] = next(line.split(":")[1].strip() for line in f if line.startswith("Cpus_allowed_list"))
print(json.dumps({"nodes": pool_numa_nodes(), "threads": threads}))
"""

ENGINE_RESULTS = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
import test_pool_topology
torch.save(test_pool_topology.engine_results(), sys.argv[2])
"""


def cpu_list(text):
    """A kernel CPU list such as '0-3,8' as a list of ints."""
    cpus = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def halves(cpus):
    cut = (len(cpus) + 1) // 2
    return [cpus[:cut], cpus[cut:]]


def engine_results():
    """Outputs of BF16 and AMXINT8 inference and an AMXBF16_SFT step (forward and backward), each with
    threadpool_count=2 on two threads."""
    results = {}
    for method in ("BF16", "AMXINT8"):
        wrapper, layer = inference_helpers.build(inference_helpers.MAIN, seed=11, threads=2, tp=2, method=method)
        results[method] = wrapper.forward(*layer.batch(9, 2, seed=11))
    wrapper, layer = sft_helpers.build(sft_helpers.MAIN, top_k=2, seed=12, threads=2, tp=2)
    step = sft_helpers.step(wrapper, layer.batch(9, 2, seed=12))
    results["AMXBF16_SFT"] = {"out": step.out, "grad_input": step.grad_input, **step.grads}
    return results


@needs_two_cpus
def test_pseudo_nodes_pin_each_subpool_to_its_node(run_python):
    out = run_python("-c", POOL_THREADS, env=TWO_NODES)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    node_cpus = halves(ALLOWED)
    assert found["nodes"] == [[0, cpus] for cpus in node_cpus]  # the real node's id: memory binds there
    assert sorted(found["threads"]) == ["kt_moe-s0-0", "kt_moe-s0-1", "kt_moe-s1-0", "kt_moe-s1-1"]
    for name, allowed in found["threads"].items():
        subpool = int(re.match(r"kt_moe-s(\d+)", name).group(1))
        assert cpu_list(allowed) == node_cpus[subpool % 2], name


def test_one_node_leaves_threads_unpinned(run_python):
    out = run_python("-c", POOL_THREADS)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert len(found["threads"]) == 4
    assert all(cpu_list(allowed) == ALLOWED for allowed in found["threads"].values())


def bound_mappings():
    """Lines of this process's numa_maps with an mbind policy."""
    with open("/proc/self/numa_maps") as f:
        return sum(" bind:" in line for line in f)


@needs_two_cpus
def test_pseudo_nodes_bind_engine_memory(run_python):
    code = "import sys\nsys.path.insert(0, sys.argv[1])\nimport test_pool_topology as t, inference_helpers as ih\n" \
           "wrapper, _ = ih.build(ih.MAIN, threads=2, tp=2)\nprint(t.bound_mappings())"
    out = run_python("-c", code, TESTS, env=TWO_NODES)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 0
    wrapper, _ = inference_helpers.build(inference_helpers.MAIN, threads=2, tp=2)  # one node: nothing bound
    assert bound_mappings() == 0


# The topology is found at the first pool's construction; a failed attempt is retried by the next.
INVALID_COUNTS = r"""
import os, sys
import kt_moe._native as native
for value in sys.argv[1:]:
    os.environ["KT_MOE_FAKE_NUMA_NODES"] = value
    try:
        native.WorkerPool(1, 1)
    except ValueError as e:
        print(e)
"""


def test_invalid_pseudo_node_count_is_a_value_error(run_python):
    values = ["0", "x", "2.5", "-1", str(len(ALLOWED) + 1)]
    out = run_python("-c", INVALID_COUNTS, *values)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split("\n") == [
        f"KT_MOE_FAKE_NUMA_NODES must be an integer in [1, {len(ALLOWED)}] (the CPUs this process may use), "
        f"got '{value}'" for value in values]


@needs_two_cpus
def test_engines_on_two_pseudo_nodes_match_one_node(run_python, tmp_path):
    path = tmp_path / "results.pt"
    out = run_python("-c", ENGINE_RESULTS, TESTS, str(path), env=TWO_NODES, timeout=300)
    assert out.returncode == 0, out.stderr
    two_nodes, one_node = torch.load(path), engine_results()
    for method in ("BF16", "AMXINT8"):
        assert torch.equal(two_nodes[method], one_node[method]), method
    for name, tensor in one_node["AMXBF16_SFT"].items():
        assert torch.equal(two_nodes["AMXBF16_SFT"][name], tensor), name
    wrapper, layer = inference_helpers.build(inference_helpers.MAIN, seed=11, threads=2, tp=2)
    inference_helpers.assert_close(two_nodes["BF16"], layer.reference(*layer.batch(9, 2, seed=11)))


def test_more_threads_than_allowed_cpus_warns():
    with pytest.warns(UserWarning, match=rf"^cpuinfer_threads={len(ALLOWED) + 1} is more than the {len(ALLOWED)} "
                                         r"CPUs this process may run on \(os.sched_getaffinity\)"):
        shared_pool(len(ALLOWED) + 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shared_pool(len(ALLOWED), 1)


# Thread stacks (8 MiB of address space each by default) cannot be mapped under a limit just above
# what the process maps, so the pool's threads cannot all start; once the limit is lifted they can.
THREADS_REFUSED = r"""
import resource, warnings
from kt_moe.pool import shared_pool
warnings.simplefilter("ignore")
with open("/proc/self/status") as f:
    mapped = next(int(line.split()[1]) for line in f if line.startswith("VmSize")) * 1024
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (mapped + (64 << 20), hard))
try:
    shared_pool(64, 2)
except RuntimeError as e:
    print(e)
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
print(shared_pool(64, 2).thread_count)
"""


def test_threads_that_cannot_start_give_a_clear_error(run_python):
    out = run_python("-c", THREADS_REFUSED)
    assert out.returncode == 0, out.stderr
    message, count = out.stdout.strip().split("\n")
    assert message.startswith("could not start 64 worker threads (cpuinfer_threads, plus one dispatcher): "
                              "Resource temporarily unavailable; lower cpuinfer_threads"), message
    assert count == "64"
