// StagedWeights: the two sets of an engine's expert weights during an all-or-nothing load: the
// current set, which calls read, and the staged set, which loads fill slot by slot and which replaces
// the current one only once every slot holds an expert. Shared by InferEngine and SftEngine; not
// locked: the engine holds its own lock around every call. The functions that drop a set return it,
// so that the engine frees it after releasing its lock.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace kt_moe {

template <class Weights>  // Weights::loaded_count(): slots that hold an expert
class StagedWeights {
 public:
  StagedWeights() = default;
  explicit StagedWeights(std::shared_ptr<Weights> current) : current_(std::move(current)) {}

  const std::shared_ptr<Weights>& current() const { return current_; }
  bool current_complete(int experts) const { return current_->loaded_count() == experts; }

  // The staged set, made by make() when there is none (the first load after a commit or an abort).
  template <class Make>
  const std::shared_ptr<Weights>& staged(Make make) {
    if (!staged_) staged_ = make();
    return staged_;
  }
  bool has_staged() const { return bool(staged_); }
  int staged_count() const { return staged_ ? staged_->loaded_count() : 0; }

  // Stages `fresh` in place of a staged set left over; returns that one.
  std::shared_ptr<Weights> restart(std::shared_ptr<Weights> fresh) {
    std::swap(staged_, fresh);
    return fresh;
  }
  // Puts the staged set in place when all `experts` slots hold an expert (std::runtime_error
  // otherwise, nothing changed); returns the set it replaced.
  std::shared_ptr<Weights> commit(int experts) {
    const int staged = staged_count();
    if (staged != experts)
      throw std::runtime_error("commit_load: the staged weights hold " + std::to_string(staged) + " of " +
                               std::to_string(experts) + " experts; load every slot first");
    return std::exchange(current_, std::move(staged_));
  }
  // Drops the staged set; returns it.
  std::shared_ptr<Weights> abort() { return std::exchange(staged_, nullptr); }

 private:
  std::shared_ptr<Weights> current_;
  std::shared_ptr<Weights> staged_;  // null without a load in progress
};

}  // namespace kt_moe
