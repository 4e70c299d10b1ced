"""kt-moe side by side with the peer (kt-kernel) on one MoE layer, each in its own process and
environment (kt-kernel 0.7.2 needs torch 2.9.1: install it in a virtual environment of its own).
Three steps; the peer's `time` runs with that environment's python:

    python bench/bench_peer.py write DIR [--method M]     # the layer, inputs and the oracle
    python bench/bench_peer.py time DIR --impl ours --threads 1,2 [--group-size 64 [--symmetric]]
    PEER_VENV/bin/python bench/bench_peer.py time DIR --impl peer --threads 1,2
    python bench/bench_peer.py check DIR                  # every output against the oracle

Methods (`write --method`, kept in DIR/config.json):
  - LLAMAFILE (the default): one GGUF layer of the qwen3-30b shape (E=128, top-8, H=2048, I=768,
    which the peer accepts) in Q4_K_M's types (Q4_K gate and up, Q6_K down) unless --types says
    others, written with the tests' GGUF writer (tests/gguf_fixtures.py: gguf's GGUFWriter, K-quant
    blocks random with finite scales); both implementations read the file; q = 1 and 512.
  - AMXINT8, AMXINT4, BF16: random bf16 experts of the DeepSeek-V2-Lite shape (E=64, top-6, H=2048,
    I=1408), also written as a safetensors checkpoint in DeepSeek's expert names, which the peer's
    BF16 reads; both AMX methods quantize the bf16 tensors at load (load_weights_from_tensors), and
    kt-moe's BF16 takes the tensors too; q = 1, 128 and 512.
`--group-size 64` or `128` (with `--symmetric`: no zero points) times kt-moe's AMXINT4 with that
group choice (int4_kgroup); its outputs are kept as out_ours-g64[-sym]_<threads>.pt.
The oracle is kt_moe.reference on the layer's exact weights (gguf's dequantization for LLAMAFILE).
`time` reads 512 MB of other memory before each timed call with torch on as many threads as the
layer has, as bench_moe.py does, so that the experts come from memory and no core has idled before
the call (on this kind of virtual machine a core idle for more than a few milliseconds joins the
next call late); 2 warm-up and 9 timed calls, medians; each thread count in its own process (the
peer keeps the thread pool its first wrapper made); the peer runs its CPU task (forward_task)
directly, as its forward() does after copying to pinned buffers, which need CUDA. Only torch is
imported at the top level (kt-moe and the writers inside the steps that need them): the peer's
environment has no kt-moe."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

LLAMAFILE_SHAPE = dict(E=128, H=2048, I=768, k=8, qs=[1, 512])
DSV2_LITE_SHAPE = dict(E=64, H=2048, I=1408, k=6, qs=[1, 128, 512])
METHODS = ("LLAMAFILE", "AMXINT8", "AMXINT4", "BF16")
EXPERT_KEY = "model.layers.0.mlp.experts.{e}.{name}.weight"  # DeepSeek's names, which the peer's BF16 reads


def config_of(directory: str) -> dict:
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


def write(directory: str, method: str, types: str) -> None:
    from kt_moe.reference import random_routing
    config = dict(LLAMAFILE_SHAPE if method == "LLAMAFILE" else DSV2_LITE_SHAPE, method=method)
    E, H, I, k = (config[key] for key in ("E", "H", "I", "k"))
    model = os.path.join(directory, "model")
    os.makedirs(model, exist_ok=True)
    if method == "LLAMAFILE":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from gguf_fixtures import write_gguf_layerset
        written = write_gguf_layerset(os.path.join(model, "model.gguf"), layers={0: tuple(types.split(","))},
                                      k=k, E=E, H=H, I=I)
        weights = {m: written.weights[0][m] for m in ("gate", "up", "down")}
        config["types"] = types
    else:
        from safetensors.torch import save_file
        gen = torch.Generator().manual_seed(0)
        shapes = dict(gate=(E, I, H), up=(E, I, H), down=(E, H, I))
        weights = {m: (torch.randn(*s, generator=gen) * 0.02).to(torch.bfloat16) for m, s in shapes.items()}
        save_file({EXPERT_KEY.format(e=e, name=f"{m}_proj"): weights[m][e].contiguous() for m in shapes
                   for e in range(E)}, os.path.join(model, "model.safetensors"))
    torch.save(weights, os.path.join(directory, "oracle.pt"))
    inputs = {}
    for q in config["qs"]:
        ids, routing = random_routing(q, E, k, seed=q)
        inputs[q] = (torch.randn(q, H, generator=torch.Generator().manual_seed(q)).to(torch.bfloat16), ids, routing)
    torch.save(inputs, os.path.join(directory, "inputs.pt"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    print(f"wrote {directory}: {method}" + (f" in {types}" if method == "LLAMAFILE" else ", bf16 experts"))


def peer_runner(threads: int, directory: str, config: dict):
    """The peer's wrapper and a call that runs its CPU task on CPU tensors."""
    def unpinned(make):  # the peer pins its staging buffers for GPU copies; there is no GPU here
        def call(*args, **kwargs):
            kwargs.pop("pin_memory", None)
            return make(*args, **kwargs)
        return call
    torch.zeros, torch.empty = unpinned(torch.zeros), unpinned(torch.empty)
    from kt_kernel import KTMoEWrapper
    method = config["method"]
    E, H, I, k = (config[key] for key in ("E", "H", "I", "k"))
    quantized_at_load = method in ("AMXINT8", "AMXINT4")  # into weight_path, which must not hold a checkpoint
    path = os.path.join(directory, "peer_quantized" if quantized_at_load else "model")
    wrapper = KTMoEWrapper(layer_idx=0, num_experts=E, num_experts_per_tok=k, hidden_size=H, moe_intermediate_size=I,
                           gpu_experts_mask=None, cpuinfer_threads=threads, threadpool_count=1, weight_path=path,
                           chunked_prefill_size=max(config["qs"]), method=method)
    physical = torch.arange(E, dtype=torch.int32 if method == "LLAMAFILE" else torch.int64)
    if quantized_at_load:
        oracle = torch.load(os.path.join(directory, "oracle.pt"))
        wrapper.load_weights_from_tensors(oracle["gate"], oracle["up"], oracle["down"], physical)
    else:
        wrapper.load_weights(physical)

    def run(x, ids, weights):
        out = torch.empty(x.shape[0], H, dtype=torch.bfloat16)
        q = torch.tensor([x.shape[0]], dtype=torch.int32)
        ids, weights = ids.to(torch.long).contiguous(), weights.float().contiguous()
        wrapper.cpu_infer.submit(wrapper.moe.forward_task(q.data_ptr(), k, ids.data_ptr(), weights.data_ptr(),
                                                          x.contiguous().data_ptr(), out.data_ptr(), False))
        wrapper.cpu_infer.sync()
        return out
    return run


