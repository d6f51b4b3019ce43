// Dynamic scheduling on a ThreadPool: every thread takes the next item index from a shared
// counter until none are left, so items of uneven cost (causal attention blocks, scan heads)
// balance themselves. Order items from the most to the least expensive for the best balance.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>

#include "util/thread_pool.h"

namespace fh1 {

template <class Fn>
void parallel_dynamic(ThreadPool& pool, size_t n, Fn&& fn) {
  if (n == 0) return;
  if (n == 1 || pool.size() == 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  const size_t workers = std::min<size_t>(n, static_cast<size_t>(pool.size()));
  pool.parallel_for(workers, [&](size_t, size_t) {
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) fn(i);
  });
}

}  // namespace fh1
