// Every CPU kernel of both CPU backends (the reference and the fast one) against a naive float64
// implementation, on random shapes with odd sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "util/half.h"
#include "util/thread_pool.h"
#include "kernels/test_util.h"

namespace fh1 {
namespace {

struct KernelTest : ::testing::TestWithParam<bool> {  // param: reference backend
  ThreadPool pool{2};
  std::unique_ptr<Kernels> k = GetParam() ? make_reference_kernels(pool) : make_cpu_kernels(pool);
  std::mt19937 rng{1234};

  std::vector<float> randn(size_t n, float scale = 1.0f) { return test::randn(rng, n, scale); }
  static double max_rel(const std::vector<float>& got, const std::vector<double>& ref) { return test::rel_diff(got, ref); }
};

double silu64(double x) { return x / (1.0 + std::exp(-x)); }

TEST_P(KernelTest, MatmulAllDtypesOddShapesWithStrideAndBias) {
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (auto [T, N, K] : {std::tuple{1, 1, 1}, {3, 17, 33}, {7, 70, 129}, {2, 5, 16}}) {
      const int64_t ldx = K + 3;
      const auto x = randn(static_cast<size_t>(T * ldx));
      const auto wf = randn(static_cast<size_t>(N * K), 0.5f);
      const auto bias = randn(static_cast<size_t>(N));
      std::vector<uint16_t> w16(wf.size());
      std::vector<float> wq(wf.size());  // the weight values as stored
      for (size_t i = 0; i < wf.size(); ++i) {
        if (dt == DType::BF16) { w16[i] = f32_to_bf16(wf[i]); wq[i] = bf16_to_f32(w16[i]); }
        else if (dt == DType::F16) { w16[i] = 0; wq[i] = wf[i]; }
        else wq[i] = wf[i];
      }
      if (dt == DType::F16) {  // random normal f16 values in [2^-5, 2^3)
        std::uniform_int_distribution<int> e(10, 17), m(0, 1023), sgn(0, 1);
        for (size_t i = 0; i < wf.size(); ++i) {
          w16[i] = static_cast<uint16_t>(sgn(rng) << 15 | e(rng) << 10 | m(rng));
          wq[i] = f16_to_f32(w16[i]);
        }
      }
      TensorView tv;
      tv.name = "w";
      tv.dtype = dt;
      tv.shape = {N, K};
      tv.data = dt == DType::F32 ? reinterpret_cast<const uint8_t*>(wq.data()) : reinterpret_cast<const uint8_t*>(w16.data());
      const WeightView W = k->bind_weight(tv);
      std::vector<float> y(static_cast<size_t>(T * N));
      k->matmul(x.data(), ldx, T, W, bias.data(), y.data());
      std::vector<double> ref(y.size());
      for (int t = 0; t < T; ++t)
        for (int n = 0; n < N; ++n) {
          double s = bias[n];
          for (int kk = 0; kk < K; ++kk) s += static_cast<double>(x[t * ldx + kk]) * wq[n * K + kk];
          ref[t * N + n] = s;
        }
      EXPECT_LE(max_rel(y, ref), 1e-5) << dtype_name(dt) << " T=" << T << " N=" << N << " K=" << K;
    }
  }
}

TEST(HalfConversions, KnownValues) {
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x0200), std::ldexp(1.0f, -15));  // a larger subnormal
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7C00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3F80);  // halfway: rounds to even
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3F82);  // halfway: rounds to even (up)
}

TEST_P(KernelTest, RmsNormAndGatedRmsNormBothOrders) {
  const int T = 5, d = 37;
  const auto x = randn(T * d, 3.0f), w = randn(d), z = randn(T * (d + 4));
  std::vector<float> out(T * d);
  k->rmsnorm(x.data(), T, d, w.data(), 1e-5f, out.data());
  std::vector<double> ref(T * d);
  for (int t = 0; t < T; ++t) {
    double ss = 0;
    for (int i = 0; i < d; ++i) ss += double(x[t * d + i]) * x[t * d + i];
    const double inv = 1.0 / std::sqrt(ss / d + 1e-5);
    for (int i = 0; i < d; ++i) ref[t * d + i] = w[i] * x[t * d + i] * inv;
  }
  EXPECT_LE(max_rel(out, ref), 1e-6);

  const int D = 24, groups = 3, gd = D / groups, ldz = D + 5;
  const auto y0 = randn(T * D), wg = randn(D), zz = randn(T * ldz);
  for (bool before : {true, false}) {
    std::vector<float> y = y0;
    k->gated_rmsnorm(y.data(), zz.data(), ldz, T, D, groups, wg.data(), 1e-6f, before);
    std::vector<double> r(T * D);
    for (int t = 0; t < T; ++t)
      for (int g = 0; g < groups; ++g) {
        std::vector<double> v(gd);
        for (int i = 0; i < gd; ++i) {
          const int c = g * gd + i;
          v[i] = y0[t * D + c] * (before ? 1.0 : silu64(zz[t * ldz + c]));
        }
        double ss = 0;
        for (double e : v) ss += e * e;
        const double inv = 1.0 / std::sqrt(ss / gd + 1e-6);
        for (int i = 0; i < gd; ++i) {
          const int c = g * gd + i;
          r[t * D + c] = wg[c] * v[i] * inv * (before ? silu64(zz[t * ldz + c]) : 1.0);
        }
      }
    EXPECT_LE(max_rel(y, r), 1e-6) << "norm_before_gate=" << before;
  }
}

