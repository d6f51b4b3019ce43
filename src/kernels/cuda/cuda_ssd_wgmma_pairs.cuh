// The SSD's outputs on wgmma for 128 columns of x a block (internal to cuda_ssm.cu; the kernel of
// cuda_ssd_wgmma.cuh takes 64): two column blocks of 64, two heads of 64 or the two halves of a
// head of 128, all of one group, so that they share C's and CB's tiles. Per chunk of 128 tokens
// and column block k (head h_k):
//   Y_k^T (64 p x 128 t) = (S_k C^T) diag(exp(cum_t)) + X_k^T M_k^T,  M_k = CB o decay_k o dt_k,
// warpgroup k computing its column block's over all 128 tokens in two 64-token halves. Unlike
// the 64-column kernel, C is rounded as it came and exp(cum_t) is taken in the accumulators after
// the S C^T steps (C is the same for every head; C exp(cum_t) was not), so one C tile a step
// serves both warpgroups, and one CB tile both M's (one M where the two blocks are of one head).
// Per block and chunk this reads C and CB once for two column blocks: 304 KB from L2 where two
// 64-column blocks read ~480 KB. The chunk states come as fp16 with their row factors
// (ssd_states16_fits); the float32 states take the 64-column kernel.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "kernels/cuda/cuda_ssd_wgmma.cuh"

