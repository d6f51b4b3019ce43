// Microbenchmarks of single CPU kernels (GEMV / GEMM at model shapes, stream read), for tuning.
// Build: see docs/performance.md. Usage: kernel_bench [threads]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "io/safetensors.h"
#include "kernels/cpu/memory_bandwidth.h"
#include "kernels/kernels.h"
#include "util/half.h"
#include "util/thread_pool.h"

using namespace fh1;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  ThreadPool pool(threads);
  auto k = make_cpu_kernels(pool);
  const BandwidthResult bw = measure_read_bandwidth(pool, size_t{1} << 30, 5);
  std::printf("read bandwidth %.2f GB/s\n", bw.bytes_per_second / 1e9);
  struct Shape { int64_t N, K, T; };
  for (Shape s : {Shape{32784, 1024, 1}, {2048, 1024, 1}, {4688, 1024, 1}, {1024, 2048, 1}, {32784, 1024, 2},
                  {4688, 1024, 512}, {2048, 1024, 512}, {1024, 2048, 512}, {256, 1024, 512}}) {
    // Enough copies of the weight to exceed the LLC, used round-robin, so the GEMV reads DRAM.
    const size_t wbytes = static_cast<size_t>(s.N * s.K) * 2;
    const int copies = static_cast<int>(std::max<size_t>(1, (size_t{1} << 30) / wbytes));
    std::vector<std::vector<uint16_t>> w(copies, std::vector<uint16_t>(static_cast<size_t>(s.N * s.K)));
    for (auto& c : w)
      for (size_t i = 0; i < c.size(); ++i) c[i] = f32_to_bf16(static_cast<float>(i % 13) * 0.01f);
    std::vector<float> x(static_cast<size_t>(s.T * s.K), 0.5f), y(static_cast<size_t>(s.T * s.N));
    std::vector<WeightView> views;
    for (auto& c : w) {
      TensorView tv;
      tv.name = "w";
      tv.dtype = DType::BF16;
      tv.shape = {s.N, s.K};
      tv.data = reinterpret_cast<const uint8_t*>(c.data());
      views.push_back(k->bind_weight(tv));
    }
    const int reps = s.T == 1 ? std::max(copies * 2, 20) : 5;
    const auto t0 = Clock::now();
    for (int r = 0; r < reps; ++r) k->matmul(x.data(), s.K, s.T, views[r % copies], nullptr, y.data());
    const double sec = std::chrono::duration<double>(Clock::now() - t0).count() / reps;
    std::printf("N=%6lld K=%5lld T=%4lld: %8.3f ms  %6.2f GB/s of weights  %7.1f GFLOP/s\n", (long long)s.N,
                (long long)s.K, (long long)s.T, sec * 1e3, wbytes / sec / 1e9, 2.0 * s.N * s.K * s.T / sec / 1e9);
  }
}
