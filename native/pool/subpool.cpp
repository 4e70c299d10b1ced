// Subpool threads: spin a little, then sleep on condition variables, and wake for a parallel_for job
// (all indices of one loop, claimed from an atomic counter) or, on the leader thread, for a leader
// function.
#include "pool/subpool.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace kt_moe {
namespace {

thread_local const Subpool* tl_subpool = nullptr;  // the subpool the calling thread works for
thread_local bool tl_in_job = false;               // the calling thread is running a job's fn(i)

// Pins the calling thread to those of `cpus` it may already run on (so a user's taskset or cgroup
// still holds); with none of them allowed, or when the kernel refuses, the thread stays unpinned.
void pin_current_thread(const std::vector<int>& cpus) {
  if (cpus.empty()) return;
  const std::size_t blocks = *std::max_element(cpus.begin(), cpus.end()) / CPU_SETSIZE + 1;
  const std::size_t size = blocks * sizeof(cpu_set_t);
  std::vector<cpu_set_t> allowed(blocks), wanted(blocks);  // value-initialised: empty sets
  const bool known = pthread_getaffinity_np(pthread_self(), size, allowed.data()) == 0;
  for (int c : cpus)
    if (!known || CPU_ISSET_S(c, size, allowed.data())) CPU_SET_S(c, size, wanted.data());
  if (CPU_COUNT_S(size, wanted.data()) > 0) pthread_setaffinity_np(pthread_self(), size, wanted.data());
}

// How long an idle thread polls before it sleeps: the next loop of a forward or backward starts
// within a few microseconds of the last one's end, and a sleeping thread takes tens of microseconds
// to wake (more on virtual machines), several times per layer step.
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Polls done() for up to kSpinBeforeSleep; the caller then checks again under its lock.
template <class Done>
void spin_until(Done done) {
  const auto end = std::chrono::steady_clock::now() + kSpinBeforeSleep;
  for (int i = 1; !done(); ++i) {
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() > end) return;
  }
}

}  // namespace

void name_current_thread(const std::string& name) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());  // the kernel keeps 15 characters
}

// One parallel_for call; lives on its caller's stack until every thread has left it.
struct Subpool::Job {
  const std::function<void(int)>* fn;
  int64_t n;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;  // written once, by the thread that set `failed`
  std::atomic<int> active{0};  // worker threads inside run(); changed under m_, polled without it

  // Claims and runs indices until none are left or one has failed.
  void run() {
    bool outer = std::exchange(tl_in_job, true);
    while (!failed.load(std::memory_order_relaxed)) {
      int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) break;
      try {
        (*fn)(static_cast<int>(i));
      } catch (...) {
        if (!failed.exchange(true)) error = std::current_exception();
      }
    }
    tl_in_job = outer;
  }
};

Subpool::Subpool(int threads, int node, const std::vector<int>& cpus, const std::string& name) : node_(node) {
  if (threads < 1) throw std::invalid_argument("Subpool: threads must be >= 1");
  try {
    for (int k = 0; k < threads; ++k)
      threads_.emplace_back(&Subpool::worker_loop, this, k, cpus, name + "-" + std::to_string(k));
  } catch (...) {
    stop_and_join();
    throw;
  }
  std::unique_lock<std::mutex> lk(m_);
  started_cv_.wait(lk, [&] { return started_ == threads; });
}

Subpool::~Subpool() { stop_and_join(); }

void Subpool::stop_and_join() {
  {
    std::lock_guard<std::mutex> lk(m_);
    stop_ = true;
  }
  leader_cv_.notify_all();
  work_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

bool Subpool::is_own_thread() const { return tl_subpool == this; }

void Subpool::worker_loop(int index, const std::vector<int>& cpus, const std::string& name) {
  tl_subpool = this;
  name_current_thread(name);
  pin_current_thread(cpus);
  bool leader = index == 0;
  std::condition_variable& cv = leader ? leader_cv_ : work_cv_;
  unsigned long seen = 0;
  std::unique_lock<std::mutex> lk(m_);
  ++started_;
  started_cv_.notify_one();
  for (;;) {
    lk.unlock();
    spin_until([&] {
      return stop_ || (job_ != nullptr && job_generation_ != seen) || (leader && leader_fn_ready_);
    });
    lk.lock();
    cv.wait(lk, [&] { return stop_ || (job_ && job_generation_ != seen) || (leader && leader_fn_); });
    if (stop_) return;
    if (leader && leader_fn_) {
      std::function<void()> fn = std::move(leader_fn_);
      leader_fn_ = nullptr;
      leader_fn_ready_ = false;
      lk.unlock();
      std::exception_ptr error;
      try {
        fn();
      } catch (...) {
        error = std::current_exception();
      }
      fn = nullptr;  // release its captures before reporting completion
      lk.lock();
      leader_error_ = error;
      leader_done_ = true;
      leader_done_cv_.notify_one();
      continue;
    }
    seen = job_generation_;
    Job* job = job_;
    ++job->active;
    lk.unlock();
    job->run();
    lk.lock();
    if (--job->active == 0) job_done_cv_.notify_one();
  }
}

void Subpool::parallel_for(int n, const std::function<void(int)>& fn) {
  if (n <= 0) return;
  const bool own = is_own_thread();
  if (own && tl_in_job) {  // nested inside fn(i): this thread is the only one free to run it
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  std::unique_lock<std::mutex> entry(entry_, std::defer_lock);
  if (!own) entry.lock();  // an own caller is the leader, inside an outside caller's turn

  Job job;
  job.fn = &fn;
  job.n = n;
  {
    std::lock_guard<std::mutex> lk(m_);
    job_ = &job;
    ++job_generation_;
  }
  int wake = std::min(n, thread_count()) - (own ? 1 : 0);  // threads needed besides the caller
  if (!own && wake > 0) {
    leader_cv_.notify_one();
    --wake;
  }
  for (; wake > 0; --wake) work_cv_.notify_one();
  if (own) {
    job.run();
    spin_until([&] { return job.active == 0; });
  }

  std::unique_lock<std::mutex> lk(m_);
  job_done_cv_.wait(lk, [&] { return job.active == 0 && (job.failed || job.next >= job.n); });
  job_ = nullptr;
  lk.unlock();
  if (job.error) std::rethrow_exception(job.error);
}

void Subpool::start_on_leader(std::function<void()> fn) {
  if (!fn) throw std::invalid_argument("Subpool::start_on_leader: empty function");
  if (is_own_thread()) throw std::logic_error("Subpool::start_on_leader called from the subpool's own thread");
  entry_.lock();  // released by wait_leader()
  {
    std::lock_guard<std::mutex> lk(m_);
    leader_fn_ = std::move(fn);
    leader_fn_ready_ = true;
    leader_done_ = false;
  }
  leader_cv_.notify_one();
}

void Subpool::wait_leader() {
  std::unique_lock<std::mutex> lk(m_);
  leader_done_cv_.wait(lk, [&] { return leader_done_; });
  leader_done_ = false;
  std::exception_ptr error = std::exchange(leader_error_, nullptr);
  lk.unlock();
  entry_.unlock();
  if (error) std::rethrow_exception(error);
}

}  // namespace kt_moe