namespace fh1::cuda {
namespace {

// A stage: room 0 (C, then M_0 as CB is made M in place) 16 KB; room 1 (S_0 and S_1 widened,
// 8 KB each, then M_1) 16 KB; room 2 (S_0's and S_1's fp16 tiles as copied, 4 KB each, then x_0
// and x_1 [32 s][72] as copied, 9 KB each) 18 KB. All rows 128-byte swizzled where wgmma reads
// them, so rooms 0 and 1 and S_1's widened tile start on 1024 bytes.
constexpr int kSsdPrRoom = kSsdWgQ * 128;                               // [128 rows][32 floats]
constexpr int kSsdPrXBytes = kSsdTile * kSsdXLd * 4;                    // x [32 s][72]: 9,216
constexpr int kSsdPrStage = 2 * kSsdPrRoom + 2 * kSsdPrXBytes;          // 51,200
static_assert(kSsdPrStage % 1024 == 0, "stages keep the 128-byte swizzle's 1024-byte alignment");
static_assert(2 * 64 * 64 <= 2 * kSsdPrXBytes, "the fp16 S tiles fit room 2");
constexpr int kSsdPrOutLd = kSsdCols + 4;  // the outputs staged [2 blocks][128 t][68] (conflict-free)
static_assert(2 * kSsdPrStage >= 2 * kSsdWgQ * kSsdPrOutLd * 4, "the staged outputs fit two stages");

inline size_t ssd_outputs_pairs_smem(int ST) {
  return 1024 + size_t(ST) * kSsdPrStage + 2 * size_t(kSsdWgQ) * (sizeof(double) + 2 * sizeof(float)) +
         2 * 64 * kSsdWgMaxNBlocks * sizeof(float);
}

// Block (128-column block blockIdx.x, chunk blockIdx.y), 256 threads. Steps j < K1 = N / 32: C's
// and S's state entries 32 j..; then step K1 + k: the tokens s = 32 k.. of CB and x. ST stages,
// loads issued ST - 1 steps ahead; each step one barrier.
template <int ST, int MB>
__global__ void __launch_bounds__(256, MB) ssd_outputs_pairs_kernel(SsdShape d, const float* __restrict__ x,
                                                                  const float* __restrict__ C,
                                                                  const float* __restrict__ CB,
                                                                  const __half* __restrict__ S,
                                                                  const float* __restrict__ Ssc,
                                                                  const float* __restrict__ dtv,
                                                                  const double* __restrict__ cum,
                                                                  const float* __restrict__ ecum,
                                                                  const float* __restrict__ D_, float* __restrict__ y) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(ST >= 2, "the epilogue stages the outputs in two stages' room");
  constexpr int Q = kSsdWgQ;
  extern __shared__ float4 ssd_smem4[];
  unsigned char* raw = reinterpret_cast<unsigned char*>(ssd_smem4);
  unsigned char* base = raw + ((1024u - (smem_addr(raw) & 1023u)) & 1023u);
  double* cums = reinterpret_cast<double*>(base + ST * kSsdPrStage);  // [2][Q]
  float* dts = reinterpret_cast<float*>(cums + 2 * Q);                 // [2][Q]
  float* ecs = dts + 2 * Q;                                            // [2][Q]
  float* ssc = ecs + 2 * Q;                                            // S's factors [128 rows][N / 128]
  const int c = blockIdx.y, j0 = blockIdx.x * 128, nbs = d.N / 128;
  const int h0 = j0 / d.P, h1 = (j0 + 64) / d.P, g = h0 / (d.H / d.G);
  const bool one_head = h0 == h1;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, wi = warp & 3;
  const int gq = lane >> 2, cq = lane & 3;
  const int64_t tok = int64_t(c) * Q, row0 = int64_t(c) * d.H * d.P + j0;  // S's first row (chunk, column)
  const float* Cb = C + tok * d.ld_xbc + int64_t(g) * d.N;
  const float* CBb = CB + (int64_t(c) * d.G + g) * Q * Q;
  const float* xb = x + tok * d.ld_xbc + j0;
  FH1_PDL_ENTER();
  for (int i = tid; i < 2 * Q; i += 256) {
    const int64_t b = int64_t(c) * d.H + (i < Q ? h0 : h1);
    const int t = i & (Q - 1);
    cums[i] = cum[b * Q + t];
    dts[i] = dtv[b * Q + t];
    ecs[i] = ecum[b * Q + t];
  }
  for (int i = tid; i < 128 * nbs; i += 256) ssc[i] = Ssc[row0 * nbs + i];
  __syncthreads();  // the first step's widening of S reads ssc
  const int K1 = d.N / kSsdTile, KT = K1 + Q / kSsdTile;
  const auto room = [&](int buf, int r) { return base + buf * kSsdPrStage + r * kSsdPrRoom; };
  // Thread tid copies 16-byte chunks tid + 256 k of each tile: C or CB (128 rows of 8 chunks:
  // k < 4), and chunk tid of S_0 and of S_1 in fp16 (64 rows of 4 chunks); x_0 and x_1 (32 rows
  // of 16 each: k < 4). It prepares (below) only what it copied itself, before the step's barrier:
  // its own copies are the ones its wait covers. CB's rows t < 64 of the last two token tiles
  // are past the diagonal.
  // The thread's index is made opaque to the compiler in the loads and preparations, so that the
  // copies' addresses are made afresh each step rather than kept (with 64 accumulators, they
  // spilled in the end states' kernel of 128 columns).
  const auto load = [&](int j, int buf) {
    int t = tid;
    asm volatile("" : "+r"(t));
    unsigned char* R0 = room(buf, 0);
    unsigned char* R2 = room(buf, 2);
    if (j < K1) {
      const int n0 = j * kSsdTile;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int i = t + 256 * k, r = i >> 3, q = i & 7;
        cp_async16(R0 + sw128_at(r, q), Cb + int64_t(r) * d.ld_xbc + n0 + 4 * q, true);
      }
#pragma unroll
      for (int k = 0; k < 2; ++k) {  // S_k: rows j0 + 64 k + r of the chunk's S
        const int r = t >> 2, q = t & 3;
        cp_async16(R2 + k * 4096 + r * 64 + 16 * q, S + (row0 + 64 * k + r) * d.N + n0 + 8 * q, true);
      }
    } else {
      const int s0 = (j - K1) * kSsdTile;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int i = t + 256 * k, r = i >> 3, q = i & 7;
        if (s0 < 64 || r >= 64) cp_async16(R0 + sw128_at(r, q), CBb + r * Q + s0 + 4 * q, true);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int i = t + 256 * (k & 1), r = i >> 4, q = i & 15, blk = k >> 1;
        cp_async16(R2 + blk * kSsdPrXBytes + (r * kSsdXLd + 4 * q) * 4,
                   xb + int64_t(s0 + r) * d.ld_xbc + 64 * blk + 4 * q, true);
      }
    }
    cp_async_commit();
  };
  // This thread's chunks of tile j, landed: C rounded to TF32 and S_0, S_1 widened (times their
  // factors) and rounded, or CB made M_0 (and M_1 where the blocks are of two heads).
  const auto prepare = [&](int j, int buf) {
    int t = tid;
    asm volatile("" : "+r"(t));
    unsigned char* R0 = room(buf, 0);
    unsigned char* R1 = room(buf, 1);
    const unsigned char* R2 = room(buf, 2);
    if (j < K1) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int i = t + 256 * k, r = i >> 3, q = i & 7;
        float4* v = reinterpret_cast<float4*>(R0 + sw128_at(r, q));
        const float4 cv = *v;
        *v = make_float4(__uint_as_float(to_tf32(cv.x)), __uint_as_float(to_tf32(cv.y)),
                         __uint_as_float(to_tf32(cv.z)), __uint_as_float(to_tf32(cv.w)));
      }
