// The chunked SSD's two large products as fused TF32 tensor-core kernels (internal to
// cuda_ssm.cu, which has the notation): the chunks' end states, and the outputs of a chunk from
// its start state and its own tokens. The batched-GEMM form of the same products (still used
// where these kernels' shapes do not fit) round-trips through memory the decay-masked Q x Q
// matrices M, the scaled inputs Xd and the start states' outputs, ~200 MB a 1.5B-Deep layer at
// 8K tokens; here each block keeps those in registers:
//   ssd_states_kernel:  E[c, h] = Xd^T B, with Xd = xdf x formed as the fragments are read;
//   ssd_outputs_kernel: y[c, h] = exp(cum_t) (C S_start^T) + M X + D x, with M formed from CB,
//                       the running sums and dt as the fragments are read, and the causal
//                       half of M X skipped tile by tile.
// ssd_fused_states() and ssd_fused_outputs() (at the end) launch them for a window of chunks,
// ssd_chunks_cb() the cuBLAS product CB the outputs take.
// Inputs round to TF32 (10-bit mantissas) and the sums are float32, as in the cuBLAS TF32 path.
// Tiles of 32 tokens or state entries come through shared memory by cp.async, double-buffered;
// the rows of every tile are padded so that each fragment load hits 32 distinct banks.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_mma.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace fh1::cuda {
namespace {

struct SsdShape {
  int Q = 0;       // tokens per chunk
  int64_t nc = 0;  // chunks in this window
  int H = 0, P = 0, N = 0, G = 0;
  int64_t ld_xbc = 0, ldy = 0;
};

constexpr int kSsdTile = 32;             // tokens (or state entries) per shared-memory tile
constexpr int kSsdCols = 64;             // a block's columns p of one head
constexpr int kSsdXLd = kSsdCols + 8;    // a tile row of x: [32 tokens][64 + 8]
constexpr int kSsdKLd = kSsdTile + 4;    // a tile row along k: [rows][32 + 4]
constexpr int kSsdMaxChunk = 256;
// Tiles in shared memory (loads issued that many - 1 tiles ahead) and blocks an SM (registers
// capped to fit): the kernels wait on the latency of their instruction chains more than on
// HBM, so warps an SM pay more than tiles in flight. A 1.5B-Deep layer's outputs at 8K
// tokens (H200): 181 us with 2 tiles and 2 blocks an SM (99 registers), 160 with 3 tiles, 183 with
// 4, 121 with 2 tiles and 3 blocks (80 registers).
constexpr int kSsdStages = 2;
constexpr int kSsdBlocksPerSm = 3;

// The tile pipeline of KT tiles, ST in shared memory: load(tile, room) issues a tile's cp.async
// copies and commits them as one group. ssd_first_tiles() issues the first ST - 1 tiles;
// ssd_next_tile(j) waits for tile j, issues tile j + ST - 1 into the room of tile j - 1 (every
// warp is past it after the barrier) and returns tile j's room. Empty groups keep the count of
// groups in flight the same at the end.
template <int ST, class Load>
__device__ __forceinline__ void ssd_first_tiles(int KT, Load& load) {
  for (int t = 0; t < ST - 1; ++t) {
    if (t < KT) load(t, t);
    else cp_async_commit();
  }
}
template <int ST, class Load>
__device__ __forceinline__ int ssd_next_tile(int j, int KT, Load& load) {
  cp_async_wait<ST - 2>();
  __syncthreads();
  if (j + ST - 1 < KT) load(j + ST - 1, (j + ST - 1) % ST);
  else cp_async_commit();
  return j % ST;
}

// A warp's 32 x 32 tile, one k step of 8: acc[mi][ni] += A[mi] B[ni], the A fragments of its two
// row tiles given (rounded to TF32), B's read from shared memory at b (the lane's first element:
// k row c, column g), b + sn ni for n tile ni and 4 sk further for k row c + 4.
__device__ __forceinline__ void mma_warp_tile(float (&acc)[2][4][4], const uint32_t (&a)[2][4], const float* b, int sn,
                                              int sk) {
#pragma unroll
  for (int ni = 0; ni < 4; ++ni) {
    const uint32_t v0 = to_tf32(b[sn * ni]), v1 = to_tf32(b[sn * ni + 4 * sk]);
    mma_tf32(acc[0][ni], a[0], v0, v1);
    mma_tf32(acc[1][ni], a[1], v0, v1);
  }
}

// Where the fused kernels apply: 16-byte aligned operands (checked by the caller), whole blocks
// of 64 columns of a head, state sizes in whole 64s, chunks of 64, 128 or 256 tokens.
inline bool ssd_fused_fits(int Q, int P, int N) {
  return (Q == 64 || Q == 128 || Q == kSsdMaxChunk) && P % kSsdCols == 0 && N % 64 == 0;
}

// E[c, h][p, n] = sum_s xdf[c, h, s] x[s, h P + p] B[s, g N + n], for a block of 64 p x 32 NW n
// (blockIdx.x: p-block major over n-blocks) of (chunk, head) b = blockIdx.y. Warps: 2 along p x
// NW along n, each 32 x 32 (2 x 4 mma tiles). Shared memory (dynamic): x tiles [stages][32][72],
// B tiles [stages][32][32 NW + 8], xdf [Q].
template <int NW, int ST, int MB>
__global__ void __launch_bounds__(64 * NW, MB) ssd_states_kernel(SsdShape d, const float* __restrict__ x,
                                                             const float* __restrict__ B,
                                                             const float* __restrict__ xdf, float* __restrict__ E) {
  constexpr int NB = 32 * NW, BLD = NB + 8, THREADS = 64 * NW;
  extern __shared__ float4 ssd_smem4[];
  float* Xs = reinterpret_cast<float*>(ssd_smem4);
  float* Bs = Xs + ST * kSsdTile * kSsdXLd;
  float* fs = Bs + ST * kSsdTile * BLD;
  const int nblk = d.N / NB, pb = static_cast<int>(blockIdx.x) / nblk, nbk = static_cast<int>(blockIdx.x) - pb * nblk;
  const int b = blockIdx.y, c = b / d.H, h = b - c * d.H, g = h / (d.H / d.G);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wp = warp & 1, wn = warp >> 1;
  const int gq = lane >> 2, cq = lane & 3;
  const int64_t tok = int64_t(c) * d.Q;
  const float* xb = x + tok * d.ld_xbc + int64_t(h) * d.P + pb * kSsdCols;
  const float* Bb = B + tok * d.ld_xbc + int64_t(g) * d.N + nbk * NB;
  FH1_PDL_ENTER();
  for (int i = tid; i < d.Q; i += THREADS) fs[i] = xdf[int64_t(b) * d.Q + i];
  const auto load = [&](int kt, int buf) {
    const int64_t s0 = int64_t(kt) * kSsdTile;
    for (int i = tid; i < kSsdTile * kSsdCols / 4; i += THREADS) {
      const int r = i / (kSsdCols / 4), q = i % (kSsdCols / 4);
      cp_async16(&Xs[(buf * kSsdTile + r) * kSsdXLd + 4 * q], xb + (s0 + r) * d.ld_xbc + 4 * q, true);
    }
    for (int i = tid; i < kSsdTile * NB / 4; i += THREADS) {
      const int r = i / (NB / 4), q = i % (NB / 4);
      cp_async16(&Bs[(buf * kSsdTile + r) * BLD + 4 * q], Bb + (s0 + r) * d.ld_xbc + 4 * q, true);
    }
    cp_async_commit();
  };
  float acc[2][4][4] = {};
  const int KT = d.Q / kSsdTile;
  ssd_first_tiles<ST>(KT, load);
  for (int kt = 0; kt < KT; ++kt) {
    const int buf = ssd_next_tile<ST>(kt, KT, load);
    const float* X = Xs + buf * kSsdTile * kSsdXLd;
    const float* Bt = Bs + buf * kSsdTile * BLD;
    const float* f = fs + kt * kSsdTile;
#pragma unroll
    for (int kk = 0; kk < kSsdTile; kk += 8) {
      const float f0 = f[kk + cq], f1 = f[kk + cq + 4];
      const float* x0 = X + (kk + cq) * kSsdXLd + wp * 32 + gq;
      const float* x1 = x0 + 4 * kSsdXLd;
      uint32_t a[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        a[mi][0] = to_tf32(x0[16 * mi] * f0);
        a[mi][1] = to_tf32(x0[16 * mi + 8] * f0);
        a[mi][2] = to_tf32(x1[16 * mi] * f1);
        a[mi][3] = to_tf32(x1[16 * mi + 8] * f1);
      }
      mma_warp_tile(acc, a, Bt + (kk + cq) * BLD + wn * 32 + gq, 8, BLD);
    }
  }
  float* Eb = E + (int64_t(b) * d.P + pb * kSsdCols) * d.N + nbk * NB;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      float* e = Eb + int64_t(wp * 32 + mi * 16 + gq) * d.N + wn * 32 + ni * 8 + 2 * cq;
      *reinterpret_cast<float2*>(e) = make_float2(acc[mi][ni][0], acc[mi][ni][1]);
      *reinterpret_cast<float2*>(e + 8 * int64_t(d.N)) = make_float2(acc[mi][ni][2], acc[mi][ni][3]);
    }
}

