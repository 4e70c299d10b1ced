"""Worker pool: thread/subpool layout, every index handled exactly once (also across thousands of
queued tasks), task errors surfacing as RuntimeError at sync, argument checks, idle threads that
sleep, sync() releasing the GIL, arrays kept alive until sync, shared pools and the NUMA reader."""

import gc
import threading
import time
import weakref

import pytest
import torch

from kt_moe._native import WorkerPool, numa_nodes
from kt_moe.pool import shared_pool

LAYOUTS = [(1, 1), (2, 1), (2, 2), (3, 2)]


def zeros(n):
    return torch.zeros(n, dtype=torch.int64)


@pytest.mark.parametrize("threads,subpools", LAYOUTS)
def test_layout_is_reported(threads, subpools):
    pool = WorkerPool(threads, subpools)
    assert (pool.thread_count, pool.subpool_count) == (threads, subpools)


@pytest.mark.parametrize("threads,subpools", LAYOUTS)
@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000])
def test_every_index_counted_once(threads, subpools, n):
    pool = WorkerPool(threads, subpools)
    counts = zeros(n)
    pool.submit_selftest(counts)
    pool.sync()
    assert torch.equal(counts, torch.ones(n, dtype=torch.int64))


@pytest.mark.parametrize("threads,subpools", LAYOUTS)
def test_thousands_of_small_tasks_then_one_sync(threads, subpools):
    pool = WorkerPool(threads, subpools)
    counts = zeros(37)
    for _ in range(2000):
        pool.submit_selftest(counts)
    pool.sync()
    assert torch.equal(counts, torch.full((37,), 2000, dtype=torch.int64))


@pytest.mark.parametrize("threads,subpools", [(1, 1), (3, 2)])
def test_task_error_is_runtime_error_at_sync_and_pool_stays_usable(threads, subpools):
    pool = WorkerPool(threads, subpools)
    before, failing, failing_too, after = zeros(100), zeros(100), zeros(100), zeros(100)
    pool.submit_selftest(before)
    pool.submit_selftest(failing, fail_at=42, message="expert 42 exploded")
    pool.submit_selftest(failing_too, fail_at=7, message="second failure is not reported")
    pool.submit_selftest(after)
    with pytest.raises(RuntimeError, match="^expert 42 exploded$"):
        pool.sync()
    assert torch.equal(before, torch.ones(100, dtype=torch.int64))
    assert torch.equal(after, torch.ones(100, dtype=torch.int64))  # later tasks still ran
    assert failing[42] == 0
    pool.sync()  # the error was reported once
    again = zeros(100)
    pool.submit_selftest(again)
    pool.sync()
    assert torch.equal(again, torch.ones(100, dtype=torch.int64))


@pytest.mark.parametrize("threads,subpools,name", [(0, 1, "threads"), (-3, 1, "threads"), (2, 0, "subpools"),
                                                   (2, 3, "subpools")])
def test_invalid_arguments_raise_value_error(threads, subpools, name):
    with pytest.raises(ValueError, match=name):
        WorkerPool(threads, subpools)
    with pytest.raises(ValueError, match=name):
        shared_pool(threads, subpools)


def test_sync_with_nothing_submitted_returns():
    pool = WorkerPool(2, 2)
    pool.sync()
    pool.sync()


def test_selftest_rejects_wrong_arrays():
    pool = WorkerPool(1, 1)
    with pytest.raises(TypeError):
        pool.submit_selftest(torch.zeros(4, dtype=torch.int32))
    with pytest.raises(TypeError):
        pool.submit_selftest(torch.zeros(4, 2, dtype=torch.int64)[:, 0])  # not contiguous
    pool.sync()


def test_idle_pool_uses_no_cpu():
    pool = WorkerPool(2, 2)
    counts = zeros(1000)
    for _ in range(50):
        pool.submit_selftest(counts)
    pool.sync()
    time.sleep(0.05)
    start = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - start < 0.05
    assert counts[0] == 50  # the pool was alive and used throughout


def test_sync_releases_the_gil():
    pool = WorkerPool(2, 1)
    counts = zeros(60)
    pool.submit_selftest(counts, pause_us=20_000)  # 60 x 20 ms on 2 threads: about 0.6 s
    entered, synced_at = threading.Event(), []

    def wait():
        entered.set()
        pool.sync()
        synced_at.append(time.monotonic())

    waiter = threading.Thread(target=wait)
    waiter.start()
    entered.wait()
    time.sleep(0.05)
    spins, deadline = 0, time.monotonic() + 0.1
    while time.monotonic() < deadline:  # Python code runs only while nobody holds the GIL
        spins += 1
    loop_done_at = time.monotonic()
    waiter.join()
    assert spins > 0 and loop_done_at < synced_at[0]
    assert torch.equal(counts, torch.ones(60, dtype=torch.int64))