#pragma unroll
      for (int blk = 0; blk < 2; ++blk) {  // S_blk's [64 p][32 n]: the 8 values this thread copied
        const int r = t >> 2, q = t & 3;
        const uint4 packed = *reinterpret_cast<const uint4*>(R2 + blk * 4096 + r * 64 + 16 * q);
        const float f = ssc[(64 * blk + r) * nbs + (j >> 2)];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float4 v = f16x4_to_float4(h ? make_uint2(packed.z, packed.w) : make_uint2(packed.x, packed.y));
          *reinterpret_cast<float4*>(R1 + blk * 8192 + sw128_at(r, 2 * q + h)) =
              make_float4(__uint_as_float(to_tf32(v.x * f)), __uint_as_float(to_tf32(v.y * f)),
                          __uint_as_float(to_tf32(v.z * f)), __uint_as_float(to_tf32(v.w * f)));
        }
      }
    } else {
      const int s0 = (j - K1) * kSsdTile;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int i = t + 256 * k, tt = i >> 3, q = i & 7;
        if (s0 >= 64 && tt < 64) continue;
        float4* v = reinterpret_cast<float4*>(R0 + sw128_at(tt, q));
        const int s = s0 + 4 * q;
        float m0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, m1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (s <= tt) {  // else the whole chunk is past the diagonal
          const float4 cb = *v;
          const float in[4] = {cb.x, cb.y, cb.z, cb.w};
          // As the 64-column kernel: select past the diagonal (the exponent may overflow there),
          // the hardware's exp2, rounded to TF32 right after.
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (s + e > tt) continue;
            m0[e] = __uint_as_float(to_tf32(in[e] * __expf(float(cums[tt] - cums[s + e])) * dts[s + e]));
            if (!one_head)
              m1[e] = __uint_as_float(to_tf32(in[e] * __expf(float(cums[Q + tt] - cums[Q + s + e])) * dts[Q + s + e]));
          }
        }
        *v = make_float4(m0[0], m0[1], m0[2], m0[3]);
        if (!one_head) *reinterpret_cast<float4*>(R1 + sw128_at(tt, q)) = make_float4(m1[0], m1[1], m1[2], m1[3]);
      }
    }
    fence_proxy_async();  // these stores (and the copies) seen by the tensor cores, after the barrier
  };

  // Warpgroup wg: column block wg, tokens 0..63 (lo) and 64..127 (hi).
  float lo[8][4], hi[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) lo[i][e] = hi[i][e] = 0.0f;
  ssd_first_tiles<ST>(KT, load);
  for (int j = 0; j < KT; ++j) {
    const int buf = j % ST;
    cp_async_wait<ST - 2>();
    prepare(j, buf);
    __syncthreads();
    if (j + ST - 1 < KT) load(j + ST - 1, (j + ST - 1) % ST);
    else cp_async_commit();
    if (j < K1) {
      const uint32_t a = smem_addr(room(buf, 1)) + uint32_t(wg) * 8192, b = smem_addr(room(buf, 0));
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        wgmma_ss_tf32_n64(lo, sw128_desc(a + 32 * kk, 16, 1024), sw128_desc(b + 32 * kk, 16, 1024));
        wgmma_ss_tf32_n64(hi, sw128_desc(a + 32 * kk, 16, 1024), sw128_desc(b + 64 * 128 + 32 * kk, 16, 1024));
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(lo);
      fence_regs(hi);
      if (j == K1 - 1) {  // S C^T done: times exp(cum_t), t = 8 nb + 2 cq + e (+ 64)
        const float* ec = ecs + wg * Q;
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float fl = ec[8 * nb + 2 * cq + e], fh = ec[64 + 8 * nb + 2 * cq + e];
            lo[nb][e] *= fl;
            lo[nb][2 + e] *= fl;
            hi[nb][e] *= fh;
            hi[nb][2 + e] *= fh;
          }
      }
    } else {
      const int kt = j - K1;
      const float* X = reinterpret_cast<const float*>(room(buf, 2) + wg * kSsdPrXBytes);
      uint32_t af[4][4];
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {  // X^T's fragment: rows p = 16 wi + gq (+8), columns s = 8 kk + cq (+4)
        const float* xr = X + (8 * kk + cq) * kSsdXLd + 16 * wi + gq;
        af[kk][0] = to_tf32(xr[0]);
        af[kk][1] = to_tf32(xr[8]);
        af[kk][2] = to_tf32(xr[4 * kSsdXLd]);
        af[kk][3] = to_tf32(xr[4 * kSsdXLd + 8]);
      }
      const uint32_t m = smem_addr(room(buf, wg == 1 && !one_head ? 1 : 0));
      // Two straight paths, each to its wait (kt is the block's): a wgmma under a condition of
      // its own, or paths joined before the wait, made ptxas insert waits on the accumulators
      // between the products (its warning C7519).
      if (kt < 2) {
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          wgmma_rs_tf32_n64(lo, af[kk], sw128_desc(m + 32 * kk, 16, 1024));
          wgmma_rs_tf32_n64(hi, af[kk], sw128_desc(m + 64 * 128 + 32 * kk, 16, 1024));
        }
        wgmma_commit();
        wgmma_wait<0>();
      } else {
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wgmma_rs_tf32_n64(hi, af[kk], sw128_desc(m + 64 * 128 + 32 * kk, 16, 1024));
        wgmma_commit();
        wgmma_wait<0>();
      }
      fence_regs(lo);
      fence_regs(hi);
    }
  }
  // lo/hi[nb][2 half + e]: column p = 16 wi + gq + 8 half of block wg, token t = 8 nb + 2 cq + e
  // (+ 64). Staged [block][t][p] in the stages' room, then y = acc + D x a token row of 128
  // columns at a time, 16 bytes a thread.
  __syncthreads();  // every warp past its last wgmma and fragment reads of the stages
  float* st = reinterpret_cast<float*>(base) + wg * Q * kSsdPrOutLd;
