// The matmul on the GPU: every weight dtype against the CPU reference, the fp16 prefill matmul
// and the decode GEMV against float64. Without a GPU every test is SKIPPED (never passed).
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

struct CudaMatmulTest : CudaOpFixture {
  void decode_gemv_jobs_against_float64(int64_t K, int T, double tol, std::vector<float>& y0);
};

TEST_F(CudaMatmulTest, MatmulAllDtypesOddShapesWithStrideAndBias) {
  for (DType dt : {DType::BF16, DType::F32, DType::F16}) {
    for (auto [T, N, K] : {std::tuple{1, 1, 1}, {3, 17, 33}, {7, 70, 129}, {1, 301, 257}, {65, 129, 96}}) {
      const int64_t ldx = K + 3;
      const auto x = randn(static_cast<size_t>(T * ldx));
      const auto wf = randn(static_cast<size_t>(N * K), 0.5f);
      std::vector<uint8_t> bytes(wf.size() * (dt == DType::F32 ? 4 : 2));
      for (size_t i = 0; i < wf.size(); ++i) {
        if (dt == DType::F32) std::memcpy(&bytes[4 * i], &wf[i], 4);
        else {
          const uint16_t h = dt == DType::BF16 ? f32_to_bf16(wf[i]) : static_cast<uint16_t>(0x3000 + (i * 7919) % 0x1000);
          std::memcpy(&bytes[2 * i], &h, 2);
        }
      }
      TensorView tv;
      tv.name = "w";
      tv.dtype = dt;
      tv.shape = {N, K};
      tv.data = bytes.data();
      tv.nbytes = bytes.size();
      const WeightView wc = cpu->bind_weight(tv), wg = gpu->bind_weight(tv);
      auto xs = both(x), b = both(randn(static_cast<size_t>(N)));
      auto y = poisoned(static_cast<size_t>(T * N));
      cpu->matmul(xs.c.data(), ldx, T, wc, b.c.data(), y.c.data());
      gpu->matmul(xs.g.data(), ldx, T, wg, b.g.data(), y.g.data());
      // bf16 rounds the activations too (K terms of relative error 2^-9 each); f32 is exact.
      const double tol = dt == DType::BF16 ? 2e-2 : 1e-5;
      EXPECT_LE(rel(y), tol) << dtype_name(dt) << " T=" << T << " N=" << N << " K=" << K;
      auto y2 = poisoned(static_cast<size_t>(T * N));
      cpu->matmul(xs.c.data(), ldx, T, wc, nullptr, y2.c.data());
      gpu->matmul(xs.g.data(), ldx, T, wg, nullptr, y2.g.data());
      EXPECT_LE(rel(y2), tol) << dtype_name(dt) << " no bias, T=" << T;
    }
  }
}

