"""LLAMAFILE side by side with the peer's (kt-kernel's LLAMAFILE) on one GGUF layer, the qwen3-30b
shape (E=128, top-8, H=2048, I=768, which the peer accepts) in Q4_K_M's types (Q4_K gate and up,
Q6_K down) by default. Three steps, the peer's in its own virtual environment (kt-kernel 0.7.2
needs torch 2.9.1):

    python bench/bench_llamafile_peer.py write DIR          # the GGUF file, inputs, the oracle
    python bench/bench_llamafile_peer.py time DIR --impl ours --threads 1,2
    PEER_VENV/bin/python bench/bench_llamafile_peer.py time DIR --impl peer --threads 1,2
    python bench/bench_llamafile_peer.py check DIR          # both outputs against the oracle

`write` uses the tests' GGUF writer (tests/gguf_fixtures.py: gguf's GGUFWriter, K-quant blocks
random with finite scales); the oracle is kt_moe.reference on gguf's dequantization. `time` runs q = 1
and q = 512 (2 warm-up and 9 timed calls, medians), reading 512 MB of other memory before each timed
call so that the experts come from memory, each thread count in its own process (the peer keeps the
thread pool its first wrapper made); the peer runs its CPU task (forward_task) directly, as its
forward() does after copying to pinned buffers, which need CUDA. Only torch is imported at the top:
the peer's environment has no kt-moe."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

SHAPE = dict(E=128, H=2048, I=768, k=8)
QS = (1, 512)


def write(directory: str, types: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from gguf_fixtures import write_gguf_layerset
    from kt_moe.reference import random_routing
    E, H, I, k = (SHAPE[key] for key in ("E", "H", "I", "k"))
    written = write_gguf_layerset(os.path.join(directory, "model", "model.gguf"), layers={0: tuple(types.split(","))},
                                  k=k, E=E, H=H, I=I)
    torch.save({m: written.weights[0][m] for m in ("gate", "up", "down")}, os.path.join(directory, "oracle.pt"))
    inputs = {}
    for q in QS:
        ids, weights = random_routing(q, E, k, seed=q)
        inputs[q] = (torch.randn(q, H, generator=torch.Generator().manual_seed(q)).to(torch.bfloat16), ids, weights)
    torch.save(inputs, os.path.join(directory, "inputs.pt"))
    print(f"wrote {directory}: layer 0 in {types}")


def peer_runner(threads: int, model: str):
    """The peer's wrapper and a call that runs its CPU task on CPU tensors."""
    def unpinned(make):  # the peer pins its staging buffers for GPU copies; there is no GPU here
        def call(*args, **kwargs):
            kwargs.pop("pin_memory", None)
            return make(*args, **kwargs)
        return call
    torch.zeros, torch.empty = unpinned(torch.zeros), unpinned(torch.empty)
    from kt_kernel import KTMoEWrapper
    E, H, I, k = (SHAPE[key] for key in ("E", "H", "I", "k"))
    wrapper = KTMoEWrapper(layer_idx=0, num_experts=E, num_experts_per_tok=k, hidden_size=H, moe_intermediate_size=I,
                           gpu_experts_mask=None, cpuinfer_threads=threads, threadpool_count=1, weight_path=model,
                           chunked_prefill_size=max(QS), method="LLAMAFILE")
    wrapper.load_weights(torch.arange(E, dtype=torch.int32))

    def run(x, ids, weights):
        out = torch.empty(x.shape[0], H, dtype=torch.bfloat16)
        q = torch.tensor([x.shape[0]], dtype=torch.int32)
        ids, weights = ids.to(torch.long).contiguous(), weights.float().contiguous()
        wrapper.cpu_infer.submit(wrapper.moe.forward_task(q.data_ptr(), k, ids.data_ptr(), weights.data_ptr(),
                                                          x.contiguous().data_ptr(), out.data_ptr(), False))
        wrapper.cpu_infer.sync()
        return out
    return run


def ours_runner(threads: int, model: str):
    from kt_moe import KTMoEWrapper
    E, H, I, k = (SHAPE[key] for key in ("E", "H", "I", "k"))
    wrapper = KTMoEWrapper(layer_idx=0, num_experts=E, num_experts_per_tok=k, hidden_size=H, moe_intermediate_size=I,
                           num_gpu_experts=0, cpuinfer_threads=threads, threadpool_count=1, weight_path=model,
                           chunked_prefill_size=max(QS), method="LLAMAFILE")
    wrapper.load_weights(torch.arange(E))
    return lambda x, ids, weights: wrapper.forward(x, ids, weights.float())


def time_impl(directory: str, impl: str, threads_list) -> None:
    if len(threads_list) > 1:  # a process per thread count: the peer keeps its first thread pool
        for threads in threads_list:
            subprocess.run([sys.executable, os.path.abspath(__file__), "time", directory, "--impl", impl, "--threads",
                            str(threads)], check=True)
        return
    inputs = torch.load(os.path.join(directory, "inputs.pt"))
    evict = torch.zeros(128 << 20, dtype=torch.float32)  # 512 MB
    torch.set_num_threads(1)
    for threads in threads_list:
        run = (peer_runner if impl == "peer" else ours_runner)(threads, os.path.join(directory, "model"))
        outputs = {}
        for q, (x, ids, weights) in inputs.items():
            for _ in range(2):
                run(x, ids, weights)
            times = []
            for _ in range(9):
                evict.add_(1)
                start = time.perf_counter()
                outputs[q] = run(x, ids, weights)
                times.append((time.perf_counter() - start) * 1e3)
            print(f"{impl:5s} threads {threads} q {q:4d}: median {statistics.median(times):8.2f} ms "
                  f"(min {min(times):.2f}, max {max(times):.2f})", flush=True)
        torch.save(outputs, os.path.join(directory, f"out_{impl}_{threads}.pt"))


def check(directory: str) -> None:
    from kt_moe.reference import moe_forward, relative_l2
    oracle = torch.load(os.path.join(directory, "oracle.pt"))
    inputs = torch.load(os.path.join(directory, "inputs.pt"))
    for name in sorted(f for f in os.listdir(directory) if f.startswith("out_")):
        outputs = torch.load(os.path.join(directory, name))
        for q, (x, ids, weights) in inputs.items():
            expected = moe_forward(x.float(), ids, weights.float(), oracle["gate"], oracle["up"], oracle["down"])
            print(f"{name[4:-3]:8s} q {q:4d}: relative L2 against gguf's dequantization "
                  f"{relative_l2(outputs[q].float(), expected.float()):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("write", "time", "check"))
    parser.add_argument("directory")
    parser.add_argument("--types", default="Q4_K,Q4_K,Q6_K", help="write: gate,up,down GGUF types")
    parser.add_argument("--impl", choices=("ours", "peer"), default="ours", help="time: which LLAMAFILE")
    parser.add_argument("--threads", default="1,2", help="time: comma list of cpuinfer_threads")
    args = parser.parse_args()
    if args.step == "write":
        write(args.directory, args.types)
    elif args.step == "time":
        time_impl(args.directory, args.impl, [int(t) for t in args.threads.split(",")])
    else:
        check(args.directory)


if __name__ == "__main__":
    main()
