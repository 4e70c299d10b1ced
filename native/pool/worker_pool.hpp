// WorkerPool: cpuinfer_threads compute threads split into threadpool_count subpools (spread over
// the NUMA nodes), and an ordered task queue (submit/sync) run by one dispatcher thread that only
// hands work to the subpools and waits; a caller that finds the queue idle may stand in for it
// (run_here_if_idle). Idle threads sleep (subpool threads after polling for up to 50 us).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pool/subpool.hpp"

namespace kt_moe {

class WorkerPool {
 public:
  // Splits `threads` among `subpools` subpools as evenly as possible (earlier subpools get the
  // remainder). With N > 1 NUMA nodes, subpool s runs on node s % N, its threads pinned to that
  // node's CPUs. Throws std::invalid_argument naming the parameter unless 1 <= subpools <= threads,
  // std::runtime_error "could not start N worker threads ...: <the system's reason>" when the
  // threads cannot be started. Threads are named
  // kt_moe-s<subpool>-<k> and kt_moe-queue (the dispatcher).
  WorkerPool(int threads, int subpools);
  // Runs every task already submitted (pending ones included), then joins all threads. Errors of
  // tasks not yet reported by sync() are dropped.
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int thread_count() const { return threads_; }
  int subpool_count() const { return static_cast<int>(subpools_.size()); }
  Subpool& subpool(int s) { return *subpools_.at(s); }

  // Runs fn(s) for every subpool s at once, each on its subpool's leader thread (so fn may call
  // subpool(s).parallel_for), waits for all and rethrows the exception of the lowest s that threw.
  // Concurrent callers take turns. std::logic_error when called from a subpool thread.
  void for_each_subpool(const std::function<void(int)>& fn);

  // Runs fn(i) for every i in [0, n) on all threads of all subpools: subpool s takes the s-th
  // contiguous share of the range and hands its indices out dynamically. Rethrows like
  // for_each_subpool. For work with no subpool affinity (gathers, merges).
  void parallel_for_all(int n, const std::function<void(int)>& fn);

  // Queues `task` and returns at once. Tasks run one at a time in submission order on the
  // dispatcher thread; a task should do its work through for_each_subpool. Tasks must not call
  // sync(). A task that throws does not stop the ones after it.
  void submit(std::function<void()> task);

  // Runs `task` on the calling thread when nothing is queued or running, and returns true: the
  // caller stands in for the dispatcher (tasks submitted meanwhile wait behind it, sync() waits for
  // it) without the two thread hand-overs of submit-and-wait. Returns false without running it
  // otherwise. What `task` throws reaches the caller, not sync(). Same rules as a submitted task;
  // std::logic_error when called from a pool thread.
  bool run_here_if_idle(const std::function<void()>& task);

  // Waits until every task submitted before the call has finished. If any task has thrown since
  // the last sync(), throws std::runtime_error with the first such exception's message and forgets
  // it (the pool stays usable). std::logic_error when called from a pool thread.
  void sync();

 private:
  void dispatch_loop();
  bool on_pool_thread() const;

  int threads_;
  std::vector<std::unique_ptr<Subpool>> subpools_;
  std::mutex for_each_mutex_;

  std::mutex m_;  // guards the queue state below
  std::condition_variable task_cv_;  // the dispatcher sleeps here while the queue is empty
  std::condition_variable idle_cv_;  // sync() waits here
  std::deque<std::function<void()>> queue_;
  unsigned long long submitted_ = 0, finished_ = 0;
  bool has_error_ = false;
  std::string first_error_;
  bool stop_ = false;
  bool running_here_ = false;  // a run_here_if_idle() task is running: the dispatcher waits
  std::thread dispatcher_;  // last: started once everything above exists
};

}  // namespace kt_moe
