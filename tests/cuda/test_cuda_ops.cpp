// Every CUDA op against the CPU backend on random shapes with odd sizes. The inputs are drawn
// fresh for each case; outputs are compared by max|diff| / rms(cpu). Without a GPU every test is
// SKIPPED (never passed).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <tuple>

#include "cuda/cuda_op_fixture.h"
#include "io/safetensors.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/test_util.h"
#include "quant/kv_q8.h"
#include "util/error.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace fh1 {
namespace {

using CudaOpTest = CudaOpFixture;

TEST_F(CudaOpTest, EmbedBf16AndF32Tables) {
  for (DType dt : {DType::BF16, DType::F32}) {
    const int64_t V = 37, d = 75;
    const auto wf = randn(static_cast<size_t>(V * d));
    std::vector<uint8_t> bytes(wf.size() * (dt == DType::F32 ? 4 : 2));
    for (size_t i = 0; i < wf.size(); ++i) {
      if (dt == DType::F32) std::memcpy(&bytes[4 * i], &wf[i], 4);
      else { const uint16_t h = f32_to_bf16(wf[i]); std::memcpy(&bytes[2 * i], &h, 2); }
    }
    TensorView tv{"emb", dt, {V, d}, bytes.data(), bytes.size(), nullptr};
    const WeightView wc = cpu->bind_weight(tv), wg = gpu->bind_weight(tv);
    const std::vector<int32_t> ids = {3, 0, 36, 3, 17};
    auto out = poisoned(ids.size() * d);
    cpu->embed(ids.data(), 5, wc, 1.7f, out.c.data());
    gpu->embed(ids.data(), 5, wg, 1.7f, out.g.data());
    EXPECT_EQ(rel(out), 0.0) << dtype_name(dt);
    const int32_t bad = 37;
    EXPECT_THROW(gpu->embed(&bad, 1, wg, 1.0f, out.g.data()), std::exception);
  }
}

// A prompt's rows take a warp a row where a lane's share fits its registers (up to 3072), the
// others a block a row; in place as the final norm runs.
TEST_F(CudaOpTest, RmsnormOfManyRows) {
  for (auto [T, d] : {std::pair{256, 100}, {300, 1280}, {257, 3072}, {300, 1031}, {260, 4096}}) {
    const size_t n = static_cast<size_t>(T * d);
    auto x = both(randn(n, 3.0f)), w = both(randn(static_cast<size_t>(d))), out = poisoned(n);
    cpu->rmsnorm(x.c.data(), T, d, w.c.data(), 1e-5f, out.c.data());
    gpu->rmsnorm(x.g.data(), T, d, w.g.data(), 1e-5f, out.g.data());
    EXPECT_LE(rel(out), 1e-5) << "T=" << T << " d=" << d;
    cpu->rmsnorm(x.c.data(), T, d, w.c.data(), 1e-5f, x.c.data());
    gpu->rmsnorm(x.g.data(), T, d, w.g.data(), 1e-5f, x.g.data());
    EXPECT_LE(rel(x), 1e-5) << "in place, T=" << T << " d=" << d;
  }
}

// The residual add taken into a prompt's norm (the warp kernel) computes what the two ops compute
// one after the other, bit for bit, with or without the second addend, into the fp16 copy the
// matmuls after it read as well; rows it does not take (T < 256, d % 4 != 0, d > 3072) get the
// two ops. In place (out == h) as the default does it.
TEST_F(CudaOpTest, ResidualRmsnormEqualsTheTwoOps) {
  F16RowsReset reset{gpu.get()};
  for (auto [T, d] : {std::pair{256, 100}, {300, 1280}, {257, 3072}, {300, 1031}, {260, 4096}, {7, 64}}) {
    const size_t n = static_cast<size_t>(T * d);
    const std::vector<float> h0 = randn(n, 3.0f);
    auto a = both(randn(n)), b = both(randn(n)), w = both(randn(static_cast<size_t>(d)));
    std::vector<uint16_t> wh;
    const WeightView wm = bind_random_bf16(40, d, 0.05f, wh);
    for (const bool two : {true, false}) {
      for (const int64_t f16_rows : {int64_t(0), int64_t(256)}) {
        gpu->set_matmul_f16_rows(f16_rows);
        const char* what = two ? " with b" : " without b";
        const float* bg = two ? b.g.data() : nullptr;
        auto h_fused = both(h0), h_ops = both(h0), out_fused = poisoned(n), out_ops = poisoned(n);
        Buffer y_fused(*gpu, size_t(T * 40)), y_ops(*gpu, size_t(T * 40)), room(*gpu, n);
        const Kernels::Projection pf[] = {{&wm, nullptr, y_fused.data()}}, po[] = {{&wm, nullptr, y_ops.data()}};
        gpu->residual_rmsnorm(h_fused.g.data(), a.g.data(), 0.5f, bg, -1.25f, T, d, w.g.data(), 1e-5f,
                              out_fused.g.data());
        gpu->matmul_scaled(out_fused.g.data(), d, T, 0.37f, room.data(), pf, 1);
        if (two) gpu->residual_add2(h_ops.g.data(), a.g.data(), 0.5f, bg, -1.25f, n);
        else gpu->residual_add(h_ops.g.data(), a.g.data(), 0.5f, n);
        gpu->rmsnorm(h_ops.g.data(), T, d, w.g.data(), 1e-5f, out_ops.g.data());
        gpu->matmul_scaled(out_ops.g.data(), d, T, 0.37f, room.data(), po, 1);
        EXPECT_EQ(host(*gpu, h_fused.g.data(), n), host(*gpu, h_ops.g.data(), n)) << "T=" << T << " d=" << d << what;
        EXPECT_EQ(host(*gpu, out_fused.g.data(), n), host(*gpu, out_ops.g.data(), n))
            << "T=" << T << " d=" << d << what;
        EXPECT_EQ(host(*gpu, y_fused.data(), y_fused.size()), host(*gpu, y_ops.data(), y_ops.size()))
            << "T=" << T << " d=" << d << what << " f16 rows " << f16_rows;

        cpu->residual_rmsnorm(h_fused.c.data(), a.c.data(), 0.5f, two ? b.c.data() : nullptr, -1.25f, T, d,
                              w.c.data(), 1e-5f, out_fused.c.data());
        EXPECT_LE(rel(h_fused), 1e-6) << "T=" << T << " d=" << d << what;
        EXPECT_LE(rel(out_fused), 1e-5) << "T=" << T << " d=" << d << what;

        // In place: h becomes its norm.
        auto h_in = both(h0);
        cpu->residual_rmsnorm(h_in.c.data(), a.c.data(), 0.5f, two ? b.c.data() : nullptr, -1.25f, T, d, w.c.data(),
                              1e-5f, h_in.c.data());
        gpu->residual_rmsnorm(h_in.g.data(), a.g.data(), 0.5f, bg, -1.25f, T, d, w.g.data(), 1e-5f, h_in.g.data());
        EXPECT_LE(rel(h_in), 1e-5) << "in place, T=" << T << " d=" << d << what;
      }
    }
  }
}

TEST_F(CudaOpTest, NormsAndElementwise) {
  for (auto [T, d] : {std::pair{1, 7}, {5, 64}, {3, 1031}, {9, 3072}}) {
    const size_t n = static_cast<size_t>(T * d);
    auto x = both(randn(n, 3.0f)), w = both(randn(static_cast<size_t>(d))), out = poisoned(n);
    cpu->rmsnorm(x.c.data(), T, d, w.c.data(), 1e-5f, out.c.data());
    gpu->rmsnorm(x.g.data(), T, d, w.g.data(), 1e-5f, out.g.data());
    EXPECT_LE(rel(out), 1e-5) << "rmsnorm d=" << d;

    auto s = poisoned(n);
    cpu->scale(x.c.data(), n, -0.37f, s.c.data());
    gpu->scale(x.g.data(), n, -0.37f, s.g.data());
    EXPECT_EQ(rel(s), 0.0);

    auto mc = both(randn(n));
    cpu->mul_columns(mc.c.data(), T, d, w.c.data());
    gpu->mul_columns(mc.g.data(), T, d, w.g.data());
    EXPECT_EQ(rel(mc), 0.0);

    auto h = both(randn(n)), a = both(randn(n)), b = both(randn(n));
    cpu->residual_add2(h.c.data(), a.c.data(), 0.5f, b.c.data(), -1.25f, n);
    gpu->residual_add2(h.g.data(), a.g.data(), 0.5f, b.g.data(), -1.25f, n);
    EXPECT_LE(rel(h), 1e-6);
    cpu->residual_add(h.c.data(), a.c.data(), 0.75f, n);
    gpu->residual_add(h.g.data(), a.g.data(), 0.75f, n);
    EXPECT_LE(rel(h), 1e-6);

    auto sm = poisoned(n);
    cpu->silu_mul(a.c.data(), b.c.data(), 0.8f, n, sm.c.data());
    gpu->silu_mul(a.g.data(), b.g.data(), 0.8f, n, sm.g.data());
    EXPECT_LE(rel(sm), 1e-5);
  }
}

TEST_F(CudaOpTest, GateSiluAndGatedRmsnorm) {
  for (auto [T, d, groups] : {std::tuple{1, 48, 1}, {6, 96, 2}, {4, 99, 3}, {3, 3072, 1}}) {
    const int64_t ldz = d + 11;
    auto z = both(randn(static_cast<size_t>(T * ldz), 2.0f));
    const auto yv = randn(static_cast<size_t>(T * d), 2.0f);
    auto y = both(yv);
    cpu->gate_silu(y.c.data(), z.c.data(), ldz, T, d);
    gpu->gate_silu(y.g.data(), z.g.data(), ldz, T, d);
    EXPECT_LE(rel(y), 1e-6);
    auto w = both(randn(static_cast<size_t>(d)));
    for (bool before : {false, true}) {
      auto g = both(yv);
      cpu->gated_rmsnorm(g.c.data(), z.c.data(), ldz, T, d, groups, w.c.data(), 1e-6f, before);
      gpu->gated_rmsnorm(g.g.data(), z.g.data(), ldz, T, d, groups, w.g.data(), 1e-6f, before);
      EXPECT_LE(rel(g), 1e-5) << "d=" << d << " groups=" << groups << " before=" << before;
    }
  }
}

TEST_F(CudaOpTest, RopeAtLargePositions) {
  // From 256 rows a prompt's kernel (one thread a row and i, all heads): the same values, bit for
  // bit, as the kernel of a thread a head (rows one at a time).
  for (auto [T, heads, hd] : {std::tuple{1, 3, 16}, {7, 5, 24}, {33, 2, 128}, {4, 12, 64}, {300, 6, 128},
                              {257, 3, 24}, {1030, 2, 64}}) {
    const int64_t ld = heads * hd + 5;
    std::vector<int64_t> pos(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = (t * 977 + 13) % 300000;
    std::vector<float> inv(static_cast<size_t>(hd / 2));
    for (int i = 0; i < hd / 2; ++i) inv[static_cast<size_t>(i)] = 1.0f / std::pow(1e11f, 2.0f * i / hd);
    const std::vector<float> x0 = randn(static_cast<size_t>(T * ld));
    auto x = both(x0);
    cpu->rope(x.c.data(), ld, T, heads, hd, pos.data(), inv.data());
    gpu->rope(x.g.data(), ld, T, heads, hd, pos.data(), inv.data());
    EXPECT_LE(rel(x), 1e-5) << "hd=" << hd;
    Buffer rows(*gpu, x0.size());
    gpu->from_host(rows.data(), x0.data(), x0.size());
    for (int64_t t = 0; t < T; ++t) gpu->rope(rows.data() + t * ld, ld, 1, heads, hd, pos.data() + t, inv.data());
    EXPECT_EQ(host(*gpu, rows.data(), x0.size()), host(*gpu, x.g.data(), x0.size())) << "T=" << T << " hd=" << hd;
  }
}

TEST_F(CudaOpTest, AttentionPrefillDecodeGqaWithPast) {
  struct Case { int64_t T, n_past; int H, Hkv, hd; };
  const int wgmma_default = cuda::flash_wgmma();
  struct Mode { bool tf32; DType kv; int flash, wgmma = -1; };  // -1: the default block shape
  // float32 kernels, TF32 prefill, fp16 prefill, split bf16 prefill, bf16 decode, fp16 prefill on
  // wgmma, 8-bit decode
  double worst[7] = {0, 0, 0, 0, 0, 0, 0};
  // The fp16 prefill on Hopper's wgmma where the GPU has it (its other block shapes: the next
  // test), and on mma.sync. 8-bit caches: their decode kernel, else widened to bf16.
  const DType B16 = DType::BF16, F32 = DType::F32, Q8 = DType::I8;
  for (const Mode m : {Mode{true, B16, 3}, {true, B16, 3, 0}, {true, B16, 2}, {false, B16, 3}, {true, F32, 3},
                       {false, F32, 3}, {true, Q8, 3}, {true, Q8, 3, 0}}) {
    gpu->set_attention_tf32(m.tf32);
    cuda::set_flash_precision(m.flash);
    cuda::set_flash_wgmma(m.wgmma < 0 ? wgmma_default : m.wgmma);
    ASSERT_TRUE(gpu->set_kv_cache_dtype(m.kv));
    ASSERT_EQ(gpu->kv_cache_dtype(), m.kv);
    for (Case c : {Case{1, 0, 4, 2, 16}, {1, 300, 6, 2, 64}, {3, 5, 5, 1, 24}, {8, 1000, 8, 2, 128},
                   {9, 0, 4, 4, 16}, {50, 7, 6, 2, 24}, {77, 130, 12, 2, 128}, {200, 0, 8, 2, 64},
                   {1, 4000, 12, 2, 128}, {40, 0, 2, 1, 256}, {1, 20000, 16, 2, 64}, {2, 700, 10, 1, 256},
                   {1, 40, 4, 2, 18}, {5, 90, 6, 3, 20}, {130, 70, 4, 2, 40}, {300, 1000, 12, 2, 128},
                   {65, 3, 3, 1, 200}, {513, 0, 4, 1, 128}, {100, 37, 6, 2, 64}, {70, 5, 2, 2, 32},
                   {129, 64, 3, 3, 96}, {64, 0, 2, 1, 8}, {2, 50, 8, 2, 64}, {4, 33, 4, 1, 64},
                   {1, 70000, 12, 2, 128}, {1, 5, 20, 4, 128}, {2100, 3000, 12, 2, 128}}) {
      if (c.T * (c.n_past + c.T) > 4'000'000 && !m.tf32) continue;  // the float32 kernel: long enough
      const int64_t ldq = c.H * c.hd + 7, kvd = c.Hkv * c.hd, rows = c.n_past + c.T;
      // Decode (T <= 8) over bf16 or 8-bit caches with up to 16 rows of query heads x queries per
      // KV head runs on the tensor cores; the 8-bit kernel takes whole 16-byte chunks of a head
      // in blocks of 16 or 32 values (else the caches are widened to bf16 first).
      const bool kv16 = m.kv != F32;
      const bool dec_mma = c.T <= 8 && kv16 && c.hd % 8 == 0 && c.hd <= 128 && (c.H / c.Hkv) * c.T <= 16;
      const int64_t qb = kv_q8_block(kvd);
      const bool q8_dec = dec_mma && m.kv == Q8 && c.hd % 16 == 0 && qb >= 16 && c.hd % qb == 0;
      auto q = both(randn(static_cast<size_t>(c.T * ldq)));
      auto kc = cache_both(randn(static_cast<size_t>(rows * kvd)), kvd, !q8_dec);
      auto vc = cache_both(randn(static_cast<size_t>(rows * kvd)), kvd, !q8_dec);
      auto out = poisoned(static_cast<size_t>(c.T * c.H * c.hd));
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
      cpu->attention(q.c.data(), ldq, c.T, kc.c.data(), vc.c.data(), c.n_past, c.H, c.Hkv, c.hd, scale, out.c.data());
      gpu->attention(q.g.data(), ldq, c.T, kc.g.data(), vc.g.data(), c.n_past, c.H, c.Hkv, c.hd, scale, out.g.data());
      // Prefill (T > 8) on the tensor cores: TF32 (10-bit mantissas in the products) over float32
      // caches, up to ~9e-3 of the output's rms at long T (the rms shrinks as more keys are
      // averaged); over bf16 caches whose head size is a multiple of 8, at most 128, fp16 (Q and
      // the probabilities to 11 bits, K and V exact: up to ~4e-3, half TF32's) or bf16 with Q and
      // the probabilities split in two parts (~5e-5). Every sum float32.
      // Decode on the tensor cores over bf16 caches: the same split (~1e-4); else float32. The
      // 8-bit decode kernel: the fp16 prefill's operands (Q, P and V to 11 bits), against the
      // values the caches hold; other 8-bit shapes against those values rounded to bf16.
      const bool tc = m.tf32 && c.T > 8;
      const bool flash16 = tc && kv16 && c.hd % 8 == 0 && c.hd <= 128;
      const int kind = dec_mma ? 4 : flash16 ? (m.flash == 3 ? 2 : 3) : tc ? 1 : 0;
      const double tol = q8_dec || kind == 2 ? 8e-3 : kind == 4 || kind == 3 ? 5e-4 : kind == 1 ? 1.5e-2 : 1e-4;
      const double err = rel(out);
      const int slot = q8_dec ? 6 : kind == 2 && c.hd > 32 && cuda::flash_wgmma() > 0 ? 5 : kind;
      worst[slot] = std::max(worst[slot], err);
      EXPECT_LE(err, tol) << "T=" << c.T << " n_past=" << c.n_past << " H=" << c.H << " Hkv=" << c.Hkv
                               << " hd=" << c.hd << " tf32=" << m.tf32 << " kv=" << dtype_name(m.kv)
                               << " flash=" << m.flash << " wgmma=" << cuda::flash_wgmma();
    }
  }
  gpu->set_attention_tf32(true);
  cuda::set_flash_precision(3);
  cuda::set_flash_wgmma(wgmma_default);
  ASSERT_TRUE(gpu->set_kv_cache_dtype(DType::BF16));
  std::printf("attention max|diff|/rms: float32 kernels %.2e, TF32 prefill %.2e, fp16 prefill %.2e (on wgmma "
              "%.2e), split bf16 prefill %.2e, bf16 decode %.2e, 8-bit decode %.2e\n",
              worst[0], worst[1], worst[2], worst[5], worst[3], worst[4], worst[6]);
}

// Each block shape of the fp16 prefill on wgmma (FH1_CUDA_FLASH_WGMMA=N) against one float32
// reference per case: rows and keys that end mid-tile, chunks with earlier keys, head sizes
// padded to 64 or 128, query heads that share a KV head in pairs or not.
TEST_F(CudaOpTest, AttentionPrefillWgmmaBlockShapes) {
  if (!cuda::flash_wgmma_available()) GTEST_SKIP() << "this GPU or build has no sm_90a wgmma";
  ASSERT_TRUE(gpu->set_kv_cache_dtype(DType::BF16));
  const int wgmma_default = cuda::flash_wgmma();
  struct Case { int64_t T, n_past; int H, Hkv, hd; };
  const int kVariants = cuda::flash_wgmma_variants();
  std::vector<double> worst(static_cast<size_t>(kVariants + 1));
  for (Case c : {Case{77, 130, 12, 2, 128}, {200, 0, 8, 2, 64}, {130, 70, 4, 2, 40}, {300, 1000, 12, 2, 128},
                 {513, 0, 4, 1, 128}, {100, 37, 6, 2, 64}, {129, 64, 3, 3, 96}, {700, 0, 6, 2, 128},
                 {1000, 17, 8, 1, 128}, {2100, 3000, 12, 2, 128}}) {
    const int64_t ldq = c.H * c.hd + 7, kvd = c.Hkv * c.hd, rows = c.n_past + c.T;
    auto q = both(randn(static_cast<size_t>(c.T * ldq)));
    auto kc = cache_both(randn(static_cast<size_t>(rows * kvd)), kvd);
    auto vc = cache_both(randn(static_cast<size_t>(rows * kvd)), kvd);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
    std::vector<float> ref(static_cast<size_t>(c.T * c.H * c.hd));
    {
      auto out = poisoned(ref.size());
      cpu->attention(q.c.data(), ldq, c.T, kc.c.data(), vc.c.data(), c.n_past, c.H, c.Hkv, c.hd, scale, out.c.data());
      ref = host(*cpu, out.c.data(), ref.size());
    }
    for (int variant = 0; variant <= kVariants; ++variant) {
      cuda::set_flash_wgmma(variant);
      auto out = poisoned(ref.size());
      gpu->attention(q.g.data(), ldq, c.T, kc.g.data(), vc.g.data(), c.n_past, c.H, c.Hkv, c.hd, scale, out.g.data());
      const double err = rel(host(*gpu, out.g.data(), ref.size()), ref);
      worst[size_t(variant)] = std::max(worst[size_t(variant)], err);
      EXPECT_LE(err, 8e-3) << "variant " << variant << " T=" << c.T << " n_past=" << c.n_past << " H=" << c.H
                           << " Hkv=" << c.Hkv << " hd=" << c.hd;
    }
  }
  cuda::set_flash_wgmma(wgmma_default);
  std::printf("fp16 prefill max|diff|/rms by block shape (0: mma.sync):");
  for (int variant = 0; variant <= kVariants; ++variant) std::printf(" %d: %.2e", variant, worst[size_t(variant)]);
  std::printf("\n");
}

// The softmax's exponential on the FMA pipe (shapes 21-23) against exp2 in double: within 4e-6
// of it from 2^-125 to 2^16 (the probabilities' range and beyond), 2^-125 below (-inf included).
TEST_F(CudaOpTest, Exp2OnTheFmaPipeMatchesExp2) {
  std::vector<float> x;
  for (double v = -130.0; v <= 16.0; v += 1.0 / 1024) x.push_back(static_cast<float>(v));
  for (float v : {-INFINITY, -1e30f, -125.5f, -0.5f, 0.5f, -0.0f, 1e-30f, -1e-30f, 0.49999997f, -0.49999997f})
    x.push_back(v);
  auto in = both(x);
  auto out = poisoned(x.size());
  cuda::exp2_fma_values(in.g.data(), out.g.data(), static_cast<int64_t>(x.size()));
  const std::vector<float> y = host(*gpu, out.g.data(), x.size());
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] >= -125.0f) {
      const double want = std::exp2(static_cast<double>(x[i]));
      const double err = std::fabs(y[i] - want) / want;
      worst = std::max(worst, err);
      ASSERT_LE(err, 4e-6) << "x=" << x[i] << " got " << y[i];
    } else {
      ASSERT_EQ(y[i], std::ldexp(1.0f, -125)) << "x=" << x[i];
    }
  }
  std::printf("exp2 on the FMA pipe: max relative error %.2e\n", worst);
}

