// The ops whose results stay lazy for the op after them on a prompt (cuda_kernels_lazy.cpp): the
// row-scaled product matmuls and the MLP kept in fp16, against float64 and against the eager ops.
// Without a GPU every test is SKIPPED (never passed).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>

#include "cuda/cuda_op_fixture.h"
#include "kernels/cuda/cuda_ops.h"
#include "util/error.h"
#include "util/half.h"

namespace fh1 {
namespace {

using CudaLazyTest = CudaOpFixture;

// silu_mul_matmul, gate_silu_matmul and a matmul of an input whose max no op took, on a prompt
// (cuda_kernels_lazy.cpp): the product (or x) formed as the GEMM's fp16 input with a shift per
// row, the output's rows scaled when read. Rows 2^-48 apart in magnitude: against float64 each
// row keeps 11 bits (the eager ops' one shift a tensor flushes the small rows into fp16's
// subnormals, which this test shows too), with and without a bias and a z of row stride other
// than K (16-byte aligned or not); a K the rows kernel does not take runs the eager ops.
// Bit for bit: the output read by a residual norm (which takes the row scales in its add) as
// after scale_rows, and by a copy; a residual norm's lazy output, kept while fp16 matmuls read its
// fp16 copy, as the eager norm's, and those matmuls' results as the eager ones'.
TEST_F(CudaLazyTest, RowScaledProductMatmulsAgainstFloat64AndTheEagerOps) {
  F16RowsReset reset{gpu.get()};
  LazyReset lazy_reset{gpu.get()};
  gpu->set_matmul_f16_rows(256);
  gpu->set_lazy_results(true);
  const int64_t T = 300, N = 96;
  const float gs = 0.8f, sa = 0.3f, sb = 2.0f, eps = 1e-6f;
  const auto silu = [](float v) { return v / (1.0f + std::exp(-v)); };
  std::vector<uint16_t> w1b;
  const WeightView w1 = bind_random_bf16(40, N, 0.05f, w1b);
  {  // The residual norm's lazy output against the eager norm's, on the same inputs.
    const std::vector<float> h0 = randn(static_cast<size_t>(T * N)), a = randn(static_cast<size_t>(T * N)),
                             nw = randn(static_cast<size_t>(N));
    Buffer hg(*gpu, h0.size()), ag(*gpu, a.size()), nwg(*gpu, nw.size()), ug(*gpu, h0.size()),
        y1(*gpu, size_t(T * w1.rows)), room(*gpu, h0.size());
    gpu->from_host(ag.data(), a.data(), a.size());
    gpu->from_host(nwg.data(), nw.data(), nw.size());
    const auto norm_chain = [&] {
      gpu->from_host(hg.data(), h0.data(), h0.size());
      gpu->residual_rmsnorm(hg.data(), ag.data(), sa, nullptr, 0.0f, T, N, nwg.data(), eps, ug.data());
      const Kernels::Projection p[] = {{&w1, nullptr, y1.data()}};
      gpu->matmul_scaled(ug.data(), N, T, 1.5f, room.data(), p, 1);  // reads the fp16 copy: u stays lazy
      gpu->matmul_scaled(ug.data(), N, T, 1.5f, room.data(), p, 1);
      return std::vector<std::vector<float>>{host(*gpu, y1.data(), y1.size()), host(*gpu, ug.data(), ug.size()),
                                             host(*gpu, hg.data(), hg.size())};
    };
    const auto lazy = norm_chain();
    gpu->set_lazy_results(false);
    const auto eager = norm_chain();
    gpu->set_lazy_results(true);
    EXPECT_EQ(lazy, eager);
  }
  for (const int64_t K : {int64_t(200), int64_t(1024), int64_t(202)}) {
    for (const int kind : {0, 1, 2}) {  // silu_mul_matmul, gate_silu_matmul, matmul (of an x of no known max)
      const bool gated = kind == 1, plain = kind == 2;
      for (const bool with_bias : {false, true}) {
        const int64_t ldz = gated ? K + (with_bias ? 3 : 8) : K;  // (rows of z unaligned too)
        std::vector<float> a = randn(static_cast<size_t>(T * K)), b = randn(static_cast<size_t>(T * ldz));
        for (int64_t t = 0; t < T; ++t)
          for (int64_t k = 0; k < K; ++k)
            a[static_cast<size_t>(t * K + k)] *= std::ldexp(1.0f, (kind == 0 ? -8 : -16) * int(t % 4));
        if (kind == 0)  // (silu(g) ~ g / 2 for a small g: the product is as small as the gated one's)
          for (int64_t t = 0; t < T; ++t)
            for (int64_t k = 0; k < K; ++k) b[static_cast<size_t>(t * K + k)] *= std::ldexp(1.0f, -8 * int(t % 4));
        std::vector<float> v(static_cast<size_t>(T * K));  // the product, as the ops compute it
        for (int64_t t = 0; t < T; ++t)
          for (int64_t k = 0; k < K; ++k) {
            const float x = a[static_cast<size_t>(t * K + k)], z = b[static_cast<size_t>(t * ldz + k)];
            v[static_cast<size_t>(t * K + k)] = plain ? x : gated ? x * silu(z) : z * silu(x * gs);
          }
        std::vector<uint16_t> wb;
        const WeightView w = bind_random_bf16(N, K, 0.05f, wb);
        const std::vector<float> bias = randn(static_cast<size_t>(N)), h0 = randn(static_cast<size_t>(T * N)),
                                 att = randn(static_cast<size_t>(T * N)), nw = randn(static_cast<size_t>(N));
        Buffer ag(*gpu, a.size()), bg(*gpu, b.size()), yg(*gpu, size_t(T * N)), biasg(*gpu, bias.size()),
            hg(*gpu, h0.size()), attg(*gpu, att.size()), nwg(*gpu, nw.size()), ug(*gpu, h0.size()),
            y1(*gpu, size_t(T * w1.rows)), other(*gpu, size_t(T * N));
        gpu->from_host(bg.data(), b.data(), b.size());
        gpu->from_host(biasg.data(), bias.data(), bias.size());
        gpu->from_host(attg.data(), att.data(), att.size());
        gpu->from_host(nwg.data(), nw.data(), nw.size());
        const std::string what = std::string(plain ? "matmul" : gated ? "gate_silu" : "silu_mul") + " K=" +
                                 std::to_string(K) + (with_bias ? " bias" : "");
        const bool fits = K % 4 == 0;  // (the rows kernel reads rows of float4s)
        const float* bp = with_bias ? biasg.data() : nullptr;
        // The op on fresh inputs (a is room the op may use).
        const auto run = [&] {
          gpu->from_host(ag.data(), a.data(), a.size());
          if (plain) gpu->matmul(ag.data(), K, T, w, bp, yg.data());
          else if (gated) gpu->gate_silu_matmul(ag.data(), bg.data(), ldz, T, w, bp, yg.data());
          else gpu->silu_mul_matmul(ag.data(), bg.data(), gs, T, w, bp, yg.data());
        };
        // Then the residual norm reading it and an fp16 matmul of the norm's output.
        const auto chain = [&](bool read_first) {
          gpu->from_host(hg.data(), h0.data(), h0.size());  // (a host copy settles what is lazy)
          run();
          if (read_first) host(*gpu, yg.data(), 1);
          gpu->residual_rmsnorm(hg.data(), yg.data(), sa, attg.data(), sb, T, N, nwg.data(), eps, ug.data());
          const Kernels::Projection p[] = {{&w1, nullptr, y1.data()}};
          gpu->matmul_scaled(ug.data(), N, T, 1.0f, other.data(), p, 1);
          return std::vector<std::vector<float>>{host(*gpu, hg.data(), hg.size()), host(*gpu, ug.data(), ug.size()),
                                                 host(*gpu, y1.data(), y1.size())};
        };

        run();
        const std::vector<float> lazy = host(*gpu, yg.data(), yg.size());
        run();
        gpu->copy(other.data(), yg.data(), yg.size());  // another op reads it: settled first
        EXPECT_EQ(host(*gpu, other.data(), other.size()), lazy) << what;
        const CudaLazyCounts c0 = gpu->lazy_counts();
        const auto consumed = chain(false);
        const CudaLazyCounts c1 = gpu->lazy_counts();
        EXPECT_EQ(c1.rows_matmuls - c0.rows_matmuls, fits ? 1u : 0u) << what;
        EXPECT_EQ(c1.rows_taken - c0.rows_taken, fits && !with_bias ? 1u : 0u) << what;
        const auto settled = chain(true);
        EXPECT_EQ(consumed, settled) << what;

        gpu->set_lazy_results(false);
        run();
        const std::vector<float> eager = host(*gpu, yg.data(), yg.size());
        gpu->set_lazy_results(true);

        int64_t bad = 0, bad_eager = 0;
        double worst = 0, worst_eager = 0;
        count_off_float64(lazy, v, wb, T, N, K, 1.0f, with_bias ? bias.data() : nullptr, nullptr, 11, &bad, &worst);
        count_off_float64(eager, v, wb, T, N, K, 1.0f, with_bias ? bias.data() : nullptr, nullptr, 11, &bad_eager,
                          &worst_eager);
        // (With a bias, the allowance of 1e-6 of the value hides what the small rows lose.)
        if (!fits) {  // the eager ops (whose one shift loses the small rows)
          EXPECT_EQ(lazy, eager) << what;
          if (!with_bias) {
            EXPECT_GT(bad, 0) << what;
          }
          continue;
        }
        EXPECT_EQ(bad, 0) << what << " worst err/allowed " << worst;
        if (!with_bias) {
          EXPECT_GT(bad_eager, 0) << what << ": the rows' spread does not show the per-row shift";
        }
      }
    }
  }
}

// The MLP as one op on a prompt (CudaKernelsImpl::mlp): gate and up from the norm's fp16 copy,
// kept in fp16 with a scale from a bound on their outputs (each weight row's sum of |w|), their
// product formed as the down projection's row-scaled fp16 input. Against float64, element by
// element: each y within what the roundings can add up to (u, gate, up and the product each to
// 11 bits, 2x margin), for inputs of mixed signs and for all-positive ones whose gate outputs
// reach the bound (weights x3e4: fp16 would overflow without it), and for tiny up weights
// (x1e-6). An intermediate width the kernel does not take (I % 4 != 0) runs the three ops; so do
// the eager ops, which meet the same bound.
TEST_F(CudaLazyTest, MlpKeepsGateAndUpInF16AgainstFloat64) {
  F16RowsReset reset{gpu.get()};
  LazyReset lazy_reset{gpu.get()};
  gpu->set_matmul_f16_rows(256);
  gpu->set_lazy_results(true);
  const int64_t T = 300;
  const float gs = 0.8f, eps = 1e-6f;
  const auto silu = [](double v) { return v / (1.0 + std::exp(-v)); };
  struct Case {
    int64_t d, I;
    bool positive;
    float gate_scale, up_scale;
  };
  for (const Case& c : {Case{96, 200, false, 1.0f, 1.0f}, Case{1280, 1024, false, 1.0f, 1e-6f},
                        Case{96, 200, true, 3e4f, 1.0f}, Case{96, 202, false, 1.0f, 1.0f},
                        Case{96, 204, false, 1.0f, 1.0f}}) {
    const int64_t d = c.d, I = c.I;
    const std::string what = "d=" + std::to_string(d) + " I=" + std::to_string(I) + (c.positive ? " positive" : "");
    std::vector<float> x = randn(static_cast<size_t>(T * d)), nw = randn(static_cast<size_t>(d));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < d; ++k) x[static_cast<size_t>(t * d + k)] *= static_cast<float>(1 + t % 5);
    if (c.positive) {
      for (float& v : x) v = std::fabs(v);
      for (float& v : nw) v = std::fabs(v);
    }
    std::vector<uint16_t> gb, ub, db;
    const WeightView wg = bind_random_bf16(I, d, 0.05f * c.gate_scale, gb, c.positive),
                     wu = bind_random_bf16(I, d, 0.05f * c.up_scale, ub, c.positive),
                     wd = bind_random_bf16(d, I, 0.05f, db, c.positive);
    const std::vector<float> bias = randn(static_cast<size_t>(d));
    Buffer xg(*gpu, x.size()), nwg(*gpu, nw.size()), ug(*gpu, x.size()), gate(*gpu, size_t(T * I)),
        up(*gpu, size_t(T * I)), yg(*gpu, size_t(T * d)), biasg(*gpu, bias.size());
    gpu->from_host(xg.data(), x.data(), x.size());
    gpu->from_host(nwg.data(), nw.data(), nw.size());
    gpu->from_host(biasg.data(), bias.data(), bias.size());
    const Kernels::Mlp m{&wg, nullptr, &wu, nullptr, gs, &wd, biasg.data()};
    const auto run = [&] {
      gpu->rmsnorm(xg.data(), T, d, nwg.data(), eps, ug.data());
      gpu->mlp(ug.data(), d, T, m, gate.data(), up.data(), yg.data());
      return host(*gpu, yg.data(), yg.size());
    };
    const size_t before = gpu->lazy_counts().mlps_f16;
    const std::vector<float> y = run();
    EXPECT_EQ(gpu->lazy_counts().mlps_f16 - before, I % 4 == 0 ? 1u : 0u) << what;
    // The product pass 4 values an access instead of 8 (the default where I % 8 == 0): the same
    // bits.
    cuda::set_silu_mul_wide(false);
    EXPECT_EQ(run(), y) << "the product pass 4 values an access, " << what;
    cuda::set_silu_mul_wide(true);
    const std::vector<float> u = host(*gpu, ug.data(), ug.size());  // (the norm's float32 output, settled)
    gpu->set_lazy_results(false);
    const std::vector<float> y_eager = run();
    gpu->set_lazy_results(true);

    // Float64 from u, and each y's allowance from the error each rounding can carry forward.
    std::vector<double> ref(static_cast<size_t>(T * d)), allowed(ref.size());
    std::vector<double> p(static_cast<size_t>(I)), dp(static_cast<size_t>(I));
    double max_g = 0;
    for (int64_t t = 0; t < T; ++t) {
      double row_max = 0;
      for (int64_t i = 0; i < I; ++i) {
        double g = 0, mg = 0, v = 0, mv = 0;
        for (int64_t k = 0; k < d; ++k) {
          const double uk = u[static_cast<size_t>(t * d + k)];
          const double a = uk * bf16_to_f32(gb[static_cast<size_t>(i * d + k)]),
                       b = uk * bf16_to_f32(ub[static_cast<size_t>(i * d + k)]);
          g += a, mg += std::fabs(a), v += b, mv += std::fabs(b);
        }
        max_g = std::max(max_g, std::fabs(g));
        const double e = std::ldexp(1.0, -10), sg = silu(gs * g);
        p[size_t(i)] = v * sg;
        dp[size_t(i)] = std::fabs(sg) * e * (mv + std::fabs(v)) + std::fabs(v) * 1.1 * gs * e * (mg + std::fabs(g)) +
                        e * std::fabs(p[size_t(i)]);
        row_max = std::max(row_max, std::fabs(p[size_t(i)]));
      }
      for (int64_t n = 0; n < d; ++n) {
        double r = bias[size_t(n)], a = 0;
        for (int64_t i = 0; i < I; ++i) {
          const double w = bf16_to_f32(db[static_cast<size_t>(n * I + i)]);
          r += p[size_t(i)] * w;
          a += std::fabs(w) * (dp[size_t(i)] + std::ldexp(row_max, -22));
        }
        ref[static_cast<size_t>(t * d + n)] = r;
        allowed[static_cast<size_t>(t * d + n)] = a + 1e-6 * std::fabs(r) + 1e-30;
      }
    }
    if (c.positive) {
      EXPECT_GT(max_g, 65504.0) << what << ": the gate outputs do not test the bound";
    }
    for (const auto* got : {&y, &y_eager}) {
      int64_t bad = 0;
      double worst = 0;
      for (size_t j = 0; j < ref.size(); ++j) {
        const double err = std::fabs((*got)[j] - ref[j]);
        worst = std::max(worst, err / allowed[j]);
        bad += !(err <= allowed[j]);
      }
      EXPECT_EQ(bad, 0) << what << (got == &y ? " (mlp)" : " (eager)") << " worst err/allowed " << worst;
    }
  }
}

}  // namespace
}  // namespace fh1