#pragma unroll
  for (int nb = 0; nb < 8; ++nb)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int p = 16 * wi + gq + 8 * half, t = 8 * nb + 2 * cq + e;
        st[t * kSsdPrOutLd + p] = lo[nb][2 * half + e];
        st[(64 + t) * kSsdPrOutLd + p] = hi[nb][2 * half + e];
      }
  __syncthreads();
  const float* st0 = reinterpret_cast<const float*>(base);
  const float D0 = D_[h0], D1 = D_[h1];
#pragma unroll 2
  for (int k = 0; k < Q * 128 / 4 / 256; ++k) {
    const int i = tid + 256 * k, t = i >> 5, q = i & 31, blk = q >> 4;
    const float4 a = *reinterpret_cast<const float4*>(st0 + (blk * Q + t) * kSsdPrOutLd + 4 * (q & 15));
    const float4 xv = *reinterpret_cast<const float4*>(xb + int64_t(t) * d.ld_xbc + 4 * q);
    const float Dh = blk ? D1 : D0;
    *reinterpret_cast<float4*>(y + (tok + t) * d.ldy + j0 + 4 * q) =
        make_float4(a.x + Dh * xv.x, a.y + Dh * xv.y, a.z + Dh * xv.z, a.w + Dh * xv.w);
  }
#else
  (void)d, (void)x, (void)C, (void)CB, (void)S, (void)Ssc, (void)dtv, (void)cum, (void)ecum, (void)D_, (void)y;
  __trap();
#endif
}

// The outputs kernel's columns a block set by set_ssd_outputs_cols (cuda_ops.h;
// FH1_CUDA_SSD_OUTPUTS_COLS=64|128), 0: the default, 128 where it applies.
inline std::atomic<int>& ssd_outputs_cols_setting() {
  static std::atomic<int> c{[] {
    const char* e = std::getenv("FH1_CUDA_SSD_OUTPUTS_COLS");
    const int v = e ? std::atoi(e) : 0;
    return v == 64 || v == 128 ? v : 0;
  }()};
  return c;
}

// A window's y from the fp16 start states: by the kernel above (2 tiles in flight, 2 blocks an
// SM) unless 64 columns are set, where a group's columns come in 128s (then every 128-column
// block lies in one group); else by the 64-column kernel in shape `variant`.
inline void ssd_wgmma_outputs16(int variant, const SsdShape& d, const float* x, const float* C, const float* dtv,
                                const double* cum, const float* ecum, const float* D, const float* CB,
                                const __half* S, const float* Ssc, float* y, cudaStream_t s) {
  if (ssd_outputs_cols_setting().load() == 64 || !ssd_states16_fits(d) || (int64_t(d.H / d.G) * d.P) % 128 != 0 ||
      d.nc > 65535)
    return ssd_wgmma_outputs(variant, d, x, C, dtv, cum, ecum, D, CB, S, y, s, Ssc);
  const dim3 grid(unsigned(int64_t(d.H) * d.P / 128), unsigned(d.nc));
  launch_big_smem(ssd_outputs_pairs_kernel<2, 2>, grid, 256, ssd_outputs_pairs_smem(2), s, d, x, C, CB, S, Ssc, dtv,
                  cum, ecum, D, y);
}

}  // namespace
}  // namespace fh1::cuda