def ours_runner(threads: int, directory: str, config: dict, **options):
    from kt_moe import KTMoEWrapper
    method = config["method"]
    E, H, I, k = (config[key] for key in ("E", "H", "I", "k"))
    wrapper = KTMoEWrapper(layer_idx=0, num_experts=E, num_experts_per_tok=k, hidden_size=H, moe_intermediate_size=I,
                           num_gpu_experts=0, cpuinfer_threads=threads, threadpool_count=1,
                           weight_path=os.path.join(directory, "model"), chunked_prefill_size=max(config["qs"]),
                           method=method, **options)
    if method == "LLAMAFILE":
        wrapper.load_weights(torch.arange(E))
    else:
        oracle = torch.load(os.path.join(directory, "oracle.pt"))
        wrapper.load_weights_from_tensors(oracle["gate"], oracle["up"], oracle["down"], torch.arange(E))
    return lambda x, ids, weights: wrapper.forward(x, ids, weights.float())


def time_impl(directory: str, impl: str, threads_list, group_size=None, symmetric=False) -> None:
    """group_size / symmetric: kt-moe's AMXINT4 group choice (None: its default)."""
    if len(threads_list) > 1:  # a process per thread count: the peer keeps its first thread pool
        group = ["--group-size", str(group_size)] + (["--symmetric"] if symmetric else []) if group_size else []
        for threads in threads_list:
            subprocess.run([sys.executable, os.path.abspath(__file__), "time", directory, "--impl", impl, "--threads",
                            str(threads)] + group, check=True)
        return
    config = config_of(directory)
    inputs = torch.load(os.path.join(directory, "inputs.pt"))
    evict = torch.ones(128 << 20, dtype=torch.float32)  # 512 MB
    threads = threads_list[0]
    torch.set_num_threads(threads)  # the read before each call keeps every core of the layer's threads busy
    options, label = {}, impl
    if group_size:
        options, label = dict(group_size=group_size, zero_point=not symmetric), f"ours-g{group_size}" + \
            ("-sym" if symmetric else "")
    run = peer_runner(threads, directory, config) if impl == "peer" else ours_runner(threads, directory, config,
                                                                                      **options)
    outputs = {}
    for q, (x, ids, weights) in inputs.items():
        for _ in range(2):
            run(x, ids, weights)
        times = []
        for _ in range(9):
            evict.sum()
            start = time.perf_counter()
            outputs[q] = run(x, ids, weights)
            times.append((time.perf_counter() - start) * 1e3)
        print(f"{label:5s} {config['method']:9s} threads {threads} q {q:4d}: median "
              f"{statistics.median(times):8.2f} ms (min {min(times):.2f}, max {max(times):.2f})", flush=True)
    torch.save(outputs, os.path.join(directory, f"out_{label}_{threads}.pt"))


