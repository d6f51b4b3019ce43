#include "util/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>

namespace fh1 {

// Hand-off without sleeping when calls come close together (a decode step makes hundreds of
// parallel_for calls a few microseconds apart, and a futex wake-up costs tens of microseconds
// on some machines): workers spin on the generation counter for a while before they block on the
// condition variable, and the caller spins on the pending count before it blocks. The counters
// are only ever accessed through atomic_ref; job_ and job_n_ are published by the release store
// of the generation.
namespace {
constexpr auto kSpin = std::chrono::microseconds(300);
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::atomic_ref<bool>(stop_).store(true, std::memory_order_release);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

static void run_share(const std::function<void(size_t, size_t)>& fn, size_t n, int index, int parts) {
  const size_t begin = n * static_cast<size_t>(index) / static_cast<size_t>(parts);
  const size_t end = n * static_cast<size_t>(index + 1) / static_cast<size_t>(parts);
  if (begin < end) fn(begin, end);
}

void ThreadPool::parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  if (workers_.empty() || n == 1) {
    fn(0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_n_ = n;
    std::atomic_ref<int>(pending_).store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    std::atomic_ref<size_t>(generation_).fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  run_share(fn, n, 0, size());
  std::atomic_ref<int> pending(pending_);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; pending.load(std::memory_order_acquire) != 0; ++i) {
    cpu_relax();
    if ((i & 255) == 255 && std::chrono::steady_clock::now() - t0 > kSpin) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return pending.load(std::memory_order_acquire) == 0; });
      break;
    }
  }
  job_ = nullptr;
}

void ThreadPool::worker_loop(int index) {
  size_t seen = 0;
  std::atomic_ref<size_t> generation(generation_);
  std::atomic_ref<bool> stop(stop_);
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; generation.load(std::memory_order_acquire) == seen && !stop.load(std::memory_order_acquire); ++i) {
      cpu_relax();
      if ((i & 255) == 255 && std::chrono::steady_clock::now() - t0 > kSpin) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop.load(std::memory_order_acquire) ||
                                      generation.load(std::memory_order_acquire) != seen; });
        break;
      }
    }
    if (stop.load(std::memory_order_acquire)) return;
    seen = generation.load(std::memory_order_acquire);
    const std::function<void(size_t, size_t)>* job = job_;
    const size_t n = job_n_;
    run_share(*job, n, index, size());
    if (std::atomic_ref<int>(pending_).fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);  // the caller may be blocked on done_
      done_.notify_one();
    }
  }
}

}  // namespace fh1