// The fp16 prefill matmul (cuda_gemm_f16.cu) against float64, element by element: its error
// stays within what rounding each activation to 11 bits allows (2^-11 of sum |x w|), for
// activations and weights whose magnitudes lie far from fp16's range, rows of x up to 7 orders of
// magnitude apart (one scale serves the whole call: fp16 keeps every bit of values within 2^29
// of the largest), a weight view that starts inside an upload (unaligned), and all-zero input.
// The hi + lo split (below the fp16 rows) must stay within 2^-15 of the same sum.
TEST_F(CudaMatmulTest, MatmulF16ScalesIntoRangeAgainstFloat64) {
  F16RowsReset reset{gpu.get()};
  struct Case {
    int64_t T, N, K;
    float w_scale;
    int row_exp_lo, row_exp_hi;  // each row of x scaled by 10^e, e uniform in [lo, hi]
    int64_t view_row;            // the weight view starts at this row of the upload
    bool zero_x;
  };
  for (const Case c : {Case{1030, 67, 129, 1e-9f, -4, 3, 0, false}, Case{1100, 40, 96, 300.0f, 3, 9, 1, false},
                       Case{9, 33, 65, 1.0f, -14, -9, 3, false}, Case{1024, 16, 64, 0.02f, 0, 0, 0, true}}) {
    for (bool f16 : {true, false}) {
      gpu->set_matmul_f16_rows(f16 ? std::min<int64_t>(c.T, 1024) : 0);
      const int64_t ldx = c.K + 5, rows = c.N + c.view_row;
      std::vector<float> x = randn(static_cast<size_t>(c.T * ldx));
      for (int64_t t = 0; t < c.T; ++t) {
        const float s = c.zero_x ? 0.0f : std::pow(10.0f, std::uniform_int_distribution<int>(c.row_exp_lo, c.row_exp_hi)(rng));
        for (int64_t k = 0; k < ldx; ++k) x[static_cast<size_t>(t * ldx + k)] *= s;
      }
      std::vector<uint16_t> wb;
      WeightView w = bind_random_bf16(rows, c.K, c.w_scale, wb);
      w.data = static_cast<const uint16_t*>(w.data) + c.view_row * c.K;
      w.rows = c.N;
      const std::vector<float> bias = randn(static_cast<size_t>(c.N));
      Buffer xg(*gpu, x.size()), bg(*gpu, bias.size()), yg(*gpu, static_cast<size_t>(c.T * c.N));
      gpu->from_host(xg.data(), x.data(), x.size());
      gpu->from_host(bg.data(), bias.data(), bias.size());
      gpu->matmul(xg.data(), ldx, c.T, w, bg.data(), yg.data());
      const std::vector<float> y = host(*gpu, yg.data(), static_cast<size_t>(c.T * c.N));
      const double bound = f16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -15);
      int64_t bad = 0;
      double worst = 0;
      for (int64_t t = 0; t < c.T; ++t)
        for (int64_t n = 0; n < c.N; ++n) {
          double ref = bias[static_cast<size_t>(n)], mag = 0;
          for (int64_t k = 0; k < c.K; ++k) {
            const double p = static_cast<double>(x[static_cast<size_t>(t * ldx + k)]) *
                             bf16_to_f32(wb[static_cast<size_t>((n + c.view_row) * c.K + k)]);
            ref += p;
            mag += std::fabs(p);
          }
          const double err = std::fabs(y[static_cast<size_t>(t * c.N + n)] - ref);
          const double allowed = bound * mag + 1e-6 * std::fabs(ref) + 1e-30;
          worst = std::max(worst, err / allowed);
          bad += !(err <= allowed);
        }
      EXPECT_EQ(bad, 0) << (f16 ? "f16" : "split") << " T=" << c.T << " N=" << c.N << " K=" << c.K
                        << " w_scale=" << c.w_scale << " worst err/allowed " << worst;
    }
  }
}

// Activations that feed several fp16 matmuls in a row (q, k, v) are converted once: the second
// matrix's result equals the one computed after a fresh conversion, bit for bit; once an op has
// changed the activations (halved them), the next matmul converts again (exactly half of before).
TEST_F(CudaMatmulTest, MatmulF16ReusesConvertedActivationsOnlyWhileUnchanged) {
  F16RowsReset reset{gpu.get()};
  gpu->set_matmul_f16_rows(1024);
  const int64_t T = 1100, K = 96, N1 = 40, N2 = 56;
  std::vector<uint16_t> h1, h2;
  const WeightView w1 = bind_random_bf16(N1, K, 1e-3f, h1), w2 = bind_random_bf16(N2, K, 50.0f, h2);
  const std::vector<float> x = randn(static_cast<size_t>(T * K), 3.0f);
  Buffer xg(*gpu, x.size()), y1(*gpu, size_t(T * N1)), y2(*gpu, size_t(T * N2)), y2_fresh(*gpu, size_t(T * N2)),
      y1_half(*gpu, size_t(T * N1)), other(*gpu, 16);
  gpu->from_host(xg.data(), x.data(), x.size());
  gpu->matmul(xg.data(), K, T, w1, nullptr, y1.data());
  gpu->matmul(xg.data(), K, T, w2, nullptr, y2.data());  // reuses the conversion
  gpu->zero(other.data(), other.size());                  // any op in between: converted afresh
  gpu->matmul(xg.data(), K, T, w2, nullptr, y2_fresh.data());
  EXPECT_EQ(host(*gpu, y2.data(), y2.size()), host(*gpu, y2_fresh.data(), y2_fresh.size()));
  gpu->matmul(xg.data(), K, T, w1, nullptr, y1.data());
  gpu->scale(xg.data(), x.size(), 0.5f, xg.data());
  gpu->matmul(xg.data(), K, T, w1, nullptr, y1_half.data());
  std::vector<float> half = host(*gpu, y1.data(), y1.size());
  for (float& v : half) v *= 0.5f;
  EXPECT_EQ(host(*gpu, y1_half.data(), y1_half.size()), half);
}