// The fp16 prefill scales the caches and each query row by powers of two: values far outside
// fp16's range (above 65504, below 6e-5) keep their bits; rows of Q of different sizes too.
TEST_F(CudaOpTest, AttentionPrefillFp16KeepsValuesOutsideItsRange) {
  ASSERT_EQ(cuda::flash_precision(), 3) << "fp16 operands are the default";
  ASSERT_TRUE(gpu->set_kv_cache_dtype(DType::BF16));
  const int wgmma_default = cuda::flash_wgmma();
  for (const int wgmma : {wgmma_default, 0}) {
    cuda::set_flash_wgmma(wgmma);
    EXPECT_EQ(gpu->prefill_attention(), cuda::flash_wgmma() ? "fp16 (scaled, wgmma)" : "fp16 (scaled)");
    struct Case { float q, k, v; };
    for (const Case sc : {Case{1e-5f, 1e5f, 1e-6f}, {1e4f, 1e-4f, 3e6f}, {1.0f, 1.0f, 1e9f}, {3e-7f, 3e6f, 1e-9f}}) {
      const int64_t T = 150, n_past = 90, rows = n_past + T;
      const int H = 6, Hkv = 2, hd = 64;
      const int64_t ldq = H * hd, kvd = Hkv * hd;
      std::vector<float> qv = randn(static_cast<size_t>(T * ldq), sc.q);
      for (int64_t t = 0; t < T; ++t)  // rows 1 .. 1e-3 times the case's size
        for (int64_t j = 0; j < ldq; ++j) qv[static_cast<size_t>(t * ldq + j)] *= std::pow(10.0f, -float(t % 4));
      auto q = both(qv);
      auto kc = cache_both(randn(static_cast<size_t>(rows * kvd), sc.k), kvd);
      auto vc = cache_both(randn(static_cast<size_t>(rows * kvd), sc.v), kvd);
      auto out = poisoned(static_cast<size_t>(T * H * hd));
      const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
      cpu->attention(q.c.data(), ldq, T, kc.c.data(), vc.c.data(), n_past, H, Hkv, hd, scale, out.c.data());
      gpu->attention(q.g.data(), ldq, T, kc.g.data(), vc.g.data(), n_past, H, Hkv, hd, scale, out.g.data());
      const double err = rel(out);
      std::printf("fp16 prefill (%s), q %.0e k %.0e v %.0e: max|diff|/rms %.2e\n",
                  cuda::flash_wgmma() ? "wgmma" : "mma.sync", sc.q, sc.k, sc.v, err);
      EXPECT_LE(err, 8e-3) << "q " << sc.q << " k " << sc.k << " v " << sc.v << " wgmma " << cuda::flash_wgmma();
    }
  }
  cuda::set_flash_wgmma(wgmma_default);
}

