"""Running a test program on N ranks: spawned processes joined by torch.distributed (gloo over a
file rendezvous in a temporary folder, so no port is taken), each with one thread.

run_ranks(world, program, *args) calls program(rank, world, *args) on every rank (program: a
module-level function of an importable module; in_turn runs several) and returns the ranks' return
values in rank order; it raises AssertionError with the failed ranks' tracebacks, and kills them all
when they do not finish within `timeout` seconds. run_ranks_raw gives each rank's exit code and error text instead."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import tempfile
import traceback
from typing import Any, Callable, List, NamedTuple, Optional

import torch

GROUP_TIMEOUT_S = 60  # the process group's timeout: a lost peer makes the others raise within it


class RankOutcome(NamedTuple):
    exitcode: Optional[int]  # None: killed at the deadline
    error: str               # the rank's traceback, "" when it finished
    result: Any              # its return value (None unless it finished)


def _rank_main(rank: int, world: int, folder: str, group_timeout_s: float, program: Callable, args: tuple) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    import torch.distributed as dist
    try:
        dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=group_timeout_s))
        result = program(rank, world, *args)
        torch.save(result, os.path.join(folder, f"result{rank}.pt"))
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(folder, f"error{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise SystemExit(1)


def run_ranks_raw(world: int, program: Callable, *args, timeout: float = 240,
                  group_timeout_s: float = GROUP_TIMEOUT_S) -> List[RankOutcome]:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        processes = [context.Process(target=_rank_main, args=(rank, world, folder, group_timeout_s, program, args))
                     for rank in range(world)]
        for process in processes:
            process.start()
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        for process in processes:
            process.join(max(0.0, (deadline - datetime.datetime.now()).total_seconds()))
        outcomes = []
        for rank, process in enumerate(processes):
            if process.is_alive():
                process.kill()
                process.join()
                outcomes.append(RankOutcome(None, f"rank {rank}: still running after {timeout} s", None))
                continue
            error_file, result_file = (os.path.join(folder, f"{kind}{rank}.{ext}")
                                       for kind, ext in (("error", "txt"), ("result", "pt")))
            error = open(error_file).read() if os.path.exists(error_file) else ""
            result = torch.load(result_file, weights_only=False) if os.path.exists(result_file) else None
            outcomes.append(RankOutcome(process.exitcode, error, result))
        return outcomes


def in_turn(rank: int, world: int, calls: list) -> List[Any]:
    """A rank program running several: calls = [(program, args), ...] in order, on the same process
    group (one spawn for several checks); their results in a list."""
    return [program(rank, world, *args) for program, args in calls]


def run_ranks(world: int, program: Callable, *args, timeout: float = 240) -> List[Any]:
    outcomes = run_ranks_raw(world, program, *args, timeout=timeout)
    failed = [f"rank {rank} failed (exit code {outcome.exitcode}):\n{outcome.error}"
              for rank, outcome in enumerate(outcomes) if outcome.exitcode]
    assert not failed, "\n".join(failed)  # every rank's error: the first to fail is often not the cause
    return [outcome.result for outcome in outcomes]
