// TaskTickets: one pool user's work queued on a WorkerPool, each piece with its own ticket and its
// own error. Several users share a pool (same thread settings), and the pool's sync() reports the
// first error of any task; through tickets a piece's error reaches only the call that waits for it.
// Each engine owns one.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "pool/worker_pool.hpp"

namespace kt_moe {

class TaskTickets {
 public:
  explicit TaskTickets(WorkerPool& pool) : pool_(pool) {}
  // Waits for every piece queued (waited for or not).
  ~TaskTickets();
  TaskTickets(const TaskTickets&) = delete;
  TaskTickets& operator=(const TaskTickets&) = delete;

  // Queues `work` on the pool (behind everything queued before, by any user) and returns its
  // ticket at once. What the work throws is kept for wait(ticket), never given to the pool.
  uint64_t submit(std::function<void()> work);

  // Blocks until the work of `ticket` has finished and rethrows what it threw. Each ticket is
  // waited for once: an unknown or already waited ticket is std::invalid_argument.
  void wait(uint64_t ticket);

  // submit() then wait(): runs `work` behind the work queued before it. When the pool has nothing
  // queued or running, the calling thread runs it itself (WorkerPool::run_here_if_idle).
  void run(std::function<void()> work);

  // Blocks until every piece queued so far has finished (their tickets stay to be waited for).
  void wait_all();

  // Tickets queued and not yet waited for.
  int pending() const;

 private:
  struct Job;

  WorkerPool& pool_;
  mutable std::mutex mutex_;  // guards the members below
  std::condition_variable finished_cv_;
  std::map<uint64_t, std::shared_ptr<Job>> jobs_;  // queued and not yet waited for
  uint64_t last_ticket_ = 0;
  int running_ = 0;  // queued pieces of work not finished yet
};

}  // namespace kt_moe