@pytest.mark.parametrize("threads,subpools", [(1, 1), (3, 2)])
def test_an_idle_pool_runs_a_task_on_the_calling_thread(threads, subpools):
    pool = WorkerPool(threads, subpools)
    counts = zeros(50)
    assert pool.run_selftest_here(counts)
    assert torch.equal(counts, torch.ones(50, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="^raised here$"):
        pool.run_selftest_here(zeros(10), fail_at=3, message="raised here")
    pool.sync()  # the error went to its caller, not to the pool
    assert pool.run_selftest_here(counts)  # still usable
    assert counts[0] == 2


def test_a_busy_pool_does_not_run_a_task_on_the_calling_thread():
    pool = WorkerPool(2, 1)
    queued, here = zeros(2), zeros(4)
    pool.submit_selftest(queued, pause_us=100_000)
    assert not pool.run_selftest_here(here)
    assert torch.equal(here, zeros(4))  # not run
    pool.sync()
    assert torch.equal(queued, torch.ones(2, dtype=torch.int64))


def test_tasks_submitted_while_one_runs_here_wait_behind_it():
    pool = WorkerPool(2, 1)
    here, queued, started = zeros(4), zeros(1), threading.Event()

    def run_here():
        started.set()
        assert pool.run_selftest_here(here, pause_us=100_000)  # about 0.2 s on 2 threads

    runner = threading.Thread(target=run_here)
    runner.start()
    started.wait()
    time.sleep(0.05)
    pool.submit_selftest(queued)
    pool.sync()  # waits for the task run here too
    assert torch.equal(here, torch.ones(4, dtype=torch.int64))
    assert queued[0] == 1
    runner.join()


def test_arrays_stay_alive_until_sync():
    pool = WorkerPool(2, 1)
    counts = zeros(8)
    alive = weakref.ref(counts)
    pool.submit_selftest(counts, pause_us=20_000)
    del counts
    gc.collect()
    assert alive() is not None
    pool.sync()
    gc.collect()
    assert alive() is None


def test_destroying_a_pool_runs_its_pending_tasks():
    pool = WorkerPool(2, 2)
    counts = zeros(10)
    for _ in range(5):
        pool.submit_selftest(counts, pause_us=1000)
    del pool
    assert torch.equal(counts, torch.full((10,), 5, dtype=torch.int64))


def test_shared_pool_shares_by_settings():
    a, b = shared_pool(2, 1), shared_pool(2, 1)
    c, d = shared_pool(1, 1), shared_pool(2, 2)
    assert a is b
    assert len({id(a), id(c), id(d)}) == 3
    assert (d.thread_count, d.subpool_count) == (2, 2)


@pytest.mark.filterwarnings("ignore:cpuinfer_threads=3 is more than")  # 3 threads: a pool no other test holds
def test_shared_pool_is_thread_safe_and_released_with_its_last_user():
    got, barrier = [], threading.Barrier(8)

    def ask():
        barrier.wait()
        got.append(shared_pool(3, 1))

    askers = [threading.Thread(target=ask) for _ in range(8)]
    for t in askers:
        t.start()
    for t in askers:
        t.join()
    assert all(p is got[0] for p in got)
    alive = weakref.ref(got[0])
    got.clear()
    gc.collect()
    assert alive() is None


def test_numa_reader_parses_sysfs(tmp_path):
    for name, cpulist in [("node0", "0-3,8-11\n"), ("node10", "12\n"), ("node2", "4-7"), ("node3", "\n"),
                          ("node4", "0-\n"), ("nodeX", "13\n")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "cpulist").write_text(cpulist)
    (tmp_path / "node5").mkdir()  # no cpulist
    assert numa_nodes(str(tmp_path)) == [(0, [0, 1, 2, 3, 8, 9, 10, 11]), (2, [4, 5, 6, 7]), (10, [12])]


def test_numa_reader_without_sysfs_gives_one_node_with_every_cpu(tmp_path):
    nodes = numa_nodes(str(tmp_path / "missing"))
    assert len(nodes) == 1 and nodes[0][0] == 0
    assert nodes[0][1] == list(range(len(nodes[0][1]))) and len(nodes[0][1]) >= 1


def test_machine_numa_nodes_cover_distinct_cpus():
    nodes = numa_nodes()
    cpus = [c for _, node_cpus in nodes for c in node_cpus]
    assert nodes and len(cpus) == len(set(cpus)) >= 1