TEST_P(KernelTest, RopeMatchesRotateHalf) {
  const int T = 4, heads = 3, hd = 10, ld = heads * hd + 2;
  auto x = randn(T * ld);
  const auto x0 = x;
  std::vector<float> inv_freq(hd / 2);
  for (int i = 0; i < hd / 2; ++i) inv_freq[i] = 1.0f / std::pow(1e4f, 2.0f * i / hd);
  const std::vector<int64_t> pos = {0, 7, 100, 4095};
  k->rope(x.data(), ld, T, heads, hd, pos.data(), inv_freq.data());
  std::vector<float> got;
  std::vector<double> ref;
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < hd; ++i) {
        const int j = i % (hd / 2);
        const double a = double(float(pos[t]) * inv_freq[j]);
        const double xi = x0[t * ld + h * hd + i];
        const double rot = i < hd / 2 ? -x0[t * ld + h * hd + i + hd / 2] : x0[t * ld + h * hd + i - hd / 2];
        ref.push_back(xi * std::cos(a) + rot * std::sin(a));
        got.push_back(x[t * ld + h * hd + i]);
      }
  EXPECT_LE(max_rel(got, ref), 1e-6);
}

TEST_P(KernelTest, AttentionCausalGqaWithPast) {
  const int H = 6, Hkv = 2, hd = 9, n_past = 5, T = 4, rows = n_past + T;
  const auto q = randn(T * H * hd), kc = randn(rows * Hkv * hd), vc = randn(rows * Hkv * hd);
  std::vector<float> out(T * H * hd);
  const float scale = 1.0f / std::sqrt(float(hd));
  k->attention(q.data(), H * hd, T, kc.data(), vc.data(), n_past, H, Hkv, hd, scale, out.data());
  std::vector<double> ref(out.size());
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h) {
      const int g = h / (H / Hkv);
      std::vector<double> s(n_past + t + 1);
      double mx = -1e300;
      for (int j = 0; j <= n_past + t; ++j) {
        double dot = 0;
        for (int i = 0; i < hd; ++i) dot += double(q[(t * H + h) * hd + i]) * kc[(j * Hkv + g) * hd + i];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (double& e : s) sum += (e = std::exp(e - mx));
      for (int i = 0; i < hd; ++i) {
        double acc = 0;
        for (int j = 0; j <= n_past + t; ++j) acc += s[j] / sum * vc[(j * Hkv + g) * hd + i];
        ref[(t * H + h) * hd + i] = acc;
      }
    }
  EXPECT_LE(max_rel(out, ref), 1e-5);
}

TEST_P(KernelTest, Conv1dContinuesFromItsState) {
  const int C = 11, K = 4, T1 = 3, T2 = 6, ld = C + 2;
  const auto in = randn((T1 + T2) * ld), w = randn(C * K), bias = randn(C);
  std::vector<float> state((K - 1) * C, 0.0f), out1(T1 * C), out2(T2 * C);
  k->conv1d_silu(in.data(), ld, T1, C, K, w.data(), bias.data(), state.data(), out1.data());
  k->conv1d_silu(in.data() + T1 * ld, ld, T2, C, K, w.data(), bias.data(), state.data(), out2.data());
  std::vector<float> got(out1);
  got.insert(got.end(), out2.begin(), out2.end());
  std::vector<double> ref;
  for (int t = 0; t < T1 + T2; ++t)
    for (int c = 0; c < C; ++c) {
      double acc = bias[c];
      for (int j = 0; j < K; ++j) {
        const int src = t - (K - 1) + j;
        if (src >= 0) acc += double(w[c * K + j]) * in[src * ld + c];
      }
      ref.push_back(silu64(acc));
    }
  EXPECT_LE(max_rel(got, ref), 1e-6);
  for (int s = 0; s < K - 1; ++s)  // the state holds the last K-1 inputs
    for (int c = 0; c < C; ++c) EXPECT_EQ(state[s * C + c], in[(T1 + T2 - (K - 1) + s) * ld + c]);
}

