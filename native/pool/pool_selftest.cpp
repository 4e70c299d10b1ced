// The pool's diagnostic counting task; see pool_selftest.hpp.
#include "pool/pool_selftest.hpp"

#include <chrono>
#include <climits>
#include <stdexcept>
#include <thread>
#include <utility>

namespace kt_moe {

std::function<void()> count_task(WorkerPool& pool, int64_t* counts, int64_t n, int pause_us, int64_t fail_at,
                                 std::string message) {
  if (n < 0 || n > INT_MAX) throw std::invalid_argument("count_task: n must be in [0, INT_MAX]");
  return [&pool, counts, n, pause_us, fail_at, message = std::move(message)] {
    pool.parallel_for_all(static_cast<int>(n), [&](int i) {
      if (i == fail_at) throw std::runtime_error(message);
      if (pause_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
      ++counts[i];
    });
  };
}

}  // namespace kt_moe
