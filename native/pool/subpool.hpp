// Subpool: a fixed group of worker threads (one per NUMA node on a server) that runs parallel
// loops with dynamically handed-out indices, plus a "leader" slot so that the WorkerPool can run
// one function inside every subpool at once. Idle threads poll for up to 50 us, then sleep on a
// condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace kt_moe {

// Names the calling thread for top, gdb and /proc/<pid>/task/*/comm (the first 15 characters).
void name_current_thread(const std::string& name);

class Subpool {
 public:
  // Starts `threads` (>= 1) worker threads, named `<name>-<k>` (what top and /proc show; at most
  // 15 characters are kept). Thread 0 is the leader. When `cpus` is not empty every thread is
  // pinned to that CPU set (refused pins are ignored). `node` is the NUMA node index the subpool
  // works on (numa_nodes()[node]); it only tells users where to allocate. Returns once every
  // thread is named and pinned. std::system_error when a thread cannot be started (the ones
  // started are stopped first).
  Subpool(int threads, int node, const std::vector<int>& cpus, const std::string& name);
  // Stops and joins the threads. No parallel_for or leader function may be in progress.
  ~Subpool();
  Subpool(const Subpool&) = delete;
  Subpool& operator=(const Subpool&) = delete;

  int thread_count() const { return static_cast<int>(threads_.size()); }
  int node() const { return node_; }
  // True when the calling thread is one of this subpool's workers.
  bool is_own_thread() const;

  // Runs fn(i) for every i in [0, n) and returns when all calls have finished. Indices are handed
  // out one at a time from an atomic counter. Called from outside, the subpool's threads do the
  // work and the caller sleeps (concurrent outside callers take turns); called from one of its
  // own threads (the leader running a leader function), the caller works too; called from inside
  // fn (nested), it runs the loop inline on the calling thread. After an fn(i) throws, indices
  // not yet started are skipped and the first exception is rethrown here; the subpool stays
  // usable. n <= 0 does nothing.
  void parallel_for(int n, const std::function<void(int)>& fn);

  // Starts fn (not empty: std::invalid_argument) on the leader thread and returns at once;
  // wait_leader() waits for it and rethrows what it threw. fn may call parallel_for (the other
  // threads then help). From start to wait the caller owns the subpool: other outside callers wait
  // their turn; every start must be followed by one wait_leader() on the same thread. Must not be
  // called from this subpool's own threads (std::logic_error).
  void start_on_leader(std::function<void()> fn);
  void wait_leader();

 private:
  struct Job;
  void worker_loop(int index, const std::vector<int>& cpus, const std::string& name);
  void stop_and_join();

  int node_;
  std::vector<std::thread> threads_;
  std::mutex entry_;  // held by the outside caller that owns the subpool
  std::mutex m_;      // guards everything below (the atomics are written under it, polled without it)
  std::condition_variable leader_cv_;       // the idle leader sleeps here
  std::condition_variable work_cv_;         // the other idle threads sleep here
  std::condition_variable job_done_cv_;     // parallel_for's caller waits here
  std::condition_variable leader_done_cv_;  // wait_leader() waits here
  std::condition_variable started_cv_;      // the constructor waits here for every thread to start
  int started_ = 0;                         // threads named and pinned
  std::atomic<Job*> job_{nullptr};
  std::atomic<unsigned long> job_generation_{0};
  std::function<void()> leader_fn_;
  std::atomic<bool> leader_fn_ready_{false};  // leader_fn_ is set
  bool leader_done_ = false;
  std::exception_ptr leader_error_;
  std::atomic<bool> stop_{false};
};

}  // namespace kt_moe