// scale and silu_mul take their output's max for the fp16 matmul right after them: its result is
// bit for bit the one computed with a pass of its own for the max (after any other op); a scale
// of only part of the matrix gives no max (the rest, 300 times larger, would overflow fp16).
TEST_F(CudaMatmulTest, MatmulF16TakesTheMaxFromTheOpBeforeOnlyForItsWholeInput) {
  F16RowsReset reset{gpu.get()};
  gpu->set_matmul_f16_rows(256);
  const int64_t T = 400, K = 128, N = 48;
  const size_t n = static_cast<size_t>(T * K);
  std::vector<uint16_t> hw;
  const WeightView w = bind_random_bf16(N, K, 0.1f, hw);
  const std::vector<float> a = randn(n, 2.0f), b = randn(n, 1.0f), big = randn(n, 600.0f);
  Buffer ag(*gpu, n), bg(*gpu, n), xg(*gpu, n), y(*gpu, size_t(T * N)), other(*gpu, 4);
  gpu->from_host(ag.data(), a.data(), n);
  gpu->from_host(bg.data(), b.data(), n);
  const auto out = [&] { return host(*gpu, y.data(), y.size()); };
  const auto fresh = [&] {  // an op in between: the matmul takes the max itself
    gpu->zero(other.data(), other.size());
    gpu->matmul(xg.data(), K, T, w, nullptr, y.data());
    return out();
  };
  gpu->scale(ag.data(), n, 3.0f, xg.data());
  gpu->matmul(xg.data(), K, T, w, nullptr, y.data());
  const std::vector<float> after_scale = out();
  EXPECT_EQ(after_scale, fresh());
  gpu->silu_mul(ag.data(), bg.data(), 0.7f, n, xg.data());
  gpu->matmul(xg.data(), K, T, w, nullptr, y.data());
  const std::vector<float> after_silu = out();
  EXPECT_EQ(after_silu, fresh());
  gpu->from_host(xg.data(), big.data(), n);
  gpu->scale(ag.data(), n / 2, 1.0f, xg.data());  // the first half only: its max is not x's
  gpu->matmul(xg.data(), K, T, w, nullptr, y.data());
  const std::vector<float> after_part = out();
  for (float v : after_part) ASSERT_TRUE(std::isfinite(v));
  EXPECT_EQ(after_part, fresh());
}

