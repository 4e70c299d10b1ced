// WorkerPool: subpool layout over NUMA nodes, for_each_subpool, and the dispatcher thread that
// runs queued tasks in order and records the first error for sync().
#include "pool/worker_pool.hpp"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#include "pool/numa_topology.hpp"

namespace kt_moe {
namespace {

// The message of a pool whose `threads` compute threads could not be started, for `reason` (the
// system's, e.g. "Resource temporarily unavailable").
std::string thread_start_error(int threads, const std::string& reason) {
  return "could not start " + std::to_string(threads) + " worker threads (cpuinfer_threads, plus one dispatcher): " +
         reason + "; lower cpuinfer_threads or raise the process's thread limit (ulimit -u, ulimit -v)";
}

}  // namespace

WorkerPool::WorkerPool(int threads, int subpools) : threads_(threads) {
  if (threads < 1) throw std::invalid_argument("threads must be >= 1, got " + std::to_string(threads));
  if (subpools < 1) throw std::invalid_argument("subpools must be >= 1, got " + std::to_string(subpools));
  if (subpools > threads)
    throw std::invalid_argument("subpools (" + std::to_string(subpools) + ") must not exceed threads (" +
                                std::to_string(threads) + ")");
  const std::vector<NumaNode>& nodes = numa_nodes();
  const int node_count = static_cast<int>(nodes.size());
  try {
    for (int s = 0; s < subpools; ++s) {
      int node = s % node_count;
      int share = threads / subpools + (s < threads % subpools ? 1 : 0);
      std::vector<int> pin = node_count > 1 ? nodes[node].cpus : std::vector<int>{};
      subpools_.push_back(std::make_unique<Subpool>(share, node, pin, "kt_moe-s" + std::to_string(s)));
    }
    dispatcher_ = std::thread(&WorkerPool::dispatch_loop, this);
  } catch (const std::system_error& e) {  // the threads started so far stop with subpools_
    throw std::runtime_error(thread_start_error(threads, e.what()));
  }
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard<std::mutex> lk(m_);
    stop_ = true;
  }
  task_cv_.notify_one();
  dispatcher_.join();
}

void WorkerPool::for_each_subpool(const std::function<void(int)>& fn) {
  for (const auto& sp : subpools_)
    if (sp->is_own_thread()) throw std::logic_error("WorkerPool::for_each_subpool called from a subpool thread");
  std::lock_guard<std::mutex> turn(for_each_mutex_);
  const int count = subpool_count();
  for (int s = 0; s < count; ++s) subpools_[s]->start_on_leader([&fn, s] { fn(s); });
  std::exception_ptr first;
  for (int s = 0; s < count; ++s) {
    try {
      subpools_[s]->wait_leader();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

void WorkerPool::parallel_for_all(int n, const std::function<void(int)>& fn) {
  const int64_t parts = subpool_count();
  for_each_subpool([&](int s) {
    const int begin = static_cast<int>(n * s / parts), end = static_cast<int>(n * (s + 1) / parts);
    subpool(s).parallel_for(end - begin, [&](int j) { fn(begin + j); });
  });
}

void WorkerPool::submit(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lk(m_);
    queue_.push_back(std::move(task));
    ++submitted_;
  }
  task_cv_.notify_one();
}

bool WorkerPool::run_here_if_idle(const std::function<void()>& task) {
  if (on_pool_thread()) throw std::logic_error("WorkerPool::run_here_if_idle called from a pool thread");
  {
    std::lock_guard<std::mutex> lk(m_);
    if (submitted_ != finished_) return false;
    ++submitted_;
    running_here_ = true;
  }
  struct Finished {  // also when the task throws
    WorkerPool& pool;
    ~Finished() {
      {
        std::lock_guard<std::mutex> lk(pool.m_);
        pool.running_here_ = false;
        ++pool.finished_;
      }
      pool.task_cv_.notify_one();  // the tasks submitted meanwhile
      pool.idle_cv_.notify_all();
    }
  } finished{*this};
  task();
  return true;
}

bool WorkerPool::on_pool_thread() const {
  bool own = std::this_thread::get_id() == dispatcher_.get_id();
  for (const auto& sp : subpools_) own = own || sp->is_own_thread();
  return own;
}

void WorkerPool::sync() {
  if (on_pool_thread()) throw std::logic_error("WorkerPool::sync called from a pool thread");
  std::unique_lock<std::mutex> lk(m_);
  const unsigned long long target = submitted_;
  idle_cv_.wait(lk, [&] { return finished_ >= target; });
  if (!has_error_) return;
  has_error_ = false;
  throw std::runtime_error(std::exchange(first_error_, std::string()));
}

void WorkerPool::dispatch_loop() {
  name_current_thread("kt_moe-queue");
  std::unique_lock<std::mutex> lk(m_);
  for (;;) {
    task_cv_.wait(lk, [&] { return !running_here_ && (stop_ || !queue_.empty()); });
    if (queue_.empty()) return;  // stopping, and every task has run
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    lk.unlock();
    std::string error;
    bool failed = true;
    try {
      task();
      failed = false;
    } catch (const std::exception& e) {
      error = e.what();
    } catch (...) {
      error = "unknown exception in a worker pool task";
    }
    task = nullptr;  // release its captures before the task counts as finished
    lk.lock();
    if (failed && !has_error_) {
      has_error_ = true;
      first_error_ = std::move(error);
    }
    ++finished_;
    idle_cv_.notify_all();
  }
}

}  // namespace kt_moe
