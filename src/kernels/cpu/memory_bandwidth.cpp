#include "kernels/cpu/memory_bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>
#include <vector>

#include "kernels/cpu/simd_kernels.h"
#include "util/thread_pool.h"

namespace fh1 {

BandwidthResult measure_read_bandwidth(ThreadPool& pool, size_t buffer_bytes, int repetitions) {
  const size_t n = buffer_bytes / sizeof(float);
  const size_t parts = static_cast<size_t>(pool.size());
  float* buf = static_cast<float*>(::operator new[](n * sizeof(float), std::align_val_t(64)));
  // Touch every page from the thread that will read it (first-touch placement), with non-zero data.
  pool.parallel_for(parts, [&](size_t p0, size_t p1) {
    for (size_t p = p0; p < p1; ++p) {
      const size_t b = n * p / parts, e = n * (p + 1) / parts;
      for (size_t i = b; i < e; ++i) buf[i] = static_cast<float>(i & 7);
    }
  });
  BandwidthResult r;
  r.buffer_bytes = n * sizeof(float);
  r.repetitions = repetitions;
  std::vector<double> sums(parts);
  for (int rep = 0; rep < repetitions; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(parts, [&](size_t p0, size_t p1) {
      for (size_t p = p0; p < p1; ++p) {
        const size_t b = n * p / parts, e = n * (p + 1) / parts;
        sums[p] = simd::stream_sum(buf + b, e - b);
      }
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.bytes_per_second = std::max(r.bytes_per_second, static_cast<double>(r.buffer_bytes) / s);
  }
  volatile double sink = 0;
  for (double s : sums) sink = sink + s;  // keep the reads
  ::operator delete[](buf, std::align_val_t(64));
  return r;
}

}  // namespace fh1