def check(directory: str) -> None:
    from kt_moe.reference import moe_forward, relative_l2
    oracle = {m: t.float() for m, t in torch.load(os.path.join(directory, "oracle.pt")).items()}
    inputs = torch.load(os.path.join(directory, "inputs.pt"))
    method = config_of(directory)["method"]
    for name in sorted(f for f in os.listdir(directory) if f.startswith("out_")):
        outputs = torch.load(os.path.join(directory, name))
        for q, (x, ids, weights) in inputs.items():
            expected = moe_forward(x.float(), ids, weights.float(), oracle["gate"], oracle["up"], oracle["down"])
            print(f"{name[4:-3]:8s} {method:9s} q {q:4d}: relative L2 against the layer's exact weights "
                  f"{relative_l2(outputs[q].float(), expected.float()):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("write", "time", "check"))
    parser.add_argument("directory")
    parser.add_argument("--method", choices=METHODS, default="LLAMAFILE", help="write: the method both run")
    parser.add_argument("--types", default="Q4_K,Q4_K,Q6_K", help="write, LLAMAFILE: gate,up,down GGUF types")
    parser.add_argument("--impl", choices=("ours", "peer"), default="ours", help="time: whose implementation")
    parser.add_argument("--threads", default="1,2", help="time: comma list of cpuinfer_threads")
    parser.add_argument("--group-size", type=int, choices=(64, 128), help="time, ours, AMXINT4: the group choice")
    parser.add_argument("--symmetric", action="store_true", help="time, ours: --group-size without zero points")
    args = parser.parse_args()
    if args.group_size and (args.impl != "ours" or config_of(args.directory)["method"] != "AMXINT4"):
        parser.error("--group-size times kt-moe's AMXINT4 (--impl ours on an AMXINT4 layer)")
    if args.step == "write":
        write(args.directory, args.method, args.types)
    elif args.step == "time":
        time_impl(args.directory, args.impl, [int(t) for t in args.threads.split(",")], args.group_size, args.symmetric)
    else:
        check(args.directory)


if __name__ == "__main__":
    main()