// A prompt's norm writes the fp16 input of the matmuls after it (shifted by a bound on its
// output, not its max), and matmul_scaled takes the mixers' input multiplier into the GEMM's alpha;
// the in_proj's mul_columns between two such calls keeps that input. Against float64 (the norm's
// float32 output times s times the weights, within 2^-11 of sum |x w|), and bit for bit against
// the same matmuls converting afresh after an unrelated op (scaling by powers of two is exact).
// The norm's float32 output is the one it writes without the fp16 copy. Norm weights far from 1
// (4e-5 and 300) and d of each warp kernel's width, and one the warp kernel does not take (1030).
TEST_F(CudaMatmulTest, PromptNormFeedsScaledF16MatmulsAgainstFloat64) {
  F16RowsReset reset{gpu.get()};
  const int64_t T = 300, N1 = 72, N2 = 40;
  const float s1 = 0.37f, s2 = 3.0f;
  for (const auto& [d, w_scale] : {std::pair<int64_t, float>{1280, 300.0f}, {96, 4e-5f}, {3072, 1.0f},
                                  {1030, 2.0f}}) {
    const size_t n = static_cast<size_t>(T * d);
    std::vector<float> x = randn(n);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < d; ++k) x[static_cast<size_t>(t * d + k)] *= static_cast<float>(1 + t % 7) * 0.25f;
    const std::vector<float> nw = randn(static_cast<size_t>(d), w_scale), v = randn(static_cast<size_t>(N1));
    std::vector<uint16_t> h1, h2;
    const WeightView w1 = bind_random_bf16(N1, d, 0.05f, h1), w2 = bind_random_bf16(N2, d, 0.05f, h2);
    const std::vector<float> b2 = randn(static_cast<size_t>(N2));
    Buffer xg(*gpu, n), wg(*gpu, nw.size()), u(*gpu, n), room(*gpu, n), y1(*gpu, size_t(T * N1)),
        y2(*gpu, size_t(T * N2)), vg(*gpu, v.size()), bg(*gpu, b2.size()), other(*gpu, 4);
    gpu->from_host(xg.data(), x.data(), n);
    gpu->from_host(wg.data(), nw.data(), nw.size());
    gpu->from_host(vg.data(), v.data(), v.size());
    gpu->from_host(bg.data(), b2.data(), b2.size());
    gpu->set_matmul_f16_rows(0);  // the norm alone, as it writes without the fp16 copy
    gpu->rmsnorm(xg.data(), T, d, wg.data(), 1e-6f, u.data());
    const std::vector<float> u_plain = host(*gpu, u.data(), n);

    gpu->set_matmul_f16_rows(256);
    const Kernels::Projection p1[] = {{&w1, nullptr, y1.data()}}, p2[] = {{&w2, bg.data(), y2.data()}};
    gpu->rmsnorm(xg.data(), T, d, wg.data(), 1e-6f, u.data());
    gpu->matmul_scaled(u.data(), d, T, s1, room.data(), p1, 1);
    gpu->mul_columns(y1.data(), T, N1, vg.data());
    gpu->matmul_scaled(u.data(), d, T, s2, room.data(), p2, 1);
    const std::vector<float> uf = host(*gpu, u.data(), n), g1 = host(*gpu, y1.data(), y1.size()),
                             g2 = host(*gpu, y2.data(), y2.size());
    EXPECT_EQ(uf, u_plain) << "d=" << d;
    gpu->zero(other.data(), other.size());
    gpu->matmul_scaled(u.data(), d, T, s1, room.data(), p1, 1);
    gpu->mul_columns(y1.data(), T, N1, vg.data());
    gpu->zero(other.data(), other.size());
    gpu->matmul_scaled(u.data(), d, T, s2, room.data(), p2, 1);
    EXPECT_EQ(g1, host(*gpu, y1.data(), y1.size())) << "d=" << d;
    EXPECT_EQ(g2, host(*gpu, y2.data(), y2.size())) << "d=" << d;

    int64_t bad = 0;
    double worst = 0;
    count_off_float64(g1, uf, h1, T, N1, d, s1, nullptr, v.data(), 11, &bad, &worst);
    count_off_float64(g2, uf, h2, T, N2, d, s2, b2.data(), nullptr, 11, &bad, &worst);
    EXPECT_EQ(bad, 0) << "d=" << d << " worst err/allowed " << worst;
  }
}

// matmul_scaled's per-column scale (Mamba-2's mup vector): folded into a kept fp16 copy of W
// whose rows it scales (the copy's bytes grow by W's), or, with a bias (which it scales too) or
// without copies, applied after the GEMM; a decode-sized call takes the default (matmul, then
// mul_columns). Against float64: ((x s) W^T + b) v within 2^-10 of sum |x w| |v| (x and, folded,
// w v each rounded to fp16).
TEST_F(CudaMatmulTest, MatmulScaledColumnScalesAgainstFloat64) {
  F16RowsReset reset{gpu.get()};
  F16CopiesReset copies_reset{gpu.get()};
  gpu->set_matmul_f16_rows(256);
  const int64_t K = 96, N = 75;
  const float s = 0.6f;
  std::vector<float> v(static_cast<size_t>(N));
  const float seg[5] = {0.3f, 7.0f, 0.01f, 25.0f, 1.0f};
  for (int64_t i = 0; i < N; ++i) v[static_cast<size_t>(i)] = seg[i * 5 / N];
  std::vector<uint16_t> wb;
  const WeightView w = bind_random_bf16(N, K, 0.05f, wb);
  const std::vector<float> bias = randn(static_cast<size_t>(N));
  Buffer vg(*gpu, v.size()), bg(*gpu, bias.size());
  gpu->from_host(vg.data(), v.data(), v.size());
  gpu->from_host(bg.data(), bias.data(), bias.size());
  struct Case {
    int64_t T;
    bool with_bias, copies, folds;
  };
  for (const Case c : {Case{300, false, true, true}, Case{300, true, true, false}, Case{300, false, false, false},
                       Case{3, false, true, false}}) {
    gpu->set_f16_weight_copies(c.copies);
    const std::vector<float> x = randn(static_cast<size_t>(c.T * K), 2.0f);
    Buffer xg(*gpu, x.size()), room(*gpu, x.size()), yg(*gpu, static_cast<size_t>(c.T * N));
    gpu->from_host(xg.data(), x.data(), x.size());
    const size_t bytes_before = gpu->memory_stats().f16_copy_bytes;
    const Kernels::Projection p[] = {{&w, c.with_bias ? bg.data() : nullptr, yg.data(), vg.data()}};
    gpu->matmul_scaled(xg.data(), K, c.T, s, room.data(), p, 1);
    const std::vector<float> y = host(*gpu, yg.data(), yg.size());
    const size_t grew = gpu->memory_stats().f16_copy_bytes - bytes_before;
    if (c.folds) {
      EXPECT_GE(grew, static_cast<size_t>(N * K * 2)) << "no scaled copy was made";
    }
    int64_t bad = 0;
    double worst = 0;
    count_off_float64(y, x, wb, c.T, N, K, s, c.with_bias ? bias.data() : nullptr, v.data(), 10, &bad, &worst);
    EXPECT_EQ(bad, 0) << "T=" << c.T << " bias " << c.with_bias << " copies " << c.copies << " worst err/allowed "
                      << worst;
  }
}