// On a Hopper GPU (compute capability 9.0) this build has the sm_90a code of the wgmma prefill,
// and takes it by default.
TEST_F(CudaOpTest, PrefillAttentionOnWgmmaWhereTheGpuHasIt) {
  int dev = 0;
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaGetDeviceProperties(&prop, dev), cudaSuccess);
  const bool hopper = prop.major == 9 && prop.minor == 0;
  EXPECT_EQ(cuda::flash_wgmma_available(), hopper) << prop.name;
  EXPECT_EQ(cuda::flash_wgmma() > 0, hopper);
}

TEST_F(CudaOpTest, KvWriteAppendsRowsInEitherCacheType) {
  EXPECT_EQ(gpu->kv_cache_dtype(), DType::BF16) << "bf16 KV caches are the default";
  for (const DType kv : {DType::BF16, DType::F32, DType::I8}) {
    ASSERT_TRUE(gpu->set_kv_cache_dtype(kv));
    // (4 values a thread where the rows and addresses allow it: 256 x 7, 300 x 64; not {4, 6, 1}'s
    // bf16 rows, 12 bytes in)
    for (auto [rows, width, at] : {std::tuple{1, 256, 7}, {5, 37, 0}, {3, 128, 300}, {2, 33, 3}, {4, 48, 5},
                                   {4, 6, 1}, {300, 64, 2}}) {
      const size_t cap = static_cast<size_t>((at + rows + 4) * width);
      auto cache = cache_both(randn(cap), width);
      std::vector<float> old = cache_host(cache, width);  // the values the GPU holds
      auto src = both(randn(static_cast<size_t>(rows * width)));
      gpu->kv_write(cache.g.data(), at, src.g.data(), rows, width);
      // The new rows as the CPU rounds them: bf16, or quantized (quant/kv_q8.h) and read back.
      std::vector<float> want = old;
      const std::vector<float> sh = host(*gpu, src.g.data(), src.n);
      std::vector<uint8_t> row(static_cast<size_t>(kv_q8_row_bytes(width)));
      for (int64_t r = 0; r < rows; ++r) {
        float* dst = want.data() + (at + r) * width;
        const float* from = sh.data() + r * width;
        if (kv == DType::I8) {
          kv_q8_quantize_row(from, width, row.data());
          kv_q8_dequantize(row.data(), width, 0, width, dst);
        } else {
          for (int64_t i = 0; i < width; ++i) dst[i] = kv == DType::BF16 ? bf16_to_f32(f32_to_bf16(from[i])) : from[i];
        }
      }
      const std::vector<float> got = cache_host(cache, width);
      size_t bad = 0;
      for (size_t i = 0; i < cap; ++i) bad += !(got[i] == want[i]);
      EXPECT_EQ(bad, 0u) << "rows=" << rows << " width=" << width << " kv=" << dtype_name(kv);
    }
  }
  ASSERT_TRUE(gpu->set_kv_cache_dtype(DType::BF16));
}

