// The fast CPU backend against the reference backend, op by op, on random shapes: odd sizes
// that leave SIMD tails, strides, shapes that cross the blocking thresholds (one token vs many,
// several weight blocks, several query/key blocks, split-KV decode, several scan chunks).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>

#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "util/half.h"
#include "util/thread_pool.h"
#include "kernels/test_util.h"

namespace fh1 {
namespace {

struct FastVsReference : ::testing::Test {
  ThreadPool pool{2};
  std::unique_ptr<Kernels> fast = make_cpu_kernels(pool);
  std::unique_ptr<Kernels> ref = make_reference_kernels(pool);
  std::mt19937 rng{777};

  std::vector<float> randn(size_t n, float scale = 1.0f) { return test::randn(rng, n, scale); }
  // max |a - b| / rms(b). Both backends compute in float32 but in different orders (vector lanes,
  // fused multiply-adds, a vector exp), so they differ by a few ulps of the largest elements.
  static double rel_diff(const std::vector<float>& a, const std::vector<float>& b) { return test::rel_diff(a, b); }
};

TEST_F(FastVsReference, MatmulDtypesTokenCountsAndBlocking) {
  for (DType dt : {DType::BF16, DType::F32, DType::F16}) {
    for (auto [T, N, K] : {std::tuple{1, 37, 100}, {2, 64, 1024}, {3, 5, 17}, {4, 9, 31}, {7, 130, 257},
                           {13, 1, 64}, {33, 300, 96}, {64, 40, 1100}, {5, 1030, 8}}) {
      const int64_t ldx = K + 5;
      const auto x = randn(static_cast<size_t>(T * ldx));
      const auto bias = randn(static_cast<size_t>(N));
      const auto wf = randn(static_cast<size_t>(N * K), 0.5f);
      std::vector<uint16_t> w16(wf.size());
      for (size_t i = 0; i < wf.size(); ++i)
        w16[i] = dt == DType::BF16 ? f32_to_bf16(wf[i])
                                   : static_cast<uint16_t>((rng() & 0x8000u) | (10u + rng() % 8) << 10 | (rng() & 0x3ffu));
      TensorView tv;
      tv.name = "w";
      tv.dtype = dt;
      tv.shape = {N, K};
      tv.data = dt == DType::F32 ? reinterpret_cast<const uint8_t*>(wf.data()) : reinterpret_cast<const uint8_t*>(w16.data());
      const WeightView Wf = fast->bind_weight(tv), Wr = ref->bind_weight(tv);
      std::vector<float> yf(static_cast<size_t>(T * N)), yr(yf.size());
      for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
        fast->matmul(x.data(), ldx, T, Wf, b, yf.data());
        ref->matmul(x.data(), ldx, T, Wr, b, yr.data());
        EXPECT_LE(rel_diff(yf, yr), 1e-5) << dtype_name(dt) << " T=" << T << " N=" << N << " K=" << K;
      }
    }
  }
}

TEST_F(FastVsReference, NormsAndElementwise) {
  for (auto [T, d, groups] : {std::tuple{1, 7, 1}, {3, 1024, 2}, {40, 513, 3}, {17, 2048, 4}}) {
    const int64_t ldz = d + 3;
    const auto x = randn(static_cast<size_t>(T * d), 2.0f), w = randn(static_cast<size_t>(d)),
               z = randn(static_cast<size_t>(T * ldz));
    std::vector<float> a(x.size()), b(x.size());
    fast->rmsnorm(x.data(), T, d, w.data(), 1e-6f, a.data());
    ref->rmsnorm(x.data(), T, d, w.data(), 1e-6f, b.data());
    EXPECT_LE(rel_diff(a, b), 1e-5) << "rmsnorm d=" << d;
    const int64_t dg = d / groups * groups;
    for (bool before : {true, false}) {
      a.assign(x.begin(), x.begin() + T * dg);
      b = a;
      fast->gated_rmsnorm(a.data(), z.data(), ldz, T, dg, groups, w.data(), 1e-6f, before);
      ref->gated_rmsnorm(b.data(), z.data(), ldz, T, dg, groups, w.data(), 1e-6f, before);
      EXPECT_LE(rel_diff(a, b), 1e-5) << "gated_rmsnorm d=" << dg << " before=" << before;
    }
    a = x;
    b = x;
    fast->gate_silu(a.data(), z.data(), ldz, T, d);
    ref->gate_silu(b.data(), z.data(), ldz, T, d);
    EXPECT_LE(rel_diff(a, b), 1e-5) << "gate_silu";
    a = x;
    b = x;
    fast->mul_columns(a.data(), T, d, w.data());
    ref->mul_columns(b.data(), T, d, w.data());
    EXPECT_EQ(a, b) << "mul_columns";
  }
  for (size_t n : {size_t{1}, size_t{15}, size_t{100}, size_t{70001}}) {
    const auto a = randn(n), b = randn(n), h0 = randn(n);
    std::vector<float> hf = h0, hr = h0;
    fast->residual_add2(hf.data(), a.data(), 0.7f, b.data(), 1.3f, n);
    ref->residual_add2(hr.data(), a.data(), 0.7f, b.data(), 1.3f, n);
    EXPECT_LE(rel_diff(hf, hr), 2e-6);
    fast->residual_add(hf.data(), a.data(), 0.3f, n);
    ref->residual_add(hr.data(), a.data(), 0.3f, n);
    EXPECT_LE(rel_diff(hf, hr), 2e-6);
    fast->scale(a.data(), n, 1.7f, hf.data());
    ref->scale(a.data(), n, 1.7f, hr.data());
    EXPECT_EQ(hf, hr);
    fast->silu_mul(a.data(), b.data(), 0.9f, n, hf.data());
    ref->silu_mul(a.data(), b.data(), 0.9f, n, hr.data());
    EXPECT_LE(rel_diff(hf, hr), 1e-5) << "silu_mul n=" << n;
  }
}

TEST_F(FastVsReference, AttentionPrefillDecodeAndSplitKv) {
  // (H, Hkv, hd, n_past, T): prefill in several query blocks, decode, decode over a long
  // context with few heads (split over keys), odd head dims.
  for (auto [H, Hkv, hd, n_past, T] : {std::tuple{8, 2, 64, 0, 70}, {6, 3, 9, 5, 4}, {4, 2, 64, 300, 1},
                                       {2, 1, 64, 1500, 1}, {1, 1, 33, 2000, 3}, {3, 1, 128, 130, 40}}) {
    const int rows = n_past + T, ldq = H * hd + 7;
    const auto q = randn(static_cast<size_t>(T * ldq)), kc = randn(static_cast<size_t>(rows * Hkv * hd)),
               vc = randn(static_cast<size_t>(rows * Hkv * hd));
    std::vector<float> a(static_cast<size_t>(T * H * hd)), b(a.size());
    const float scale = 1.0f / std::sqrt(float(hd));
    fast->attention(q.data(), ldq, T, kc.data(), vc.data(), n_past, H, Hkv, hd, scale, a.data());
    ref->attention(q.data(), ldq, T, kc.data(), vc.data(), n_past, H, Hkv, hd, scale, b.data());
    EXPECT_LE(rel_diff(a, b), 1e-5) << "H=" << H << " Hkv=" << Hkv << " hd=" << hd << " n_past=" << n_past << " T=" << T;
  }
}

// KV caches kept in bf16 (opt-in): written by the fast backend's kv_write (rounded), read back
// widened; the reference attends over the same rounded values in float32.
TEST_F(FastVsReference, AttentionOverBf16KvCaches) {
  ASSERT_EQ(fast->kv_cache_dtype(), DType::F32) << "float32 is the default";
  ASSERT_TRUE(fast->set_kv_cache_dtype(DType::BF16));
  ASSERT_EQ(fast->kv_cache_dtype(), DType::BF16);
  EXPECT_FALSE(ref->set_kv_cache_dtype(DType::BF16)) << "the reference keeps float32 only";
  EXPECT_FALSE(fast->set_kv_cache_dtype(DType::F16));
  for (auto [H, Hkv, hd, n_past, T] : {std::tuple{8, 2, 64, 0, 70}, {6, 3, 9, 5, 4}, {4, 2, 64, 300, 1},
                                       {2, 1, 64, 1500, 1}, {1, 1, 33, 2000, 3}, {3, 1, 128, 130, 40},
                                       {5, 1, 7, 11, 17}}) {
    const int rows = n_past + T, ldq = H * hd + 7;
    const size_t n = static_cast<size_t>(rows * Hkv * hd);
    const auto q = randn(static_cast<size_t>(T * ldq));
    auto kc = randn(n), vc = randn(n);
    // The fast backend's caches: written in two calls (a context, then the new rows).
    std::vector<float> k16(fast->kv_cache_floats(rows, static_cast<int64_t>(Hkv) * hd) + 1, NAN), v16(k16.size(), NAN);
    const int64_t width = static_cast<int64_t>(Hkv) * hd;
    for (auto [src, dst] : {std::pair{&kc, &k16}, {&vc, &v16}}) {
      fast->kv_write(dst->data(), 0, src->data(), n_past, width);
      fast->kv_write(dst->data(), n_past, src->data() + n_past * width, T, width);
      for (float& x : *src) x = bf16_to_f32(f32_to_bf16(x));  // what the reference attends over
    }
    std::vector<float> a(static_cast<size_t>(T * H * hd)), b(a.size());
    const float scale = 1.0f / std::sqrt(float(hd));
    fast->attention(q.data(), ldq, T, k16.data(), v16.data(), n_past, H, Hkv, hd, scale, a.data());
    ref->attention(q.data(), ldq, T, kc.data(), vc.data(), n_past, H, Hkv, hd, scale, b.data());
    EXPECT_LE(rel_diff(a, b), 1e-5) << "H=" << H << " Hkv=" << Hkv << " hd=" << hd << " n_past=" << n_past << " T=" << T;
  }
  ASSERT_TRUE(fast->set_kv_cache_dtype(DType::F32));
}

// KV caches of 8 bits (opt-in, quant/kv_q8.h): written by the fast backend's kv_write, read back
// dequantized; the reference attends over the same dequantized values in float32.
TEST_F(FastVsReference, AttentionOverQ8KvCaches) {
  ASSERT_TRUE(fast->set_kv_cache_dtype(DType::I8));
  ASSERT_EQ(fast->kv_cache_dtype(), DType::I8);
  EXPECT_FALSE(ref->set_kv_cache_dtype(DType::I8)) << "the reference keeps float32 only";
  for (auto [H, Hkv, hd, n_past, T] : {std::tuple{8, 2, 64, 0, 70}, {6, 3, 9, 5, 4}, {4, 2, 64, 300, 1},
                                       {2, 1, 64, 1500, 1}, {1, 1, 33, 2000, 3}, {3, 1, 128, 130, 40},
                                       {12, 2, 128, 700, 1}, {5, 1, 7, 11, 17}}) {
    const int rows = n_past + T, ldq = H * hd + 7;
    const int64_t width = static_cast<int64_t>(Hkv) * hd;
    const size_t n = static_cast<size_t>(rows * width);
    const auto q = randn(static_cast<size_t>(T * ldq));
    auto kc = randn(n), vc = randn(n);
    std::vector<float> k8(fast->kv_cache_floats(rows, width) + 1, NAN), v8(k8.size(), NAN);
    ASSERT_EQ(k8.size() - 1, static_cast<size_t>(rows * kv_q8_row_bytes(width) / 4));
    for (auto [src, dst] : {std::pair{&kc, &k8}, {&vc, &v8}}) {
      fast->kv_write(dst->data(), 0, src->data(), n_past, width);
      fast->kv_write(dst->data(), n_past, src->data() + n_past * width, T, width);
      EXPECT_TRUE(std::isnan(dst->back())) << "kv_write wrote past the cache";
      for (int r = 0; r < rows; ++r)  // what the reference attends over
        kv_q8_dequantize(reinterpret_cast<const uint8_t*>(dst->data()) + r * kv_q8_row_bytes(width), width, 0,
                         width, src->data() + r * width);
    }
    std::vector<float> a(static_cast<size_t>(T * H * hd)), b(a.size());
    const float scale = 1.0f / std::sqrt(float(hd));
    fast->attention(q.data(), ldq, T, k8.data(), v8.data(), n_past, H, Hkv, hd, scale, a.data());
    ref->attention(q.data(), ldq, T, kc.data(), vc.data(), n_past, H, Hkv, hd, scale, b.data());
    EXPECT_LE(rel_diff(a, b), 1e-5) << "H=" << H << " Hkv=" << Hkv << " hd=" << hd << " n_past=" << n_past << " T=" << T;
  }
  ASSERT_TRUE(fast->set_kv_cache_dtype(DType::F32));
}

TEST_F(FastVsReference, Conv1dShortAndLongCalls) {
  for (auto [C, K, T1, T2] : {std::tuple{37, 4, 1, 1}, {2304, 4, 2, 100}, {19, 3, 70, 1}, {48, 4, 5, 2}}) {
    const int64_t ld = C + 9;
    const auto in = randn(static_cast<size_t>((T1 + T2) * ld)), w = randn(static_cast<size_t>(C * K)),
               bias = randn(static_cast<size_t>(C));
    std::vector<float> sf = randn(static_cast<size_t>((K - 1) * C)), sr = sf;
    for (auto [t0, T] : {std::pair{0, T1}, {T1, T2}}) {
      std::vector<float> of(static_cast<size_t>(T * C)), orf(of.size());
      fast->conv1d_silu(in.data() + t0 * ld, ld, T, C, K, w.data(), bias.data(), sf.data(), of.data());
      ref->conv1d_silu(in.data() + t0 * ld, ld, T, C, K, w.data(), bias.data(), sr.data(), orf.data());
      EXPECT_LE(rel_diff(of, orf), 1e-5) << "C=" << C << " T=" << T;
      EXPECT_EQ(sf, sr) << "conv state, C=" << C << " T=" << T;
    }
  }
}

TEST_F(FastVsReference, SsmScanChunksGroupsAndSteps) {
  // (H, P, G, N, chunk, T): several chunks with a remainder, groups, odd P and N, one-step decode.
  for (auto [H, P, G, N, cs, T] : {std::tuple{6, 7, 2, 19, 16, 50}, {24, 64, 1, 128, 128, 300}, {4, 16, 4, 8, 8, 8},
                                   {3, 5, 1, 33, 32, 1}, {8, 64, 2, 128, 64, 1}}) {
    const int64_t ld = H * P + 2 * G * N + 5, ld_dt = H + 2;
    const auto xbc = randn(static_cast<size_t>(T * ld)), dt_raw = randn(static_cast<size_t>(T * ld_dt)),
               A_log = randn(static_cast<size_t>(H), 0.5f), Dv = randn(static_cast<size_t>(H)),
               dt_bias = randn(static_cast<size_t>(H));
    std::vector<float> A(static_cast<size_t>(H));
    for (int h = 0; h < H; ++h) A[h] = -std::exp(A_log[h]);
    const SsmParams p{H, P, G, N, cs, A.data(), Dv.data(), dt_bias.data(), 0.001f, 5.0f};
    std::vector<float> sf = randn(static_cast<size_t>(H * P * N), 0.3f), sr = sf;
    std::vector<float> yf(static_cast<size_t>(T * H * P)), yr(yf.size());
    fast->ssm_scan(xbc.data(), xbc.data() + H * P, xbc.data() + H * P + G * N, ld, dt_raw.data(), ld_dt, T, p, sf.data(),
                   yf.data());
    ref->ssm_scan(xbc.data(), xbc.data() + H * P, xbc.data() + H * P + G * N, ld, dt_raw.data(), ld_dt, T, p, sr.data(),
                  yr.data());
    EXPECT_LE(rel_diff(yf, yr), 1e-5) << "H=" << H << " P=" << P << " N=" << N << " T=" << T;
    EXPECT_LE(rel_diff(sf, sr), 1e-5) << "state, H=" << H << " P=" << P << " N=" << N << " T=" << T;
  }
}

}  // namespace
}  // namespace fh1
