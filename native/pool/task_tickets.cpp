// TaskTickets: each piece of work wrapped so that it records its own completion and error.
#include "pool/task_tickets.hpp"

#include <exception>
#include <stdexcept>
#include <string>
#include <utility>

namespace kt_moe {

struct TaskTickets::Job {
  std::function<void()> work;
  bool done = false;
  std::exception_ptr error;
};

TaskTickets::~TaskTickets() { wait_all(); }

uint64_t TaskTickets::submit(std::function<void()> work) {
  auto job = std::make_shared<Job>();
  job->work = std::move(work);
  std::lock_guard<std::mutex> lock(mutex_);
  const uint64_t ticket = ++last_ticket_;
  jobs_.emplace(ticket, job);
  ++running_;
  pool_.submit([this, job] {
    try {
      job->work();
    } catch (...) {
      job->error = std::current_exception();
    }
    job->work = nullptr;  // release its captures before the job counts as done
    std::lock_guard<std::mutex> lock(mutex_);
    job->done = true;
    --running_;
    finished_cv_.notify_all();
  });
  return ticket;
}

void TaskTickets::wait(uint64_t ticket) {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto it = jobs_.find(ticket);
  if (it == jobs_.end())
    throw std::invalid_argument("no queued work with ticket " + std::to_string(ticket) +
                                " (never submitted, or already waited for)");
  const std::shared_ptr<Job> job = it->second;
  finished_cv_.wait(lock, [&] { return job->done; });
  jobs_.erase(ticket);
  if (job->error) std::rethrow_exception(job->error);
}

void TaskTickets::run(std::function<void()> work) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++running_;  // wait_all() waits for work run here too
  }
  struct Counted {
    TaskTickets& tickets;
    ~Counted() {
      std::lock_guard<std::mutex> lock(tickets.mutex_);
      --tickets.running_;
      tickets.finished_cv_.notify_all();
    }
  };
  bool ran;
  {
    Counted counted{*this};
    ran = pool_.run_here_if_idle(work);
  }
  if (!ran) wait(submit(std::move(work)));
}

void TaskTickets::wait_all() {
  std::unique_lock<std::mutex> lock(mutex_);
  finished_cv_.wait(lock, [&] { return running_ == 0; });
}

int TaskTickets::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(jobs_.size());
}

}  // namespace kt_moe
