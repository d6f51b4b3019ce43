// Measured memory read bandwidth of this machine, for the decode floor of `falcon-h1 bench`:
// every thread of the pool streams its share of a buffer much larger than the last-level cache
// with a SIMD read-only kernel.
#pragma once

#include <cstddef>

namespace fh1 {

class ThreadPool;

struct BandwidthResult {
  double bytes_per_second = 0;  // best of the repetitions
  size_t buffer_bytes = 0;
  int repetitions = 0;
};

BandwidthResult measure_read_bandwidth(ThreadPool& pool, size_t buffer_bytes, int repetitions);

}  // namespace fh1