// The weights' fp16 copies (set_f16_weight_copies): made by the first fp16 matmul of a matrix,
// used by the next, for a view inside an upload too, with results bit for bit those of the
// per-call conversion; dropped when turned off, and for good once an allocation has failed.
TEST_F(CudaMatmulTest, MatmulF16WeightCopiesGiveTheSameResultsAndGiveWay) {
  F16RowsReset reset{gpu.get()};
  F16CopiesReset copies_reset{gpu.get()};
  gpu->set_matmul_f16_rows(256);
  const int64_t T = 300, K = 160, N = 72, view_row = 5, NV = 40;
  std::vector<uint16_t> hw;
  const WeightView w = bind_random_bf16(N, K, 0.07f, hw);
  WeightView view = w;
  view.data = static_cast<const uint16_t*>(w.data) + view_row * K;
  view.rows = NV;
  const std::vector<float> x = randn(static_cast<size_t>(T * K), 2.0f);
  Buffer xg(*gpu, x.size()), y(*gpu, size_t(T * N)), yv(*gpu, size_t(T * NV));
  gpu->from_host(xg.data(), x.data(), x.size());
  const auto run = [&] {
    gpu->matmul(xg.data(), K, T, w, nullptr, y.data());
    gpu->zero(yv.data(), 1);  // an op between: x is converted again (not what this test is about)
    gpu->matmul(xg.data(), K, T, view, nullptr, yv.data());
    return std::pair{host(*gpu, y.data(), y.size()), host(*gpu, yv.data(), yv.size())};
  };
  gpu->set_f16_weight_copies(false);
  const auto converted = run();
  EXPECT_EQ(gpu->memory_stats().f16_copy_bytes, 0u);
  gpu->set_f16_weight_copies(true);
  const auto first = run();  // makes w's copy
  const size_t bytes = gpu->memory_stats().f16_copy_bytes;
  EXPECT_GE(bytes, static_cast<size_t>(N * K * 2)) << "no fp16 copy was made";
  const auto second = run();  // uses it
  EXPECT_EQ(gpu->memory_stats().f16_copy_bytes, bytes);
  EXPECT_EQ(first, converted);
  EXPECT_EQ(second, converted);
  // The view's rows are those of the whole matrix's.
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < NV; ++n)
      ASSERT_EQ(second.second[size_t(t * NV + n)], second.first[size_t(t * N + n + view_row)]) << t << " " << n;
  gpu->set_f16_weight_copies(false);
  EXPECT_EQ(gpu->memory_stats().f16_copy_bytes, 0u);
  gpu->set_f16_weight_copies(true);
  EXPECT_EQ(run(), converted);
  EXPECT_GT(gpu->memory_stats().f16_copy_bytes, 0u);
  // An allocation the device cannot hold: the copies are freed first, then the error comes.
  EXPECT_THROW(gpu->alloc(size_t(1) << 42), Error);
  EXPECT_EQ(gpu->memory_stats().f16_copy_bytes, 0u);
  EXPECT_EQ(run(), converted);
  EXPECT_EQ(gpu->memory_stats().f16_copy_bytes, 0u) << "copies made again after an allocation failed";
}