// The decode step's rope + KV-write launch (the key multiplier folded in, the rotated keys stored
// as computed, the values copied) leaves q, k and both caches bit-identical to the ops one by one.
TEST_F(CudaOpTest, RopeWithKvWritesEqualsOpsOneByOne) {
  for (const cuda::KvType kv16 : {cuda::KvType::BF16, cuda::KvType::F32, cuda::KvType::Q8}) {
    for (auto [n, H, Hkv, hd] : {std::tuple{1, 12, 2, 128}, {3, 6, 2, 64}, {5, 4, 4, 24}}) {
      if (kv16 == cuda::KvType::Q8 && !cuda::rope_kv_q8_ok(hd, int64_t(Hkv) * hd)) continue;
      const int64_t ldq = int64_t(H) * hd + 3, kvd = int64_t(Hkv) * hd, cap_rows = 40;
      const size_t cache_floats = static_cast<size_t>(cap_rows * kvd);  // float32 size: enough for bf16
      std::vector<int64_t> pos(static_cast<size_t>(n)), rows(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        rows[static_cast<size_t>(i)] = (i * 13 + 2) % cap_rows;
        pos[static_cast<size_t>(i)] = 1000 * i + 77;
      }
      std::vector<float> inv(static_cast<size_t>(hd / 2));
      for (int i = 0; i < hd / 2; ++i) inv[static_cast<size_t>(i)] = 1.0f / std::pow(1e11f, 2.0f * i / hd);
      const auto qh = randn(static_cast<size_t>(n * ldq)), kh = randn(static_cast<size_t>(n * kvd)),
                 vh = randn(static_cast<size_t>(n * kvd));
      struct Run {
        Buffer q, k, v;
        std::vector<Buffer> kc, vc;
      };
      auto setup = [&] {
        Run r{Buffer(*gpu, qh.size()), Buffer(*gpu, kh.size()), Buffer(*gpu, vh.size()), {}, {}};
        gpu->from_host(r.q.data(), qh.data(), qh.size());
        gpu->from_host(r.k.data(), kh.data(), kh.size());
        gpu->from_host(r.v.data(), vh.data(), vh.size());
        for (int i = 0; i < n; ++i) {
          r.kc.emplace_back(*gpu, cache_floats);
          r.vc.emplace_back(*gpu, cache_floats);
        }
        return r;
      };
      // Device arrays: positions, inverse frequencies, cache pointers and rows of both runs.
      Run a = setup(), b = setup();
      std::vector<void*> ptrs;
      for (Run* r : {&a, &b}) {
        for (auto& c : r->kc) ptrs.push_back(c.data());
        for (auto& c : r->vc) ptrs.push_back(c.data());
      }
      const size_t bytes = ptrs.size() * sizeof(void*) + 2 * n * sizeof(int64_t) + inv.size() * sizeof(float);
      std::vector<char> packed(bytes);
      std::memcpy(packed.data(), ptrs.data(), ptrs.size() * sizeof(void*));
      char* at = packed.data() + ptrs.size() * sizeof(void*);
      std::memcpy(at, pos.data(), n * sizeof(int64_t));
      std::memcpy(at + n * sizeof(int64_t), rows.data(), n * sizeof(int64_t));
      std::memcpy(at + 2 * n * sizeof(int64_t), inv.data(), inv.size() * sizeof(float));
      char* dev = nullptr;
      ASSERT_EQ(cudaMalloc(&dev, bytes), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(dev, packed.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
      gpu->synchronize();
      auto* dptr = reinterpret_cast<void* const*>(dev);
      const char* dat = dev + ptrs.size() * sizeof(void*);
      const auto* dpos = reinterpret_cast<const int64_t*>(dat);
      const auto* drows = reinterpret_cast<const int64_t*>(dat + n * sizeof(int64_t));
      const auto* dinv = reinterpret_cast<const float*>(dat + 2 * n * sizeof(int64_t));
      const float key_mult = 0.37f;
      auto parts = [&](Run& r, int base) {
        cuda::RopeParts rp;
        rp.part[0] = cuda::RopePart{r.q.data(), ldq, H, false, 1.0f};
        rp.part[1] = cuda::RopePart{r.k.data(), kvd, Hkv, true, key_mult};
        rp.nparts = 2;
        cuda::KvRowsParts kp;
        kp.part[0] = cuda::KvRowsPart{dptr + base, drows, r.k.data(), 1};
        kp.part[1] = cuda::KvRowsPart{dptr + base + n, drows, r.v.data(), -1};
        return std::pair{rp, kp};
      };
      auto [rpa, kpa] = parts(a, 0);
      cuda::rope_parts(rpa, n, hd, dpos, dinv, nullptr);
      cuda::kv_write_rows_parts(kpa, 2, n, kvd, kv16, nullptr);
      auto [rpb, kpb] = parts(b, 2 * n);
      cuda::rope_kv_parts(rpb, n, hd, dpos, dinv, kpb, 2, kvd, kv16, nullptr);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      auto same = [&](const Buffer& x, const Buffer& y, size_t count, const char* what) {
        std::vector<uint32_t> hx(count), hy(count);
        ASSERT_EQ(cudaMemcpy(hx.data(), x.data(), count * 4, cudaMemcpyDeviceToHost), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(hy.data(), y.data(), count * 4, cudaMemcpyDeviceToHost), cudaSuccess);
        EXPECT_EQ(hx, hy) << what << " n=" << n << " hd=" << hd << " kv=" << int(kv16);
      };
      same(a.q, b.q, qh.size(), "q");
      same(a.k, b.k, kh.size(), "k");
      for (int i = 0; i < n; ++i) {
        same(a.kc[static_cast<size_t>(i)], b.kc[static_cast<size_t>(i)], cache_floats, "K cache");
        same(a.vc[static_cast<size_t>(i)], b.vc[static_cast<size_t>(i)], cache_floats, "V cache");
      }
      cudaFree(dev);
    }
  }
}

// The k best of each row selected on the device equal the reference backend's (the rows sorted
// on the host): the same ids in the same order, best first and the lower id first on ties, over
// rows with many equal values, negative values and infinities; k above the device's limit falls
// back to the host. The argmax (k = 1) splits a row over blocks: rows of one block and of many,
// and a case repeated (its counters must be back at zero).
TEST_F(CudaOpTest, TopKRowsEqualTheReference) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (auto [rows, n] : {std::pair{1, 1000}, {3, 65537}, {2, 130049}, {5, 300}, {70, 4099}, {3, 65537}}) {
    std::vector<float> v(static_cast<size_t>(rows * n));
    for (float& x : v) x = std::round(normal(rng) * 8.0f) / 8.0f;  // many ties
    v[7] = INFINITY;
    v[static_cast<size_t>(n) + 3 < v.size() ? static_cast<size_t>(n) + 3 : 1] = -INFINITY;
    auto x = both(v);
    for (int k : {1, 2, 7, 64, 256, 300}) {
      if (k > n) continue;
      const size_t count = static_cast<size_t>(rows * k);
      std::vector<int32_t> gi(count), ci(count);
      std::vector<float> gv(count), cv(count);
      gpu->top_k_rows(x.g.data(), rows, n, k, gi.data(), gv.data());
      cpu->top_k_rows(x.c.data(), rows, n, k, ci.data(), cv.data());
      EXPECT_EQ(gi, ci) << "rows=" << rows << " n=" << n << " k=" << k;
      EXPECT_EQ(gv, cv) << "rows=" << rows << " n=" << n << " k=" << k;
    }
  }
  std::vector<int32_t> ids(1);
  std::vector<float> vals(1);
  auto x = both(std::vector<float>(10, 1.0f));
  EXPECT_THROW(gpu->top_k_rows(x.g.data(), 1, 10, 0, ids.data(), vals.data()), Error);
  EXPECT_THROW(gpu->top_k_rows(x.g.data(), 1, 10, 11, ids.data(), vals.data()), Error);
}

// The softmax sums and draws in vocabulary order of sampling without top-k: against the host's
// softmax_draw (the CPU backend's default softmax_rows), rows skipped at inv_t 0, no draw at u < 0,
// u near 0 and near 1, ties, a vocabulary-sized row.
TEST_F(CudaOpTest, SoftmaxRowsEqualTheReference) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  for (const int64_t n : {int64_t{1}, int64_t{31}, int64_t{1000}, int64_t{4099}, int64_t{131072}}) {
    const int64_t rows = 24;
    std::vector<float> v(static_cast<size_t>(rows * n));
    for (float& x : v) x = std::round(normal(rng) * 4.0f) / 4.0f;
    auto x = both(v);
    std::vector<double> inv_t(static_cast<size_t>(rows)), u(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      const size_t i = static_cast<size_t>(r);
      inv_t[i] = r == 3 ? 0.0 : 1.0 / (0.2 + 0.1 * double(r));
      u[i] = r == 5 ? -1.0 : r == 6 ? 0.0 : r == 7 ? 1.0 - 1e-12 : uni(rng);
    }
    std::vector<double> gs(static_cast<size_t>(rows)), cs(gs.size());
    std::vector<int32_t> gd(gs.size()), cd(gs.size());
    gpu->softmax_rows(x.g.data(), rows, n, inv_t.data(), u.data(), gs.data(), gd.data());
    cpu->softmax_rows(x.c.data(), rows, n, inv_t.data(), u.data(), cs.data(), cd.data());
    for (size_t r = 0; r < gs.size(); ++r) {
      EXPECT_NEAR(gs[r], cs[r], 1e-12 * cs[r]) << "n=" << n << " row " << r;
      EXPECT_EQ(gd[r], cd[r]) << "n=" << n << " row " << r << " u " << u[r];
    }
    EXPECT_EQ(gs[3], 0.0);
    EXPECT_EQ(gd[3], -1);
    EXPECT_EQ(gd[5], -1);
    EXPECT_EQ(gd[6], cd[6]);
  }
}

