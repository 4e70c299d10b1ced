// The object Python sees as kt_moe._native.WorkerPool: a WorkerPool plus the arrays its queued
// tasks read and write. Pool threads never touch Python objects (a task holding one would need the
// GIL to drop it, which deadlocks or crashes at interpreter exit), so the references live here,
// are taken at submit and dropped by the sync() that covers their task, both with the GIL held.
// Included by bindings.cpp only: it needs nanobind.
#pragma once

#include <nanobind/ndarray.h>

#include <deque>
#include <exception>
#include <functional>
#include <utility>
#include <vector>

#include "pool/worker_pool.hpp"

namespace kt_moe {

class PyWorkerPool {
 public:
  PyWorkerPool(int threads, int subpools) : pool_(threads, subpools) {}

  WorkerPool& pool() { return pool_; }

  // Queues `task` (GIL held); `uses` stay alive until a sync() has seen the task finish.
  void submit(std::function<void()> task, std::vector<nanobind::ndarray<>> uses) {
    in_use_.push_back(std::move(uses));
    ++kept_;
    pool_.submit(std::move(task));
  }

  // WorkerPool::sync() with the GIL released while waiting; then drops the references of the
  // tasks it waited for. Called with the GIL held.
  void sync() {
    const unsigned long long covered = kept_;
    std::exception_ptr error;
    {
      nanobind::gil_scoped_release unlocked;
      try {
        pool_.sync();
      } catch (...) {
        error = std::current_exception();
      }
    }
    for (; dropped_ < covered; ++dropped_) in_use_.pop_front();
    if (error) std::rethrow_exception(error);
  }

 private:
  // Declared before pool_ so they are destroyed after ~WorkerPool has run the pending tasks.
  std::deque<std::vector<nanobind::ndarray<>>> in_use_;
  unsigned long long kept_ = 0, dropped_ = 0;  // entries ever pushed to / popped from in_use_
  WorkerPool pool_;
};

}  // namespace kt_moe