// The fp16 GEMMs on tuned cublasLt algorithms (cuda_gemm_lt.h) give cublasGemmEx's bits: the
// plain, the row-scaled and the fp16-output GEMMs (a matmul with lazy results off, then on, and
// a prompt's MLP), at the rows a shape was tuned at and at other rows of its bucket, and again
// once tuned.
TEST_F(CudaMatmulTest, TunedGemmAlgorithmsGiveTheDefaultsBits) {
  F16RowsReset reset{gpu.get()};
  LazyReset lazy_reset{gpu.get()};
  struct TuningReset {
    CudaKernels* g;
    bool on = g->gemm_tuning();
    ~TuningReset() { g->set_gemm_tuning(on); }
  } tuning_reset{gpu.get()};
  gpu->set_matmul_f16_rows(256);
  const int64_t d = 1536, I = 3072;
  std::vector<uint16_t> gb, ub, db, wb;
  const WeightView wg = bind_random_bf16(I, d, 0.05f, gb), wu = bind_random_bf16(I, d, 0.05f, ub),
                   wd = bind_random_bf16(d, I, 0.05f, db), w = bind_random_bf16(I, d, 0.05f, wb);
  const std::vector<float> nw = randn(static_cast<size_t>(d));
  Buffer nwg(*gpu, nw.size());
  gpu->from_host(nwg.data(), nw.data(), nw.size());
  const Kernels::Mlp m{&wg, nullptr, &wu, nullptr, 0.8f, &wd, nullptr};
  const int tuned_before = gpu->gemm_shapes_tuned();
  const size_t mlps_before = gpu->lazy_counts().mlps_f16;
  for (int64_t T : {2048, 1500, 2048}) {
    const std::vector<float> x = randn(static_cast<size_t>(T * d));
    Buffer xg(*gpu, x.size()), ug(*gpu, x.size()), gate(*gpu, size_t(T * I)), up(*gpu, size_t(T * I)),
        yg(*gpu, size_t(T * d)), ym(*gpu, size_t(T * I)), spare(*gpu, 1);
    gpu->from_host(xg.data(), x.data(), x.size());
    const auto run = [&] {
      std::vector<std::vector<float>> out;
      gpu->set_lazy_results(false);
      gpu->zero(spare.data(), 1);  // an op between: x is converted again
      gpu->matmul(xg.data(), d, T, w, nullptr, ym.data());
      out.push_back(host(*gpu, ym.data(), ym.size()));
      gpu->set_lazy_results(true);
      gpu->zero(spare.data(), 1);
      gpu->matmul(xg.data(), d, T, w, nullptr, ym.data());
      out.push_back(host(*gpu, ym.data(), ym.size()));
      gpu->rmsnorm(xg.data(), T, d, nwg.data(), 1e-6f, ug.data());
      gpu->mlp(ug.data(), d, T, m, gate.data(), up.data(), yg.data());
      out.push_back(host(*gpu, yg.data(), yg.size()));
      return out;
    };
    gpu->set_gemm_tuning(false);
    const auto want = run();
    gpu->set_gemm_tuning(true);
    for (int rep = 0; rep < 2; ++rep) {
      const auto got = run();
      for (size_t i = 0; i < want.size(); ++i) {
        ASSERT_EQ(got[i].size(), want[i].size());
        EXPECT_EQ(std::memcmp(got[i].data(), want[i].data(), want[i].size() * sizeof(float)), 0)
            << "T=" << T << " GEMM " << i << " (0 plain, 1 row-scaled, 2 MLP) run " << rep;
      }
    }
  }
  EXPECT_GE(gpu->gemm_shapes_tuned() - tuned_before, 4) << "the shapes were not tuned";
  EXPECT_EQ(gpu->lazy_counts().mlps_f16 - mlps_before, 9u) << "the MLP did not keep gate and up in fp16";
}