// Penalties where the logits are: the GPU lowers the same entries as the reference (one launch),
// bit for bit, and returns the values they had.
TEST_F(CudaOpTest, LowerEntriesEqualsTheReference) {
  const int64_t rows = 5, n = 70001;
  auto x = both(randn(static_cast<size_t>(rows * n), 4.0f));
  std::vector<int64_t> index;
  std::vector<float> amount;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < 300; ++j) {
      index.push_back(r * n + (j * 7919 + r * 104729) % n);  // distinct within the call
      amount.push_back(std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng));
    }
  std::vector<float> og(index.size()), oc(index.size());
  gpu->lower_entries(x.g.data(), static_cast<int64_t>(index.size()), index.data(), amount.data(), og.data());
  cpu->lower_entries(x.c.data(), static_cast<int64_t>(index.size()), index.data(), amount.data(), oc.data());
  EXPECT_EQ(og, oc);
  EXPECT_EQ(host(*gpu, x.g.data(), x.n), host(*cpu, x.c.data(), x.n));
  gpu->lower_entries(x.g.data(), 0, nullptr, nullptr, nullptr);  // nothing to lower
}

TEST_F(CudaOpTest, Conv1dSiluContinuesFromState) {
  // Widths of whole float4s take the vector kernels (K = 4: the sliding window, over runs of 16
  // rows with a partial last run and block; K = 3: the per-row one), the others the scalar one.
  for (auto [T, C, K] : {std::tuple{1, 5, 4}, {2, 33, 4}, {3, 130, 4}, {37, 65, 3}, {37, 68, 3}, {45, 264, 4},
                         {300, 1792, 4}, {3, 264, 4}}) {
    const int64_t ld = C % 4 == 0 ? C + 8 : C + 9;
    auto in = both(randn(static_cast<size_t>(T * ld)));
    auto w = both(randn(static_cast<size_t>(C * K), 0.5f)), bias = both(randn(static_cast<size_t>(C)));
    auto st = both(randn(static_cast<size_t>((K - 1) * C)));
    auto out = poisoned(static_cast<size_t>(T * C));
    cpu->conv1d_silu(in.c.data(), ld, T, C, K, w.c.data(), bias.c.data(), st.c.data(), out.c.data());
    gpu->conv1d_silu(in.g.data(), ld, T, C, K, w.g.data(), bias.g.data(), st.g.data(), out.g.data());
    EXPECT_LE(rel(out), 1e-5) << "T=" << T << " C=" << C;
    EXPECT_EQ(rel(st), 0.0) << "state, T=" << T;
    // And once more without bias, continuing from the updated state.
    cpu->conv1d_silu(in.c.data(), ld, T, C, K, w.c.data(), nullptr, st.c.data(), out.c.data());
    gpu->conv1d_silu(in.g.data(), ld, T, C, K, w.g.data(), nullptr, st.g.data(), out.g.data());
    EXPECT_LE(rel(out), 1e-5) << "second call, T=" << T;
    EXPECT_EQ(rel(st), 0.0);
  }
}

