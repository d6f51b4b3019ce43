// The Mamba-2 scan on the GPU against the CPU backend (cuda_ssm.cu): the recurrence, its
// parallel chunks, and the chunked SSD with its fused kernels (mma.sync and wgmma) and the chunk
// states in fp16. Without a GPU every test is SKIPPED (never passed).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda/cuda_op_fixture.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/test_util.h"

namespace fh1 {
namespace {

using CudaOpTest = CudaOpFixture;

TEST_F(CudaOpTest, SsmScanChunkedAndRecurrentAgree) {
  for (const ScanShape& c : {ScanShape{1, 4, 16, 1, 16, 16, 0.0f, INFINITY}, {7, 6, 16, 2, 8, 8, 0.0f, INFINITY},
                             {45, 8, 16, 2, 16, 16, 0.0f, 0.3f}, {130, 24, 64, 1, 128, 128, 0.0f, INFINITY},
                             {1, 24, 64, 1, 128, 128, 0.0f, INFINITY}, {300, 4, 32, 1, 256, 64, 0.0f, INFINITY},
                             {20, 3, 5, 1, 40, 8, 0.0f, INFINITY}}) {
    const ScanInputs in = scan_inputs(c);
    const auto [y, st] = gpu_scan(in);
    EXPECT_LE(rel(y, in.y_ref), 1e-4) << "T=" << c.T << " H=" << c.H << " N=" << c.N;
    EXPECT_LE(rel(st, in.st_ref), 1e-4) << "state, T=" << c.T;
  }
}

// Long prompts: the scan runs in chunks of tokens in parallel (cuda_ssm.cu). Each case runs in
// one pass (1 chunk), with the chunk count the device picks (these few-head shapes leave it room,
// so it must chunk), and with forced counts (odd ones, short last chunks, 4-token chunks), from
// a non-zero state; y and the new state against the reference and against the one pass.
TEST_F(CudaOpTest, SsmScanLongPromptsInParallelChunks) {
  struct ChunksReset {
    ~ChunksReset() {
      cuda::set_scan_chunks(0);
      cuda::set_scan_ssd(cuda::kScanSsdAuto, 0, 0);
    }
  } reset;
  cuda::set_scan_ssd(-1, 0, 0);  // the recurrence alone (the SSD's test is below)
  struct Case { ScanShape shape; std::vector<int> chunks; };
  for (const Case& c : {Case{{1000, 4, 16, 1, 16, 64, 0.0f, INFINITY}, {2, 13, 250}},
                        Case{{3000, 6, 20, 2, 64, 128, 0.001f, 0.05f}, {3, 7}},
                        Case{{4097, 4, 32, 1, 128, 128, 0.0f, INFINITY}, {2, 5}},
                        Case{{2500, 2, 16, 2, 256, 256, 0.5f, INFINITY}, {3, 11}},
                        Case{{1025, 8, 8, 2, 40, 64, 0.0f, 0.1f}, {4, 9}}}) {
    const ScanInputs in = scan_inputs(c.shape);
    const SsmParams pg = scan_params(in, true);
    const int64_t T = c.shape.T;
    std::vector<float> y_one, st_one;  // the one pass
    std::vector<int> runs{1, 0};
    runs.insert(runs.end(), c.chunks.begin(), c.chunks.end());
    for (const int chunks : runs) {
      cuda::set_scan_chunks(chunks);
      if (chunks == 1) EXPECT_EQ(cuda::ssm_scan_scratch_floats(T, pg), 0u);
      else EXPECT_GT(cuda::ssm_scan_scratch_floats(T, pg), 0u) << "chunks=" << chunks << ": not chunked";
      const auto [y_got, st_got] = gpu_scan(in);
      EXPECT_LE(rel(y_got, in.y_ref), 1e-4) << "T=" << T << " H=" << c.shape.H << " N=" << c.shape.N
                                             << " chunks=" << chunks;
      EXPECT_LE(rel(st_got, in.st_ref), 1e-4) << "state, T=" << T << " chunks=" << chunks;
      if (chunks == 1) {
        y_one = y_got;
        st_one = st_got;
      } else {
        EXPECT_LE(rel(y_got, y_one), 1e-4) << "vs one pass, T=" << T << " chunks=" << chunks;
        EXPECT_LE(rel(st_got, st_one), 1e-4) << "state vs one pass, T=" << T << " chunks=" << chunks;
        expect_chunk_starts_groups_agree(in, y_got, st_got,
                                         "T=" + std::to_string(T) + " chunks=" + std::to_string(chunks));
      }
    }
  }
}

// Long prompts as the chunked SSD (batched GEMMs, cuda_ssm.cu): y and the new state from a
// non-zero state against the reference and against the recurrence alone, with whole chunks only
// and with a tail for the recurrence, one window and several, groups, odd sizes, dt limits; the
// products in float32 (within 1e-4: only the order of the sums differs) and in TF32 (the default:
// inputs rounded to 10-bit mantissas; y within 1.5e-2 of rms, 8.1e-3 measured on an H200, the
// state within 5e-3; float32 where a matrix is not 16-byte aligned, as in the cases of pad 3).
// TF32 runs the fused kernels where the shapes fit (the last cases: heads of 64 and 128 columns,
// states of 64 to 256, chunks of 64, 128 and 256 tokens) and the batched GEMMs otherwise; both
// are checked, and the fused ones must have run (their sums differ in order from the GEMMs').
// On a GPU with wgmma, chunks of 128 take the outputs kernel on wgmma and states of N in 128s
// the states kernel on wgmma: checked against the reference beside the mma.sync kernels.
TEST_F(CudaOpTest, SsmScanLongPromptsAsChunkedSsd) {
  struct Reset {
    CudaKernels* g;
    ~Reset() {
      cuda::set_scan_ssd(cuda::kScanSsdAuto, 0, 0);
      cuda::set_scan_ssd_fused(true);
      cuda::set_ssd_wgmma(wgmma);
      cuda::set_ssd_outputs_cols(0);
      g->set_scan_tf32(true);
    }
    int wgmma;
  } reset{gpu.get(), cuda::ssd_wgmma()};
  EXPECT_TRUE(gpu->scan_tf32()) << "TF32 is the default";
  struct Case { ScanShape shape; int chunk; std::vector<int> windows; };
  double worst[2] = {0, 0};
  // Rows of x, B and C 16-byte aligned (pad 0) as a model's are, and off (pad 3).
  for (const Case& c : {Case{{1024, 4, 16, 1, 16, 64, 0.0f, INFINITY, 0}, 0, {0, 1, 3}},
                        Case{{3000, 6, 20, 2, 64, 128, 0.001f, 0.05f, 0}, 0, {0, 5}},
                        Case{{4097, 4, 32, 1, 128, 256, 0.0f, INFINITY, 3}, 0, {0, 2}},
                        Case{{2500, 2, 16, 2, 256, 8, 0.5f, INFINITY, 0}, 0, {0, 7}},
                        Case{{1025, 8, 8, 2, 40, 64, 0.0f, 0.1f, 0}, 0, {0, 4}},
                        Case{{700, 3, 5, 1, 40, 8, 0.0f, INFINITY}, 24, {0, 6}},
                        // 3 heads of 64, 4-token chunks, windows of 2: aligned strides, so cuBLAS
                        // reads 16 bytes at a time, and scratch parts that once put CB 8 bytes off
                        // (a misaligned-address fault in TF32, found by the release_head_dim_128 fixture)
                        Case{{530, 3, 64, 1, 32, 32, 0.0f, INFINITY, 0}, 4, {0, 2}},
                        // The fused kernels' shapes: 2 groups, N 128, a tail of 80 tokens; heads of
                        // 128 (two column blocks), N 64, chunks of 64; chunks of 256, N 256.
                        Case{{2000, 6, 64, 2, 128, 128, 0.0f, INFINITY, 0}, 0, {0, 4}},
                        Case{{1200, 4, 128, 1, 64, 64, 0.001f, 0.1f, 0}, 0, {0, 5}},
                        Case{{1100, 2, 64, 1, 256, 256, 0.0f, INFINITY, 0}, 0, {0, 2}},
                        // Chunks of 128 (the outputs kernel on wgmma where the GPU has it): heads
                        // of 128 with N 256, heads of 64 with N 64 and 3 groups.
                        Case{{1500, 3, 128, 1, 256, 128, 0.0f, INFINITY, 0}, 0, {0, 4}},
                        Case{{1000, 6, 64, 3, 64, 128, 0.001f, 0.1f, 0}, 0, {0, 3}},
                        // 1.5B-Deep's heads of 64 and N 256, and 2 groups of 2 heads of 64: the
                        // outputs two heads a block (cuda_ssd_wgmma_pairs.cuh).
                        Case{{1300, 4, 64, 1, 256, 128, 0.001f, 0.1f, 0}, 0, {0, 3}},
                        Case{{900, 4, 64, 2, 128, 128, 0.0f, INFINITY, 0}, 0, {0, 3}}}) {
    const ScanInputs in = scan_inputs(c.shape);
    cuda::set_scan_ssd(-1, 0, 0);
    const auto [y_rec, st_rec] = gpu_scan(in);
    // The fused kernels' shapes (cuda_ssd_mma.cuh), with the chunk the SSD takes (ssd_chunk_len).
    const int Q = c.chunk > 0 ? c.chunk : c.shape.cs >= 32 && c.shape.cs <= 256 ? c.shape.cs : 128;
    const bool fits =
        c.shape.pad == 0 && c.shape.P % 64 == 0 && c.shape.N % 64 == 0 && (Q == 64 || Q == 128 || Q == 256);
    for (const int mode : {0, 1, 2}) {  // float32 GEMMs, TF32 GEMMs, TF32 fused
      const bool tf32 = mode > 0;
      if (mode == 2 && !fits) continue;
      gpu->set_scan_tf32(tf32);
      cuda::set_scan_ssd_fused(mode == 2);
      const double tol = tf32 ? 1.5e-2 : 1e-4, tol_state = tf32 ? 5e-3 : 1e-4;
      for (const int w : c.windows) {
        cuda::set_scan_ssd(0, w, c.chunk);
        EXPECT_GT(cuda::ssm_scan_scratch_floats(c.shape.T, scan_params(in, true)), 0u) << "T=" << c.shape.T
                                                                                      << ": the SSD not taken";
        const auto [y_got, st_got] = gpu_scan(in);
        const std::string what = "T=" + std::to_string(c.shape.T) + " H=" + std::to_string(c.shape.H) +
                                 " P=" + std::to_string(c.shape.P) + " N=" + std::to_string(c.shape.N) +
                                 " window=" + std::to_string(w) +
                                 (mode == 0 ? " float32" : mode == 1 ? " tf32" : " tf32 fused");
        if (mode == 2) {
          cuda::set_scan_ssd_fused(false);
          const auto [y_gemm, st_gemm] = gpu_scan(in);
          cuda::set_scan_ssd_fused(true);
          EXPECT_NE(y_got, y_gemm) << "the fused kernels did not run, " << what;
          EXPECT_LE(rel(y_got, y_gemm), tol) << "vs the GEMMs, " << what;
          // The kernels just run on wgmma (outputs: chunks of 128; states: N in 128s): against
          // the mma.sync kernels.
          if (reset.wgmma > 0 && (Q == 128 || c.shape.N % 128 == 0)) {
            cuda::set_ssd_wgmma(0);
            const auto [y_mma, st_mma] = gpu_scan(in);
            cuda::set_ssd_wgmma(reset.wgmma);
            // The outputs kernel rounds C exp(cum_t) where mma.sync's rounds C, so its y differs;
            // the states kernel summed the same rounded products in the same order on an H100,
            // and gave the same bits.
            if (Q == 128) {
              EXPECT_NE(y_got, y_mma) << "the wgmma outputs kernel did not run, " << what;
            }
            EXPECT_LE(rel(y_got, y_mma), tol) << "vs the mma.sync kernels, " << what;
            EXPECT_LE(rel(st_got, st_mma), tol_state) << "state vs the mma.sync kernels, " << what;
            const double e_mma[2] = {rel(y_mma, in.y_ref), rel(st_mma, in.st_ref)};
            worst[1] = std::max({worst[1], e_mma[0], e_mma[1]});
            std::printf("  %s: y %.2e, state %.2e with the mma.sync kernels\n", what.c_str(), e_mma[0], e_mma[1]);
            EXPECT_LE(e_mma[0], tol) << "the mma.sync kernels, " << what;
            EXPECT_LE(e_mma[1], tol_state) << "state, the mma.sync kernels, " << what;
          }
          // The outputs kernel on 128 columns a block (the default where it applies: the fp16
          // states, a group's columns in 128s) against the 64-column one: it rounds C and scales
          // its sums by exp(cum_t) where the 64-column one rounds C exp(cum_t), so y differs a
          // little (and so shows which ran); run twice, the same.
          if (reset.wgmma == 1 && cuda::ssd_states16() && Q == 128 && c.shape.N % 128 == 0 && c.shape.N <= 512 &&
              c.shape.H / c.shape.G * c.shape.P % 128 == 0) {
            cuda::set_ssd_outputs_cols(64);
            const auto [y_64, st_64] = gpu_scan(in);
            cuda::set_ssd_outputs_cols(128);
            const auto [y_p, st_p] = gpu_scan(in);
            const auto [y_p2, st_p2] = gpu_scan(in);
            cuda::set_ssd_outputs_cols(0);
            EXPECT_NE(y_p, y_64) << "the 128-column outputs kernel did not run, " << what;
            EXPECT_EQ(y_got, y_p) << "the default is not the 128-column outputs kernel, " << what;
            EXPECT_EQ(y_p2, y_p) << "the 128-column outputs kernel run twice, " << what;
            EXPECT_LE(rel(y_p, y_64), tol) << "the 128-column outputs kernel vs the 64-column one, " << what;
            EXPECT_LE(rel(y_64, in.y_ref), tol) << "the 64-column outputs kernel, " << what;
            EXPECT_EQ(st_p, st_64) << "state, the 128-column outputs kernel, " << what;
            std::printf("  %s: y %.2e with the 64-column outputs kernel\n", what.c_str(), rel(y_64, in.y_ref));
          }
          // The states through memory as fp16 (the default there) against float32.
          if (reset.wgmma == 1 && Q == 128 && c.shape.N % 128 == 0) {
            const bool s16 = cuda::ssd_states16();
            cuda::set_ssd_states16(!s16);
            const auto [y_o, st_o] = gpu_scan(in);
            cuda::set_ssd_states16(s16);
            EXPECT_NE(y_got, y_o) << "the fp16 states made no difference, " << what;
            const double e_o[2] = {rel(y_o, in.y_ref), rel(st_o, in.st_ref)};
            std::printf("  %s: y %.2e, state %.2e with the states in %s\n", what.c_str(), e_o[0], e_o[1],
                        s16 ? "float32" : "fp16");
            EXPECT_LE(e_o[0], tol) << (s16 ? "float32" : "fp16") << " states, " << what;
            EXPECT_LE(e_o[1], tol_state) << (s16 ? "float32" : "fp16") << " states, " << what;
          }
        }
        expect_chunk_starts_groups_agree(in, y_got, st_got, what);
        const double e[4] = {rel(y_got, in.y_ref), rel(st_got, in.st_ref), rel(y_got, y_rec), rel(st_got, st_rec)};
        EXPECT_LE(e[0], tol) << what;
        EXPECT_LE(e[1], tol_state) << "state, " << what;
        EXPECT_LE(e[2], tol) << "vs the recurrence, " << what;
        EXPECT_LE(e[3], tol_state) << "state vs the recurrence, " << what;
        for (const double v : e) worst[tf32] = std::max(worst[tf32], v);
        if (tf32) std::printf("  %s: y %.2e, state %.2e\n", what.c_str(), e[0], e[1]);
      }
    }
  }
  std::printf("chunked SSD max|diff|/rms: float32 %.2e, TF32 %.2e\n", worst[0], worst[1]);
  // TF32 must actually be in use: its rounding shows (float32 products agree far more closely).
  EXPECT_GT(worst[1], 4 * worst[0]);
}

// The chunked SSD is linear in x and in the start state, and every scaling inside it is by a
// power of two (the TF32 and fp16 roundings, the fp16 chunk states' factors), so x and the state
// times 2^k give y and the end state times 2^k: 2^40 lies far outside fp16's range, 2^-40 far
// below its normal numbers. Only values the scaling takes into float32's subnormals may differ
// (decays of e^-50 and less), hence a tolerance and not bit for bit. Both settings of the chunk
// states (fp16 on the wgmma path, float32), on shapes that take the fp16 path where the GPU has
// wgmma (chunks of 128 tokens, N 128 and 256).
TEST_F(CudaOpTest, SsmScanChunkedSsdScalesWithItsInputs) {
  struct Reset {
    ~Reset() {
      cuda::set_scan_ssd(cuda::kScanSsdAuto, 0, 0);
      cuda::set_ssd_states16(s16);
    }
    bool s16 = cuda::ssd_states16();
  } reset;
  cuda::set_scan_ssd(0, 0, 0);
  for (const ScanShape& shape : {ScanShape{1500, 3, 128, 1, 256, 128, 0.0f, INFINITY, 0},
                                 ScanShape{2000, 6, 64, 2, 128, 128, 0.001f, 0.1f, 0}}) {
    ScanInputs in = scan_inputs(shape);
    const std::vector<float> xbc = host(*gpu, in.xbc.g.data(), in.xbc.n), state0 = in.state0;
    for (const bool s16 : {true, false}) {
      cuda::set_ssd_states16(s16);
      gpu->from_host(in.xbc.g.data(), xbc.data(), xbc.size());
      in.state0 = state0;
      const auto [y1, st1] = gpu_scan(in);
      for (const int k : {40, -40}) {
        const float f = std::ldexp(1.0f, k);
        std::vector<float> xs = xbc;
        for (int64_t t = 0; t < shape.T; ++t)
          for (int64_t i = 0; i < in.ds; ++i) xs[static_cast<size_t>(t * in.ld_xbc + i)] *= f;
        gpu->from_host(in.xbc.g.data(), xs.data(), xs.size());
        in.state0 = state0;
        for (float& v : in.state0) v *= f;
        auto [y, st] = gpu_scan(in);
        for (float& v : y) v /= f;
        for (float& v : st) v /= f;
        const std::string what = "T=" + std::to_string(shape.T) + " N=" + std::to_string(shape.N) + " k=" +
                                 std::to_string(k) + (s16 ? " fp16 states" : " float32 states");
        EXPECT_LE(rel(y, y1), 1e-6) << what;
        EXPECT_LE(rel(st, st1), 1e-6) << "state, " << what;
      }
    }
    gpu->from_host(in.xbc.g.data(), xbc.data(), xbc.size());
    in.state0 = state0;
  }
}

}  // namespace
}  // namespace fh1