// The decode GEMV job (cuda_ops.h) against float64, with enough rows for the streaming kernel
// (and few, for the split-K one): parts with their own scales and mup vector, the scale's output,
// the residual and the gated epilogues, K not a multiple of 256 (nor of 8: float32 kernel only),
// 1 to 16 rows of x, on the tensor cores (from 2 rows, tiles of 16 and 32 weight rows: x as hi +
// lo bf16, about 16 bits, so within 1e-4 of the rms where float32 x keeps 1e-5) and on the CUDA
// cores; the two must differ.
TEST_F(CudaMatmulTest, DecodeGemvJobsAgainstFloat64) {
  const int mma_default = cuda::gemv_mma_rows(), tile_default = cuda::gemv_mma_tile_rows();
  for (int64_t K : {1024, 1000, 1004})
    for (int T : {1, 2, 3, 8, 9, 16}) {
      std::vector<float> first;  // (tensor cores from, tile rows): 16 and 32 rows, then CUDA cores
      for (auto [mma_from, tile] : {std::pair{2, 16}, {2, 32}, {0, 16}}) {
        SCOPED_TRACE("tensor cores from " + std::to_string(mma_from) + " rows, tiles of " + std::to_string(tile));
        cuda::set_gemv_mma_rows(mma_from);
        cuda::set_gemv_mma_tile_rows(tile);
        const bool mma = mma_from > 0 && T >= mma_from && K % 8 == 0;
        std::vector<float> y0;
        decode_gemv_jobs_against_float64(K, T, mma ? 1e-4 : 1e-5, y0);
        if (mma_from > 0) first = y0;
        if (mma_from == 0 && T >= 2 && K % 8 == 0) {
          EXPECT_NE(std::memcmp(first.data(), y0.data(), y0.size() * sizeof(float)), 0)
              << "the tensor-core GEMV did not run: K=" << K << " T=" << T;
        }
      }
    }
  cuda::set_gemv_mma_rows(mma_default);
  cuda::set_gemv_mma_tile_rows(tile_default);
}