// A prompt's branch (branch_begin outside a decode step) runs on a second stream: a host copy
// joins it (the values the branch wrote are there), the ops beside it run on the main stream,
// and an op that throws inside the branch leaves the backend usable (the next host copy joins).
TEST_F(CudaOpTest, PromptBranchIsJoinedByHostCopiesAndAfterAThrow) {
  const size_t n = size_t(1) << 24;  // 64 MB a pass: a copy racing the branch would see stale values
  const auto v = randn(n);
  Buffer a(*gpu, n), b(*gpu, n), c(*gpu, n);
  gpu->from_host(a.data(), v.data(), n);
  const size_t before = gpu->prefill_branches_run();
  gpu->branch_begin(300);
  for (int i = 0; i < 8; ++i) gpu->scale(i ? b.data() : a.data(), n, 2.0f, b.data());  // b = 256 a
  gpu->branch_end();
  gpu->copy(c.data(), a.data(), n);  // beside the branch
  gpu->scale(c.data(), n, 0.5f, c.data());
  gpu->branch_join();
  EXPECT_EQ(gpu->prefill_branches_run() - before, 1u);
  const auto hb = host(*gpu, b.data(), n), hc = host(*gpu, c.data(), n);
  for (size_t i = 0; i < n; i += 4099) {
    ASSERT_EQ(hb[i], v[i] * 256.0f) << i;
    ASSERT_EQ(hc[i], v[i] * 0.5f) << i;
  }
  // One-row calls (decode) keep one stream.
  gpu->branch_begin(1);
  gpu->branch_end();
  gpu->branch_join();
  EXPECT_EQ(gpu->prefill_branches_run() - before, 1u);

  gpu->branch_begin(300);
  for (int i = 0; i < 8; ++i) gpu->scale(i ? b.data() : a.data(), n, 0.5f, b.data());  // b = a / 256
  WeightView unbound;  // float16 weights: this backend binds none, so the matmul throws
  unbound.dtype = DType::F16;
  unbound.data = a.data();
  unbound.rows = unbound.cols = 4;
  EXPECT_ANY_THROW(gpu->matmul(c.data(), 4, 300, unbound, nullptr, c.data()));
  const auto hb2 = host(*gpu, b.data(), n);  // joins the branch left open
  gpu->scale(b.data(), n, 4.0f, c.data());   // the main stream again
  const auto hc2 = host(*gpu, c.data(), n);
  for (size_t i = 0; i < n; i += 4099) {
    ASSERT_EQ(hb2[i], v[i] / 256.0f) << i;
    ASSERT_EQ(hc2[i], v[i] / 64.0f) << i;
  }
  EXPECT_EQ(gpu->prefill_branches_run() - before, 2u);
}

TEST_F(CudaOpTest, MemoryCopyZeroAndReuse) {
  const auto v = randn(1000);
  Buffer a(*gpu, 1000), b(*gpu, 1000);
  gpu->from_host(a.data(), v.data(), 1000);
  gpu->copy(b.data(), a.data(), 1000);
  EXPECT_EQ(rel(host(*gpu, b.data(), 1000), v), 0.0);
  gpu->zero(b.data(), 500);
  const auto z = host(*gpu, b.data(), 1000);
  for (int i = 0; i < 500; ++i) ASSERT_EQ(z[static_cast<size_t>(i)], 0.0f);
  EXPECT_EQ(z[700], v[700]);
  b.reset();
  Buffer c(*gpu, 1000);  // reuses b's memory: must come back zeroed
  const auto zc = host(*gpu, c.data(), 1000);
  for (float f : zc) ASSERT_EQ(f, 0.0f);
}

}  // namespace
}  // namespace fh1