inline size_t ssd_states_smem(int NW, int ST, int Q) {
  return sizeof(float) * (size_t(ST) * kSsdTile * (kSsdXLd + 32 * NW + 8) + size_t(Q));
}

// y[c Q + t, h P + p] = ecum[t] sum_n C[t, n] S[p, n] + sum_{s <= t} M[t, s] x[s, p] + D[h] x[t, p]
// with M[t, s] = CB[t, s] exp(cum_t - cum_s) dt_s, S the chunk's start state (chunk_starts'
// output, [P][N] per head), for 64 columns p (blockIdx.x) of (chunk, head) b = blockIdx.y.
// Warps: Q / 32 along t x 2 along p, each 32 x 32. The k loop runs N / 32 tiles of (C, S) and
// then Q / 32 tiles of (CB, x); warp row block wt takes only the tiles s0 <= its last row, the
// diagonal one masked. Shared memory (dynamic): running sums [Q] (double), dt [Q], A tiles
// [stages][Q][36] (C, then CB), B tiles [stages][64 x 36 or 32 x 72] (S, then x).
template <int Q, int ST, int MB>
__global__ void __launch_bounds__(2 * Q, MB) ssd_outputs_kernel(SsdShape d, const float* __restrict__ x,
                                                            const float* __restrict__ C, const float* __restrict__ CB,
                                                            const float* __restrict__ S, const float* __restrict__ dtv,
                                                            const double* __restrict__ cum,
                                                            const float* __restrict__ ecum,
                                                            const float* __restrict__ D_, float* __restrict__ y) {
  constexpr int THREADS = 2 * Q, BT = kSsdTile * kSsdXLd;  // a B tile: 32 x 72 = 64 x 36 floats
  static_assert(kSsdCols * kSsdKLd == BT, "the B tiles of both phases share their room");
  extern __shared__ float4 ssd_smem4[];
  double* cums = reinterpret_cast<double*>(ssd_smem4);
  float* dts = reinterpret_cast<float*>(cums + Q);
  float* As = dts + Q;
  float* Bs = As + ST * Q * kSsdKLd;
  const int pb = blockIdx.x, b = blockIdx.y, c = b / d.H, h = b - c * d.H, g = h / (d.H / d.G);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wp = warp & 1, wt = warp >> 1;
  const int gq = lane >> 2, cq = lane & 3;
  const int64_t tok = int64_t(c) * d.Q, p0 = int64_t(h) * d.P + pb * kSsdCols;
  const float* Cb = C + tok * d.ld_xbc + int64_t(g) * d.N;
  const float* Sb = S + (int64_t(b) * d.P + pb * kSsdCols) * d.N;
  const float* CBb = CB + (int64_t(c) * d.G + g) * Q * Q;
  const float* xb = x + tok * d.ld_xbc + p0;
  FH1_PDL_ENTER();
  for (int i = tid; i < Q; i += THREADS) {
    cums[i] = cum[int64_t(b) * Q + i];
    dts[i] = dtv[int64_t(b) * Q + i];
  }
  const int K1 = d.N / kSsdTile, KT = K1 + Q / kSsdTile;
  // Step j: j < K1 the state entries n0 = 32 j of C and S, else the tokens s0 = 32 (j - K1) of
  // CB and x.
  const auto load = [&](int j, int buf) {
    float* A = As + buf * Q * kSsdKLd;
    float* Bt = Bs + buf * BT;
    if (j < K1) {
      const int n0 = j * kSsdTile;
      for (int i = tid; i < Q * 8; i += THREADS)
        cp_async16(&A[(i >> 3) * kSsdKLd + 4 * (i & 7)], Cb + int64_t(i >> 3) * d.ld_xbc + n0 + 4 * (i & 7), true);
      for (int i = tid; i < kSsdCols * 8; i += THREADS)
        cp_async16(&Bt[(i >> 3) * kSsdKLd + 4 * (i & 7)], Sb + int64_t(i >> 3) * d.N + n0 + 4 * (i & 7), true);
    } else {
      const int s0 = (j - K1) * kSsdTile;
      for (int i = tid; i < Q * 8; i += THREADS)
        cp_async16(&A[(i >> 3) * kSsdKLd + 4 * (i & 7)], CBb + (i >> 3) * Q + s0 + 4 * (i & 7), true);
      for (int i = tid; i < kSsdTile * 16; i += THREADS)
        cp_async16(&Bt[(i >> 4) * kSsdXLd + 4 * (i & 15)], xb + int64_t(s0 + (i >> 4)) * d.ld_xbc + 4 * (i & 15), true);
    }
    cp_async_commit();
  };
  float acc[2][4][4] = {};
  const int r0 = wt * 32 + gq;  // this lane's rows: r0 + 16 mi + {0, 8}
  ssd_first_tiles<ST>(KT, load);
  for (int j = 0; j < KT; ++j) {
    const int buf = ssd_next_tile<ST>(j, KT, load);
    const float* A = As + buf * Q * kSsdKLd;
    const float* Bt = Bs + buf * BT;
    if (j < K1) {
#pragma unroll
      for (int kk = 0; kk < kSsdTile; kk += 8) {
        uint32_t a[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const float* ar = A + (r0 + 16 * mi) * kSsdKLd + kk + cq;
          a[mi][0] = to_tf32(ar[0]);
          a[mi][1] = to_tf32(ar[8 * kSsdKLd]);
          a[mi][2] = to_tf32(ar[4]);
          a[mi][3] = to_tf32(ar[8 * kSsdKLd + 4]);
        }
        mma_warp_tile(acc, a, Bt + (wp * 32 + gq) * kSsdKLd + kk + cq, 8 * kSsdKLd, 1);
      }
    } else {
      const int kt = j - K1, s0 = kt * kSsdTile;
      if (kt == 0) {  // the start state's part is complete: times exp(cum_t)
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const float e0 = ecum[int64_t(b) * Q + r0 + 16 * mi], e1 = ecum[int64_t(b) * Q + r0 + 16 * mi + 8];
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) {
            acc[mi][ni][0] *= e0;
            acc[mi][ni][1] *= e0;
            acc[mi][ni][2] *= e1;
            acc[mi][ni][3] *= e1;
          }
        }
      }
      if (kt <= wt) {  // tiles past the warp's last row are all masked
        const bool diag = kt == wt;
#pragma unroll
        for (int kk = 0; kk < kSsdTile; kk += 8) {
          const int sa = s0 + kk + cq, sb = sa + 4;
          const double ca = cums[sa], cb = cums[sb];
          const float da = dts[sa], db = dts[sb];
          uint32_t a[2][4];
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            const int t0 = r0 + 16 * mi, t1 = t0 + 8;
            const double c0 = cums[t0], c1 = cums[t1];
            const float* ar = A + t0 * kSsdKLd + kk + cq;
            // Past the diagonal the exponent may overflow: select, not multiply by a mask. The
            // hardware's exp2 (__expf: 2 instructions, relative error ~2^-21 for these exponents
            // <= 0) instead of expf's ~10, rounded to TF32 (2^-11) right after.
            a[mi][0] = to_tf32(!diag || sa <= t0 ? ar[0] * __expf(float(c0 - ca)) * da : 0.0f);
            a[mi][1] = to_tf32(!diag || sa <= t1 ? ar[8 * kSsdKLd] * __expf(float(c1 - ca)) * da : 0.0f);
            a[mi][2] = to_tf32(!diag || sb <= t0 ? ar[4] * __expf(float(c0 - cb)) * db : 0.0f);
            a[mi][3] = to_tf32(!diag || sb <= t1 ? ar[8 * kSsdKLd + 4] * __expf(float(c1 - cb)) * db : 0.0f);
          }
          mma_warp_tile(acc, a, Bt + (kk + cq) * kSsdXLd + wp * 32 + gq, 8, kSsdXLd);
        }
      }
    }
  }
  const float Dh = D_[h];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t t = tok + r0 + 16 * mi + 8 * half;
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int64_t col = p0 + wp * 32 + ni * 8 + 2 * cq;
        const float2 xv = *reinterpret_cast<const float2*>(x + t * d.ld_xbc + col);
        *reinterpret_cast<float2*>(y + t * d.ldy + col) =
            make_float2(acc[mi][ni][2 * half] + Dh * xv.x, acc[mi][ni][2 * half + 1] + Dh * xv.y);
      }
    }
}