// One case of the test above; y0: part 0's y of the many-rows job.
void CudaMatmulTest::decode_gemv_jobs_against_float64(int64_t K, int T, double tol, std::vector<float>& y0) {
  auto bf16_matrix = [&](int64_t N, int64_t K, std::vector<float>& ref, std::vector<uint16_t>& bits) {
    ref = randn(static_cast<size_t>(N * K), 0.5f);
    bits.resize(ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      bits[i] = f32_to_bf16(ref[i]);
      ref[i] = bf16_to_f32(bits[i]);
    }
  };
  for (bool many : {true, false}) {
    const std::vector<int64_t> Ns = many ? std::vector<int64_t>{2500, 300, 700} : std::vector<int64_t>{90, 33};
    const float xs[3] = {0.75f, -1.5f, -1.5f};
    const int64_t ldx = K + 4;
    const auto xh = randn(static_cast<size_t>(T * ldx));
    auto x = both(xh);
    std::vector<std::vector<float>> wref(Ns.size());
    std::vector<std::vector<uint16_t>> wbits(Ns.size());
    std::vector<Buffer> wdev, ydev;
    const auto v = randn(static_cast<size_t>(Ns[0]));
    const auto bias = randn(static_cast<size_t>(Ns[1]));
    Pair vb = both(v), bb = both(bias);
    cuda::GemvJob job;
    job.nparts = static_cast<int>(Ns.size());
    job.K = K;
    job.x = x.g.data();
    job.ldx = ldx;
    job.T = T;
    Buffer xout(*gpu, static_cast<size_t>(T * K));
    job.x_out = xout.data();
    job.xs_out = xs[Ns.size() - 1];
    for (size_t p = 0; p < Ns.size(); ++p) {
      bf16_matrix(Ns[p], K, wref[p], wbits[p]);
      wdev.emplace_back(*gpu, (wbits[p].size() + 1) / 2);
      gpu->from_host(wdev.back().data(), reinterpret_cast<const float*>(wbits[p].data()), wbits[p].size() / 2);
      ydev.emplace_back(*gpu, static_cast<size_t>(T * Ns[p]));
      job.part[p] = cuda::GemvPart{reinterpret_cast<const uint16_t*>(wdev.back().data()),
                                   p == 1 ? bb.g.data() : nullptr, ydev.back().data(), Ns[p], xs[p],
                                   p == 0 ? vb.g.data() : nullptr};
    }
    gpu->synchronize();
    cuda::gemv_job(job, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    for (size_t p = 0; p < Ns.size(); ++p) {
      std::vector<float> ref(static_cast<size_t>(T * Ns[p]));
      for (int t = 0; t < T; ++t)
        for (int64_t n = 0; n < Ns[p]; ++n) {
          double acc = 0.0;
          for (int64_t k = 0; k < K; ++k)
            acc += double(wref[p][size_t(n * K + k)]) * double(xh[size_t(t * ldx + k)] * xs[p]);
          if (p == 1) acc += bias[size_t(n)];
          if (p == 0) acc *= v[size_t(n)];
          ref[size_t(t * Ns[p] + n)] = static_cast<float>(acc);
        }
      const std::vector<float> got = host(*gpu, ydev[p].data(), ref.size());
      EXPECT_LE(rel(got, ref), tol) << "part " << p << " K=" << K << " T=" << T << " rows " << (many ? "many" : "few");
      if (p == 0 && many) y0 = got;
    }
    std::vector<float> xo_ref(static_cast<size_t>(T * K));
    for (int t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k) xo_ref[size_t(t * K + k)] = xh[size_t(t * ldx + k)] * job.xs_out;
    EXPECT_EQ(rel(host(*gpu, xout.data(), xo_ref.size()), xo_ref), 0.0) << "the scale's output";

    // Gated (gate/up of the same rows) and residual (h += y * sa + other * sb) epilogues.
    const int64_t N = many ? 2400 : 40;
    std::vector<float> gr, ur;
    std::vector<uint16_t> gbits, ubits;
    bf16_matrix(N, K, gr, gbits);
    bf16_matrix(N, K, ur, ubits);
    Buffer gw(*gpu, gbits.size() / 2), uw(*gpu, ubits.size() / 2);
    gpu->from_host(gw.data(), reinterpret_cast<const float*>(gbits.data()), gbits.size() / 2);
    gpu->from_host(uw.data(), reinterpret_cast<const float*>(ubits.data()), ubits.size() / 2);
    Buffer gy(*gpu, size_t(T * N)), uy(*gpu, size_t(T * N)), out(*gpu, size_t(T * N));
    cuda::GemvJob gj;
    gj.nparts = 2;
    gj.K = K;
    gj.x = x.g.data();
    gj.ldx = ldx;
    gj.T = T;
    gj.part[0] = cuda::GemvPart{reinterpret_cast<const uint16_t*>(gw.data()), nullptr, gy.data(), N};
    gj.part[1] = cuda::GemvPart{reinterpret_cast<const uint16_t*>(uw.data()), nullptr, uy.data(), N};
    gj.epi = cuda::GemvJob::kGated;
    gj.gs = 0.8f;
    gj.out = out.data();
    const auto hh = randn(size_t(T * N)), other = randn(size_t(T * N));
    Pair h = both(hh), ot = both(other);
    cuda::GemvJob rj;
    rj.K = K;
    rj.x = x.g.data();
    rj.ldx = ldx;
    rj.T = T;
    Buffer ry(*gpu, size_t(T * N));
    rj.part[0] = cuda::GemvPart{reinterpret_cast<const uint16_t*>(gw.data()), nullptr, ry.data(), N};
    rj.epi = cuda::GemvJob::kResidual;
    rj.h = h.g.data();
    rj.other = ot.g.data();
    rj.y_first = false;
    rj.sa = 0.5f;
    rj.sb = -1.25f;
    cuda::gemv_job(gj, nullptr);
    cuda::gemv_job(rj, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<float> out_ref(size_t(T * N)), h_ref(size_t(T * N));
    for (int t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n) {
        double g = 0.0, u = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          g += double(gr[size_t(n * K + k)]) * xh[size_t(t * ldx + k)];
          u += double(ur[size_t(n * K + k)]) * xh[size_t(t * ldx + k)];
        }
        const size_t i = size_t(t * N + n);
        out_ref[i] = static_cast<float>(u * (g * 0.8) / (1.0 + std::exp(-g * 0.8)));
        h_ref[i] = static_cast<float>(hh[i] + other[i] * 0.5 + g * -1.25);
      }
    EXPECT_LE(rel(host(*gpu, out.data(), out_ref.size()), out_ref), tol) << "gated K=" << K << " T=" << T;
    EXPECT_LE(rel(host(*gpu, h.g.data(), h_ref.size()), h_ref), tol) << "residual K=" << K << " T=" << T;
  }
}

}  // namespace
}  // namespace fh1