// The chunked SSD scan (any T, chunks plus a remainder, split across calls) and the one-step
// recurrence both equal the float64 recurrence.
TEST_P(KernelTest, SsmScanChunkedAndStepEqualRecurrence) {
  const int H = 6, P = 5, G = 2, N = 7, cs = 8;
  const int ld = H * P + 2 * G * N + 3;  // x | B | C | padding
  for (int T : {1, 5, 8, 19, 33}) {
    const auto xbc = randn(T * ld), dt_raw = randn(T * H), A_log = randn(H, 0.5f), Dv = randn(H), dt_bias = randn(H);
    std::vector<float> A(H);
    for (int h = 0; h < H; ++h) A[h] = -std::exp(A_log[h]);
    SsmParams p{H, P, G, N, cs, A.data(), Dv.data(), dt_bias.data(), 0.01f, 2.0f};
    const auto init = randn(H * P * N, 0.3f);
    // float64 recurrence
    std::vector<double> S(init.begin(), init.end()), ref(T * H * P);
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h) {
        const int g = h / (H / G);
        double dt = dt_raw[t * H + h] + dt_bias[h];
        dt = dt > 20 ? dt : std::log1p(std::exp(dt));
        dt = std::min(std::max(dt, 0.01), 2.0);
        const double dA = std::exp(dt * A[h]);
        for (int pp = 0; pp < P; ++pp) {
          const double x = xbc[t * ld + h * P + pp];
          double y = 0;
          for (int n = 0; n < N; ++n) {
            double& s = S[(h * P + pp) * N + n];
            s = s * dA + dt * x * xbc[t * ld + H * P + g * N + n];
            y += s * xbc[t * ld + H * P + G * N + g * N + n];
          }
          ref[(t * H + h) * P + pp] = y + Dv[h] * x;
        }
      }
    // in one call, in two calls, and token by token
    for (int split : {T, (T + 1) / 2, 1}) {
      std::vector<float> state(init), y(T * H * P);
      for (int t0 = 0; t0 < T; t0 += split) {
        const int n = std::min(split, T - t0);
        const float* base = xbc.data() + t0 * ld;
        k->ssm_scan(base, base + H * P, base + H * P + G * N, ld, dt_raw.data() + t0 * H, H, n, p, state.data(),
                    y.data() + t0 * H * P);
      }
      EXPECT_LE(max_rel(y, ref), 2e-5) << "T=" << T << " split=" << split;
      EXPECT_LE(max_rel(state, S), 2e-5) << "final state, T=" << T << " split=" << split;
    }
  }
}

TEST_P(KernelTest, ElementwiseOps) {
  const size_t n = 23;
  const auto a = randn(n), b = randn(n), h0 = randn(n);
  std::vector<float> h = h0;
  k->residual_add2(h.data(), a.data(), 0.5f, b.data(), 2.0f, n);
  for (size_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(h[i], h0[i] + (a[i] * 0.5f + b[i] * 2.0f));
  std::vector<float> o(n);
  k->silu_mul(a.data(), b.data(), 1.5f, n, o.data());
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(o[i], b[i] * silu64(a[i] * 1.5), 1e-6);

  // The residual add with the norm after it (one row of n), with and without the second addend.
  const auto w = randn(n);
  for (const bool two : {true, false}) {
    std::vector<float> hr = h0, out(n);
    k->residual_rmsnorm(hr.data(), a.data(), 0.5f, two ? b.data() : nullptr, 2.0f, 1, static_cast<int64_t>(n),
                        w.data(), 1e-5f, out.data());
    double ss = 0;
    for (size_t i = 0; i < n; ++i) {
      EXPECT_FLOAT_EQ(hr[i], h0[i] + (two ? a[i] * 0.5f + b[i] * 2.0f : a[i] * 0.5f));
      ss += double(hr[i]) * hr[i];
    }
    const double inv = 1.0 / std::sqrt(ss / double(n) + 1e-5);
    for (size_t i = 0; i < n; ++i) EXPECT_NEAR(out[i], w[i] * hr[i] * inv, 1e-5 * (1 + std::abs(w[i] * hr[i] * inv)));
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, KernelTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "reference" : "fast"; });

}  // namespace
}  // namespace fh1
