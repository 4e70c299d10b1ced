// Diagnostic task for the pool tests: counts every index of an array once, spread over all
// subpools the way engines spread work, optionally pausing per index (long tasks) or throwing at
// one index (error reporting). Not used by the engines.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "pool/worker_pool.hpp"

namespace kt_moe {

// A task for pool.submit(): splits [0, n) into one contiguous part per subpool and, inside each
// subpool, runs parallel_for over its part, adding 1 to counts[i] for every i after sleeping
// pause_us microseconds; index fail_at (if in range) throws std::runtime_error(message) instead.
// counts must stay valid until the task has run. Throws std::invalid_argument unless
// 0 <= n <= INT_MAX.
std::function<void()> count_task(WorkerPool& pool, int64_t* counts, int64_t n, int pause_us, int64_t fail_at,
                                 std::string message);

}  // namespace kt_moe
