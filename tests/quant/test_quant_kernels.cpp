// Matrix products and embedding lookups over quantized weights, both CPU backends, against a
// float64 reference on the dequantized weights: prefill rows (four tokens or more) are exact
// dequantization + float32 GEMM; decode rows (one to three tokens) are int8 dot products, so
// there the reference also uses the quantized activations.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <random>
#include <tuple>

#include "io/safetensors.h"
#include "hwy/targets.h"
#include "kernels/cpu/simd_kernels.h"
#include "kernels/kernels.h"
#include "quant/blocks.h"
#include "util/thread_pool.h"
#include "kernels/test_util.h"

namespace fh1 {
namespace {

struct QuantKernels : ::testing::Test {
  ThreadPool pool{2};
  std::unique_ptr<Kernels> fast = make_cpu_kernels(pool);
  std::unique_ptr<Kernels> ref = make_reference_kernels(pool);
  std::mt19937 rng{4242};

  std::vector<float> randn(size_t n, float scale = 1.0f) { return test::randn(rng, n, scale); }
  static double rel_diff(const std::vector<float>& a, const std::vector<double>& b) { return test::rel_diff(a, b); }
};

struct QuantizedMatrix {
  std::vector<uint8_t> bytes;
  std::vector<float> dequant;  // [N, K]
  TensorView view;
};

QuantizedMatrix quantize(DType type, const std::vector<float>& w, int64_t N, int64_t K) {
  QuantizedMatrix m;
  const int64_t rb = dtype_row_bytes(type, K);
  m.bytes.resize(static_cast<size_t>(N * rb));
  m.dequant.resize(static_cast<size_t>(N * K));
  for (int64_t r = 0; r < N; ++r) {
    quant::quantize_row(type, w.data() + r * K, K, m.bytes.data() + r * rb);
    quant::dequantize_row(type, m.bytes.data() + r * rb, K, m.dequant.data() + r * K);
  }
  m.view.name = std::string(1, 'w');  // (not = "w": a false -Wrestrict in GCC 12 at -O3)
  m.view.dtype = type;
  m.view.shape = {N, K};
  m.view.data = m.bytes.data();
  m.view.nbytes = m.bytes.size();
  return m;
}

TEST_F(QuantKernels, MatmulAgainstFloat64OnDequantizedWeights) {
  for (DType type : {DType::Q8_0, DType::Q4_0, DType::Q4_K}) {
    for (auto [T, N, K] : {std::tuple{1, 37, 256}, {2, 64, 512}, {3, 5, 1024}, {1, 1, 256}, {4, 9, 256},
                           {7, 130, 768}, {33, 300, 256}, {64, 40, 1280}, {3, 517, 2048}}) {
      const int64_t ldx = K + 3;
      const auto x = randn(static_cast<size_t>(T * ldx));
      const auto bias = randn(static_cast<size_t>(N));
      const QuantizedMatrix m = quantize(type, randn(static_cast<size_t>(N * K), 0.3f), N, K);
      // The float64 references: on exact x, and on x as the int8 decode kernels see it.
      std::vector<float> x_exact(static_cast<size_t>(T * K)), x_int8(x_exact.size());
      for (int64_t t = 0; t < T; ++t) {
        std::copy(x.begin() + t * ldx, x.begin() + t * ldx + K, x_exact.begin() + t * K);
        std::vector<int8_t> q(static_cast<size_t>(K));
        std::vector<float> d(static_cast<size_t>(K / 32)), ds(d.size());
        quant::quantize_activations(x.data() + t * ldx, K, q.data(), d.data(), ds.data());
        for (int64_t k = 0; k < K; ++k) x_int8[static_cast<size_t>(t * K + k)] = q[k] * d[k / 32];
      }
      for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
        const auto product = [&](const std::vector<float>& xs) {
          std::vector<double> want(static_cast<size_t>(T * N));
          for (int64_t t = 0; t < T; ++t)
            for (int64_t n = 0; n < N; ++n) {
              double s = b ? b[n] : 0.0;
              for (int64_t k = 0; k < K; ++k) s += double(xs[t * K + k]) * m.dequant[n * K + k];
              want[static_cast<size_t>(t * N + n)] = s;
            }
          return want;
        };
        const std::vector<double> exact = product(x_exact), int8 = T >= 4 ? exact : product(x_int8);
        std::vector<float> y(exact.size(), NAN);
        fast->matmul(x.data(), ldx, T, fast->bind_weight(m.view), b, y.data());
        EXPECT_LE(rel_diff(y, int8), 2e-5) << "fast " << dtype_name(type) << " T=" << T << " N=" << N << " K=" << K;
        std::fill(y.begin(), y.end(), NAN);
        ref->matmul(x.data(), ldx, T, ref->bind_weight(m.view), b, y.data());
        EXPECT_LE(rel_diff(y, exact), 2e-5) << "reference " << dtype_name(type) << " T=" << T << " K=" << K;
      }
    }
  }
}

TEST_F(QuantKernels, DecodeActivationRoundingIsSmall) {
  const int64_t N = 200, K = 2048;
  const auto x = randn(static_cast<size_t>(K));
  for (DType type : {DType::Q8_0, DType::Q4_0, DType::Q4_K}) {
    const QuantizedMatrix m = quantize(type, randn(static_cast<size_t>(N * K), 0.3f), N, K);
    std::vector<double> exact(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) exact[static_cast<size_t>(n)] += double(x[k]) * m.dequant[n * K + k];
    std::vector<float> y(static_cast<size_t>(N));
    fast->matmul(x.data(), K, 1, fast->bind_weight(m.view), nullptr, y.data());
    EXPECT_LE(rel_diff(y, exact), 2e-2) << dtype_name(type);
  }
}

// The int8 dot has three implementations (VNNI, AVX2's maddubs, scalar); the CPU running the
// tests picks one. Run the others too, by restricting Highway's dispatch to each instruction set
// this CPU has.
TEST_F(QuantKernels, EveryInstructionSetComputesTheSame) {
  const int64_t N = 45, K = 512;
  const auto x = randn(static_cast<size_t>(3 * K));
  std::vector<std::string> seen;
  const int64_t supported = hwy::SupportedTargets();
  for (int64_t target : {int64_t{HWY_AVX3_DL}, int64_t{HWY_AVX3}, int64_t{HWY_AVX2}, int64_t{HWY_SSE4},
                         int64_t{HWY_SSSE3}, int64_t{HWY_EMU128}, int64_t{HWY_SCALAR}}) {
    if ((supported & target) == 0) continue;
    hwy::SetSupportedTargetsForTest(target);
    seen.push_back(simd::quant_dot_name());
    for (DType type : {DType::Q8_0, DType::Q4_0, DType::Q4_K}) {
      const QuantizedMatrix m = quantize(type, randn(static_cast<size_t>(N * K), 0.3f), N, K);
      for (int64_t T = 1; T <= 3; ++T) {
        std::vector<double> want(static_cast<size_t>(T * N));
        for (int64_t t = 0; t < T; ++t) {
          std::vector<int8_t> q(static_cast<size_t>(K));
          std::vector<float> d(static_cast<size_t>(K / 32)), ds(d.size());
          quant::quantize_activations(x.data() + t * K, K, q.data(), d.data(), ds.data());
          for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < K; ++k) want[t * N + n] += double(q[k]) * d[k / 32] * m.dequant[n * K + k];
        }
        std::vector<float> y(want.size(), NAN);
        fast->matmul(x.data(), K, T, fast->bind_weight(m.view), nullptr, y.data());
        EXPECT_LE(rel_diff(y, want), 2e-5) << seen.back() << " " << dtype_name(type) << " T=" << T;
      }
    }
  }
  hwy::SetSupportedTargetsForTest(0);
  ASSERT_FALSE(seen.empty());
  std::string all;
  for (const auto& n : seen) all += n + " ";
  std::printf("int8 dot implementations run: %s\n", all.c_str());
}

TEST_F(QuantKernels, EmbedDequantizesRows) {
  const int64_t V = 11, d = 256;
  for (DType type : {DType::Q8_0, DType::Q4_0, DType::Q4_K}) {
    const QuantizedMatrix m = quantize(type, randn(static_cast<size_t>(V * d)), V, d);
    const int32_t ids[3] = {10, 0, 4};
    for (Kernels* k : {fast.get(), ref.get()}) {
      std::vector<float> out(3 * d);
      k->embed(ids, 3, k->bind_weight(m.view), 2.0f, out.data());
      for (int t = 0; t < 3; ++t)
        for (int64_t j = 0; j < d; ++j) ASSERT_EQ(out[t * d + j], 2.0f * m.dequant[ids[t] * d + j]) << k->name();
    }
  }
}

}  // namespace
}  // namespace fh1
