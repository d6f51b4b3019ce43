#include "util/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>

#if defined(__linux__)
#include <sched.h>
#endif

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

int default_thread_count() {
  int n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#if defined(__linux__)
  // The CPUs this process may run on (taskset, container cpusets)...
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = std::max(1, CPU_COUNT(&set));
  // ...and the CPU time its cgroup may use (docker --cpus, Kubernetes limits): more spinning
  // threads than that would wait on each other at every parallel_for.
  const auto quota_cpus = [](const char* quota_file, const char* period_file) -> int {
    std::ifstream q(quota_file);
    std::string quota;
    long long period = 0;
    if (!(q >> quota) || quota == "max" || quota == "-1") return 0;
    if (period_file == nullptr) {
      if (!(q >> period)) return 0;
    } else if (!(std::ifstream(period_file) >> period)) {
      return 0;
    }
    const long long us = std::atoll(quota.c_str());
    return us > 0 && period > 0 ? static_cast<int>(std::max<long long>(1, (us + period - 1) / period)) : 0;
  };
  int limit = quota_cpus("/sys/fs/cgroup/cpu.max", nullptr);  // cgroup v2: "quota period"
  if (limit == 0) limit = quota_cpus("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  if (limit > 0) n = std::min(n, limit);
#endif
  return n;
}

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = default_thread_count();
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