inline size_t ssd_outputs_smem(int Q, int ST) {
  const size_t stage = size_t(Q) * kSsdKLd + kSsdTile * kSsdXLd;  // an A and a B tile, in floats
  return sizeof(double) * size_t(Q) + sizeof(float) * (size_t(Q) + size_t(ST) * stage);
}

// A window's CB (cuBLAS, per group, strided over the chunks), for the outputs.
inline void ssd_chunks_cb(const SsdShape& d, const float* B, const float* C, float* CB, cublasComputeType_t compute,
                          cublasHandle_t blas) {
  const float one = 1.0f, zero = 0.0f;
  const int64_t QQ = int64_t(d.Q) * d.Q;
  // CB (column-major Q x Q, s by t) = B^T C, per (chunk, group).
  for (int g = 0; g < d.G; ++g)
    check_blas(cublasGemmStridedBatchedEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, d.Q, d.Q, d.N, &one, B + int64_t(g) * d.N,
                                          CUDA_R_32F, int(d.ld_xbc), d.Q * d.ld_xbc, C + int64_t(g) * d.N, CUDA_R_32F,
                                          int(d.ld_xbc), d.Q * d.ld_xbc, &zero, CB + g * QQ, CUDA_R_32F, d.Q,
                                          d.G * QQ, int(d.nc), compute, CUBLAS_GEMM_DEFAULT),
               "the chunks' C B^T");
}

