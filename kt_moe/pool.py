"""Worker pools shared between wrappers: every wrapper that asks for the same (cpuinfer_threads,
threadpool_count) gets the same native pool, alive as long as one wrapper holds it. Different
settings get separate pools whose threads add up (see docs/threads.md)."""

from __future__ import annotations

import os
import threading
import warnings
import weakref

from kt_moe._native import WorkerPool

_lock = threading.Lock()
_pools: weakref.WeakValueDictionary[tuple[int, int], WorkerPool] = weakref.WeakValueDictionary()


def shared_pool(cpuinfer_threads: int, threadpool_count: int) -> WorkerPool:
    """The live pool with these settings, or a new one (ValueError unless 1 <= threadpool_count <=
    cpuinfer_threads; RuntimeError "could not start N worker threads: ..." when the system refuses
    them). Warns (UserWarning) when cpuinfer_threads exceeds the CPUs this process may run on."""
    available = len(os.sched_getaffinity(0))
    if cpuinfer_threads > available:
        warnings.warn(f"cpuinfer_threads={cpuinfer_threads} is more than the {available} CPUs this process may run "
                      "on (os.sched_getaffinity): threads will share cores and every forward waits for the "
                      "slowest; use at most that many", UserWarning, stacklevel=2)
    key = (cpuinfer_threads, threadpool_count)
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            pool = WorkerPool(cpuinfer_threads, threadpool_count)
            _pools[key] = pool
        return pool
