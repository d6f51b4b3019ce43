// The fixture of the CUDA op tests (test_cuda_ops.cpp, test_cuda_matmul.cpp, test_cuda_lazy.cpp):
// the GPU backend beside the portable reference, the same host data in both, and helpers for
// the scan, the KV caches, bf16 weights and matmuls against float64. Every test is SKIPPED
// without a GPU (never passed).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/test_util.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace fh1 {

struct CudaOpFixture : ::testing::Test {
  ThreadPool pool{2};
  std::unique_ptr<Kernels> cpu = make_reference_kernels(pool);  // the portable reference
  std::unique_ptr<CudaKernels> gpu;
  std::mt19937 rng{4321};

  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible: CUDA tests not run";
    gpu = make_cuda_kernels(0);
  }

  std::vector<float> randn(size_t n, float scale = 1.0f) { return test::randn(rng, n, scale); }
  // The same host data in both backends' memory.
  struct Pair {
    Buffer c, g;
    size_t n;
  };
  Pair both(const std::vector<float>& v) {
    Pair p{Buffer(*cpu, v.size()), Buffer(*gpu, v.size()), v.size()};
    cpu->from_host(p.c.data(), v.data(), v.size());
    gpu->from_host(p.g.data(), v.data(), v.size());
    return p;
  }
  std::vector<float> host(Kernels& k, const float* p, size_t n) {
    std::vector<float> v(n);
    k.to_host(v.data(), p, n);
    return v;
  }
  // max |gpu - cpu| / rms(cpu); NaN anywhere fails.
  double rel(const Pair& p) { return rel(host(*gpu, p.g.data(), p.n), host(*cpu, p.c.data(), p.n)); }
  static double rel(const std::vector<float>& got, const std::vector<float>& ref) { return test::rel_diff(got, ref); }
  // Random bf16 weights [N, K] (normal times scale; their magnitudes if `positive`), kept in
  // `host` and bound on the GPU.
  WeightView bind_random_bf16(int64_t N, int64_t K, float scale, std::vector<uint16_t>& host, bool positive = false) {
    const std::vector<float> wf = randn(static_cast<size_t>(N * K), scale);
    host.resize(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) host[i] = f32_to_bf16(positive ? std::fabs(wf[i]) : wf[i]);
    TensorView tv;
    tv.name = "w";
    tv.dtype = DType::BF16;
    tv.shape = {N, K};
    tv.data = reinterpret_cast<const uint8_t*>(host.data());
    tv.nbytes = host.size() * 2;
    return gpu->bind_weight(tv);
  }
  // The fp16 matmul's row threshold as it was, restored when a test ends.
  struct F16RowsReset {
    CudaKernels* g;
    int64_t rows = g->matmul_f16_rows();
    ~F16RowsReset() { g->set_matmul_f16_rows(rows); }
  };
  // Lazy results turned on again (the default) at the end of a test that turns them off.
  struct LazyReset {
    CudaKernels* g;
    ~LazyReset() { g->set_lazy_results(true); }
  };
  // The weights' fp16 copies turned on again at the end of a test that turns them off.
  struct F16CopiesReset {
    CudaKernels* g;
    ~F16CopiesReset() { g->set_f16_weight_copies(true); }
  };
  // An output poisoned with NaN in both backends, so unwritten elements fail.
  Pair poisoned(size_t n) { return both(std::vector<float>(n, NAN)); }
  // A KV cache of v.size() values (rows of `width`) in both backends: the reference holds v as
  // float32; the GPU holds it in its kv_cache_dtype(), written by its own kv_write. The reference
  // then holds what the GPU attends over: bf16: v rounded to bf16; 8 bits: the GPU's values
  // (quant/kv_q8.h), rounded to bf16 when round_bf16 (the kernels that widen them to bf16 first;
  // the 8-bit decode kernel reads them as they are).
  Pair cache_both(std::vector<float> v, int64_t width, bool round_bf16 = true) {
    const int64_t rows = static_cast<int64_t>(v.size()) / width;
    Pair p{Buffer(*cpu, v.size()), Buffer(*gpu, gpu->kv_cache_floats(rows, width)), v.size()};
    Buffer src(*gpu, v.size());
    gpu->from_host(src.data(), v.data(), v.size());
    gpu->kv_write(p.g.data(), 0, src.data(), rows, width);
    if (gpu->kv_cache_dtype() == DType::I8) v = cache_host(p, width);
    if (gpu->kv_cache_dtype() == DType::BF16 || (gpu->kv_cache_dtype() == DType::I8 && round_bf16))
      for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
    cpu->from_host(p.c.data(), v.data(), v.size());
    return p;
  }
  // A long scan's random inputs in both backends (x, B, C of `groups` groups in rows of ld_xbc,
  // raw dt, A < 0, D, dt_bias) from a random non-zero state, and the reference's y and end state;
  // gpu_scan() runs the GPU's scan as it is set up now and returns its y and end state.
  struct ScanShape {
    int64_t T;
    int H, P, G, N, cs;
    float dt_min, dt_max;
    int pad = 3;  // ld_xbc = H P + 2 G N + pad: 3 makes every row start off 16 bytes
  };
  struct ScanInputs {
    ScanShape c;
    int64_t ds, GN, ld_xbc, ld_dt;
    Pair xbc, dt, A, D, dtb;
    std::vector<float> state0, y_ref, st_ref;
  };
  ScanInputs scan_inputs(const ScanShape& c) {
    const int64_t ds = int64_t(c.H) * c.P, GN = int64_t(c.G) * c.N;
    std::vector<float> A(static_cast<size_t>(c.H));
    for (auto& a : A) a = -std::exp(std::uniform_real_distribution<float>(-2.0f, 1.0f)(rng));
    ScanInputs s{c, ds, GN, ds + 2 * GN + c.pad, c.H + 2, both(randn(static_cast<size_t>(c.T * (ds + 2 * GN + c.pad)))),
                 both(randn(static_cast<size_t>(c.T * (c.H + 2)))), both(A), both(randn(static_cast<size_t>(c.H))),
                 both(randn(static_cast<size_t>(c.H))), randn(static_cast<size_t>(ds * c.N), 0.5f), {}, {}};
    auto st = both(s.state0);
    auto y = poisoned(static_cast<size_t>(c.T * ds));
    const float* x = s.xbc.c.data();
    cpu->ssm_scan(x, x + ds, x + ds + GN, s.ld_xbc, s.dt.c.data(), s.ld_dt, c.T, scan_params(s, false), st.c.data(),
                  y.c.data());
    s.y_ref = host(*cpu, y.c.data(), y.n);
    s.st_ref = host(*cpu, st.c.data(), st.n);
    return s;
  }
  SsmParams scan_params(const ScanInputs& s, bool on_gpu) {
    const auto at = [&](const Pair& p) { return on_gpu ? p.g.data() : p.c.data(); };
    return SsmParams{s.c.H, s.c.P, s.c.G, s.c.N, s.c.cs, at(s.A), at(s.D), at(s.dtb), s.c.dt_min, s.c.dt_max};
  }
  std::pair<std::vector<float>, std::vector<float>> gpu_scan(const ScanInputs& s) {
    auto st = both(s.state0);
    auto y = poisoned(s.y_ref.size());
    const float* x = s.xbc.g.data();
    gpu->ssm_scan(x, x + s.ds, x + s.ds + s.GN, s.ld_xbc, s.dt.g.data(), s.ld_dt, s.c.T, scan_params(s, true),
                  st.g.data(), y.g.data());
    return {host(*gpu, y.g.data(), y.n), host(*gpu, st.g.data(), st.n)};
  }
  // The chunk-start recurrence's loads in groups of 4 and of 8 chunks (cuda::set_chunk_starts_group;
  // by default the grid's size picks one, and these tests' small states take 8): the same sums in
  // the same order, so gpu_scan() must give y and st, which it gave by default, bit for bit.
  void expect_chunk_starts_groups_agree(const ScanInputs& s, const std::vector<float>& y,
                                        const std::vector<float>& st, const std::string& what) {
    const int before = cuda::chunk_starts_group();
    for (const int group : {4, 8}) {
      cuda::set_chunk_starts_group(group);
      const auto [y_g, st_g] = gpu_scan(s);
      EXPECT_EQ(y_g, y) << "chunk starts in groups of " << group << ", " << what;
      EXPECT_EQ(st_g, st) << "state, chunk starts in groups of " << group << ", " << what;
    }
    cuda::set_chunk_starts_group(before);
  }
  // The GPU cache's values (rows of `width`) as float32.
  std::vector<float> cache_host(const Pair& p, int64_t width) {
    if (gpu->kv_cache_dtype() == DType::F32) return host(*gpu, p.g.data(), p.n);
    const int64_t rows = static_cast<int64_t>(p.n) / width;
    const std::vector<float> raw = host(*gpu, p.g.data(), gpu->kv_cache_floats(rows, width));
    std::vector<float> v(p.n);
    if (gpu->kv_cache_dtype() == DType::I8) {
      const auto* bytes = reinterpret_cast<const uint8_t*>(raw.data());
      for (int64_t r = 0; r < rows; ++r)
        kv_q8_dequantize(bytes + r * kv_q8_row_bytes(width), width, 0, width, v.data() + r * width);
      return v;
    }
    std::vector<uint16_t> h(raw.size() * 2);
    std::memcpy(h.data(), raw.data(), raw.size() * sizeof(float));
    for (size_t i = 0; i < p.n; ++i) v[i] = bf16_to_f32(h[i]);
    return v;
  }
};

// y [T, N] against float64 ((x s) W^T + bias) * col (x [T, K], W bf16 [N, K]; bias, col optional,
// N values): adds to *bad each element farther than 2^-bits of sum |x s w| |col| (+ 1e-6 of the
// value), and the largest error / allowed to *worst.
inline void count_off_float64(const std::vector<float>& y, const std::vector<float>& x, const std::vector<uint16_t>& wb,
                              int64_t T, int64_t N, int64_t K, float s, const float* bias, const float* col, int bits,
                              int64_t* bad, double* worst) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double q = static_cast<double>(x[static_cast<size_t>(t * K + k)]) * s *
                         bf16_to_f32(wb[static_cast<size_t>(n * K + k)]);
        ref += q;
        mag += std::fabs(q);
      }
      const double c = col ? col[n] : 1.0;
      ref = (ref + (bias ? bias[n] : 0.0)) * c;
      const double err = std::fabs(y[static_cast<size_t>(t * N + n)] - ref);
      const double allowed = std::ldexp(1.0, -bits) * mag * std::fabs(c) + 1e-6 * std::fabs(ref) + 1e-30;
      *worst = std::max(*worst, err / allowed);
      *bad += !(err <= allowed);
    }
}

}  // namespace fh1