// A window's end states E; the caller then turns E into the start states
// (ssm_chunk_starts_kernel) for ssd_fused_outputs().
inline void ssd_fused_states(const SsdShape& d, const float* x, const float* B, const float* xdf, float* E,
                             cudaStream_t s) {
  constexpr int ST = kSsdStages, MB = kSsdBlocksPerSm;
  const int NW = d.N % 128 == 0 ? 4 : 2;
  const dim3 grid(unsigned((d.P / kSsdCols) * (d.N / (32 * NW))), unsigned(d.nc * d.H));
  if (NW == 4)
    launch_big_smem(ssd_states_kernel<4, ST, MB>, grid, 256, ssd_states_smem(4, ST, d.Q), s, d, x, B, xdf, E);
  else
    launch_big_smem(ssd_states_kernel<2, ST, MB>, grid, 128, ssd_states_smem(2, ST, d.Q), s, d, x, B, xdf, E);
}

// A window's y from the start states S (in E's room) and CB. Chunks of 256 tokens: blocks of 512
// threads, one an SM.
inline void ssd_fused_outputs(const SsdShape& d, const float* x, const float* C, const float* dtv, const double* cum,
                              const float* ecum, const float* D, const float* CB, const float* S, float* y,
                              cudaStream_t s) {
  constexpr int ST = kSsdStages, MB = kSsdBlocksPerSm;
  const dim3 grid(unsigned(d.P / kSsdCols), unsigned(d.nc * d.H));
  const auto outputs = [&](auto kernel, int Q) {
    launch_big_smem(kernel, grid, 2 * Q, ssd_outputs_smem(Q, ST), s, d, x, C, CB, S, dtv, cum, ecum, D, y);
  };
  if (d.Q == 64) outputs(ssd_outputs_kernel<64, ST, MB>, 64);
  else if (d.Q == 128) outputs(ssd_outputs_kernel<128, ST, MB>, 128);
  else outputs(ssd_outputs_kernel<kSsdMaxChunk, ST, 1>, kSsdMaxChunk);
}

}  // namespace
}  // namespace fh1::cuda
