// The SSD's outputs and end states on Hopper's warpgroup MMA (wgmma, TF32; internal to
// cuda_ssm.cu; cuda_ssd_mma.cuh's ssd_outputs_kernel and ssd_states_kernel compute the same on
// mma.sync). The end states' kernel is described above it, below. The outputs, for chunks of 128 tokens:
//   y[c, h] = exp(cum_t) (C S_start^T) + M X + D x,  M[t, s] = CB[t, s] exp(cum_t - cum_s) dt_s (s <= t),
// computed transposed, Y^T (64 columns p x 128 tokens t) = S C'^T + X^T M^T, so that every
// operand wgmma reads from shared memory is K-major as TF32 requires: S [p][n], C' [t][n] (C's
// rows times exp(cum_t)) and M [t][s] (CB as cuBLAS wrote it, masked and scaled in place), with
// X^T's fragments (x is [s][p]) read into registers. Why: the mma.sync kernel waits on the
// latency of its fragment loads and conversions, each repeated by every warp that shares a
// fragment; here each element is rounded (and M formed) once, by the thread that copied it.
// Two warpgroups a block, each 64 of the 128 tokens; the upper one's half of M X takes all four
// 32-token tiles, the lower one's only the first two (the rest are past the diagonal).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_f16_scale.cuh"
#include "kernels/cuda/cuda_mma.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_ssd_mma.cuh"
#include "kernels/cuda/cuda_wgmma.cuh"

namespace fh1::cuda {
namespace {

constexpr int kSsdWgQ = 128;                                         // the chunk length it takes
constexpr int kSsdWgBBytes = kSsdWgQ * 128;                          // [128 t][32 floats]: C' or M
constexpr int kSsdWgABytes = kSsdTile * kSsdXLd * 4;                 // S [64 p][32 n] (8 KB) or x [32 s][72]
constexpr int kSsdWgStage = kSsdWgBBytes + kSsdWgABytes;             // 25,600 bytes
static_assert(kSsdWgStage % 1024 == 0, "stages keep the 128-byte swizzle's 1024-byte alignment");
static_assert(kSsdCols * 128 <= kSsdWgABytes, "S's tile fits the A room");
constexpr int kSsdWgOutLd = kSsdCols + 4;  // the outputs staged [128 t][68] for their stores (conflict-free)
static_assert(2 * kSsdWgStage >= kSsdWgQ * kSsdWgOutLd * 4, "the staged outputs fit two stages");

// The byte of 16-byte chunk q of row r in a tile of 128-byte swizzled rows (wgmma's layout).
__device__ __forceinline__ uint32_t sw128_at(int r, int q) {
  return uint32_t(r) * 128u + (uint32_t(q ^ (r & 7)) << 4);
}

// The chunks' states stored as fp16 (FH1_CUDA_SSD_STATES16): each run of 128 state entries of a
// row p (one n block) scaled by its own power of two, so that its largest |value| lies in
// [2^14, 2^15); the factor that undoes it (2^-shift) in a float array beside them, indexed
// (chunk, head, p, n block). fp16 keeps TF32's 11 bits, so S loses nothing the outputs kernel's
// rounding to TF32 keeps, and E one more rounding; half the bytes through memory. In the outputs
// kernel S's tile [64 p][32 n] lands as fp16 in a staging room of its own (4 KB a stage) and is
// widened, times its factor, into the A room; the block's factors (64 p x up to 4 n blocks) are
// read once into shared memory.
constexpr int kSsdWgS16Bytes = kSsdTile * 2 * 64;
constexpr int kSsdWgMaxNBlocks = 4;  // N <= 512
template <class TS>
constexpr bool kStates16 = std::is_same_v<TS, __half>;

inline size_t ssd_outputs_wgmma_smem(int ST, bool states16 = false) {
  return 1024 + size_t(ST) * kSsdWgStage + size_t(kSsdWgQ) * (sizeof(double) + 2 * sizeof(float)) +
         (states16 ? size_t(ST) * kSsdWgS16Bytes + 64 * kSsdWgMaxNBlocks * sizeof(float) : 0);
}

// Block (p block blockIdx.x, (chunk, head) blockIdx.y), 256 threads. Step j < K1 = N / 32: C's
// and S's state entries 32 j..; then step K1 + k: the tokens s = 32 k.. of CB and x. ST tiles in
// shared memory, loads issued ST - 1 steps ahead; each step one barrier.
template <int ST, int MB, class TS = float>
__global__ void __launch_bounds__(256, MB) ssd_outputs_wgmma_kernel(SsdShape d, const float* __restrict__ x,
                                                                  const float* __restrict__ C,
                                                                  const float* __restrict__ CB,
                                                                  const TS* __restrict__ S,
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
  double* cums = reinterpret_cast<double*>(base + ST * kSsdWgStage);
  float* dts = reinterpret_cast<float*>(cums + Q);
  float* ecs = dts + Q;
  float* ssc = ecs + Q;                                             // kStates16: S's factors [64 p][N / 128]
  unsigned char* s16 = reinterpret_cast<unsigned char*>(ssc + 64 * kSsdWgMaxNBlocks);  // ST rooms of S's fp16 tile
  const int pb = blockIdx.x, b = blockIdx.y, c = b / d.H, h = b - c * d.H, g = h / (d.H / d.G);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, wi = warp & 3;
  const int gq = lane >> 2, cq = lane & 3;
  const int64_t tok = int64_t(c) * Q, p0 = int64_t(h) * d.P + pb * kSsdCols;
  const float* Cb = C + tok * d.ld_xbc + int64_t(g) * d.N;
  const TS* Sb = S + (int64_t(b) * d.P + pb * kSsdCols) * d.N;
  const float* CBb = CB + (int64_t(c) * d.G + g) * Q * Q;
  const float* xb = x + tok * d.ld_xbc + p0;
  FH1_PDL_ENTER();
  for (int i = tid; i < Q; i += 256) {
    cums[i] = cum[int64_t(b) * Q + i];
    dts[i] = dtv[int64_t(b) * Q + i];
    ecs[i] = ecum[int64_t(b) * Q + i];
  }
  if constexpr (kStates16<TS>) {
    const int nbs = d.N / 128;
    for (int i = tid; i < 64 * nbs; i += 256) ssc[i] = Ssc[(int64_t(b) * d.P + pb * kSsdCols) * nbs + i];
  }
  __syncthreads();  // the first step's rounding scales by ecs
  const int K1 = d.N / kSsdTile, KT = K1 + Q / kSsdTile;
  const auto broom = [&](int buf) { return base + buf * kSsdWgStage; };
  const auto aroom = [&](int buf) { return base + buf * kSsdWgStage + kSsdWgBBytes; };
  // Thread tid copies (and later rounds) 16-byte chunks tid + 256 k of each tile: of C or CB
  // (128 rows of 8 chunks: k < 4), of S (64 rows of 8: k < 2; in fp16 64 rows of 4, chunk tid)
  // or of x (32 rows of 16: k < 2). It rounds only what it copied: before the step's barrier its
  // wait covers only its own copies (the fp16 S once read 8-byte halves of other threads' chunks).
  // M's rows t < 64 of the last two token tiles are past the diagonal and read by no one.
  const auto load = [&](int j, int buf) {
    unsigned char* Bt = broom(buf);
    unsigned char* At = aroom(buf);
    if (j < K1) {
      const int n0 = j * kSsdTile;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int i = tid + 256 * k, r = i >> 3, q = i & 7;
        cp_async16(Bt + sw128_at(r, q), Cb + int64_t(r) * d.ld_xbc + n0 + 4 * q, true);
      }
      if constexpr (kStates16<TS>) {  // 64 rows of 4 chunks of 8 values
        const int r = tid >> 2, q = tid & 3;
        cp_async16(s16 + buf * kSsdWgS16Bytes + r * 64 + 16 * q, Sb + int64_t(r) * d.N + n0 + 8 * q, true);
      } else {
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const int i = tid + 256 * k, r = i >> 3, q = i & 7;
          cp_async16(At + sw128_at(r, q), Sb + int64_t(r) * d.N + n0 + 4 * q, true);
        }
      }
    } else {
      const int s0 = (j - K1) * kSsdTile;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int i = tid + 256 * k, r = i >> 3, q = i & 7;
        if (s0 < 64 || r >= 64) cp_async16(Bt + sw128_at(r, q), CBb + r * Q + s0 + 4 * q, true);
      }
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int i = tid + 256 * k, r = i >> 4, q = i & 15;
        cp_async16(At + (r * kSsdXLd + 4 * q) * 4, xb + int64_t(s0 + r) * d.ld_xbc + 4 * q, true);
      }
    }
    cp_async_commit();
  };
  const auto round4 = [](float4 v, float f) {
    return make_float4(__uint_as_float(to_tf32(v.x * f)), __uint_as_float(to_tf32(v.y * f)),
                       __uint_as_float(to_tf32(v.z * f)), __uint_as_float(to_tf32(v.w * f)));
  };
  // This thread's chunks of tile j, landed: C's rows times exp(cum_t) and S rounded to TF32, or
  // CB made M (rounded; zero past the diagonal). x is rounded as its fragments are read.
  const auto prepare = [&](int j, int buf) {
    unsigned char* Bt = broom(buf);
    if (j < K1) {
      unsigned char* At = aroom(buf);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int i = tid + 256 * k, r = i >> 3, q = i & 7;
        float4* v = reinterpret_cast<float4*>(Bt + sw128_at(r, q));
        *v = round4(*v, ecs[r]);
      }
      if constexpr (kStates16<TS>) {  // the 8 values of S this thread copied (its wait covers only its own)
        const int r = tid >> 2, q = tid & 3;
        const uint4 packed = *reinterpret_cast<const uint4*>(s16 + buf * kSsdWgS16Bytes + r * 64 + 16 * q);
        const float f = ssc[r * (d.N / 128) + (j >> 2)];
        *reinterpret_cast<float4*>(At + sw128_at(r, 2 * q)) =
            round4(f16x4_to_float4(make_uint2(packed.x, packed.y)), f);
        *reinterpret_cast<float4*>(At + sw128_at(r, 2 * q + 1)) =
            round4(f16x4_to_float4(make_uint2(packed.z, packed.w)), f);
      } else {
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const int i = tid + 256 * k, r = i >> 3, q = i & 7;
          float4* v = reinterpret_cast<float4*>(At + sw128_at(r, q));
          *v = round4(*v, 1.0f);
        }
      }
    } else {
      const int s0 = (j - K1) * kSsdTile;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int i = tid + 256 * k, t = i >> 3, q = i & 7;
        if (s0 >= 64 && t < 64) continue;
        float4* v = reinterpret_cast<float4*>(Bt + sw128_at(t, q));
        const int s = s0 + 4 * q;
        float m[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (s <= t) {  // else the whole chunk is past the diagonal
          const float4 cb = *v;
          const float in[4] = {cb.x, cb.y, cb.z, cb.w};
          const double ct = cums[t];
          // As ssd_outputs_kernel: select past the diagonal (the exponent may overflow there),
          // the hardware's exp2, rounded to TF32 right after.
#pragma unroll
          for (int e = 0; e < 4; ++e)
            m[e] = s + e <= t ? __uint_as_float(to_tf32(in[e] * __expf(float(ct - cums[s + e])) * dts[s + e])) : 0.0f;
        }
        *v = make_float4(m[0], m[1], m[2], m[3]);
      }
    }
    fence_proxy_async();  // these stores (and the copies) seen by the tensor cores, after the barrier
  };

  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
  ssd_first_tiles<ST>(KT, load);
  for (int j = 0; j < KT; ++j) {
    const int buf = j % ST;
    cp_async_wait<ST - 2>();
    prepare(j, buf);
    __syncthreads();
    if (j + ST - 1 < KT) load(j + ST - 1, (j + ST - 1) % ST);
    else cp_async_commit();
    const uint32_t bt = smem_addr(broom(buf)) + uint32_t(wg) * 64 * 128;  // this warpgroup's 64 rows t
    if (j < K1) {
      const uint32_t at = smem_addr(aroom(buf));
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        wgmma_ss_tf32_n64(acc, sw128_desc(at + 32 * kk, 16, 1024), sw128_desc(bt + 32 * kk, 16, 1024));
      wgmma_commit();
      wgmma_wait<0>();  // done with the tiles before the next step's barrier frees them
      fence_regs(acc);
    } else if (wg == 1 || j - K1 < 2) {
      const float* X = reinterpret_cast<const float*>(aroom(buf));
      uint32_t a[4][4];
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {  // X^T's fragment: rows p = 16 wi + gq (+8), columns s = 8 kk + cq (+4)
        const float* xr = X + (8 * kk + cq) * kSsdXLd + 16 * wi + gq;
        a[kk][0] = to_tf32(xr[0]);
        a[kk][1] = to_tf32(xr[8]);
        a[kk][2] = to_tf32(xr[4 * kSsdXLd]);
        a[kk][3] = to_tf32(xr[4 * kSsdXLd + 8]);
      }
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_rs_tf32_n64(acc, a[kk], sw128_desc(bt + 32 * kk, 16, 1024));
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(acc);
    }
  }
  // acc[nb][2 half + e]: column p = 16 wi + gq + 8 half, token t = 64 wg + 8 nb + 2 cq + e.
  // Staged in shared memory as [t][p] (the stages are free now), then y = acc + D x a token row
  // of 64 columns at a time, 16 bytes a thread (x and y start on 16 bytes on this path: the
  // launcher's `aligned`), instead of 32 scattered 4-byte loads and stores a thread.
  __syncthreads();  // every warp past its last wgmma and fragment reads of the stages
  float* st = reinterpret_cast<float*>(base);
#pragma unroll
  for (int nb = 0; nb < 8; ++nb)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        st[(64 * wg + 8 * nb + 2 * cq + e) * kSsdWgOutLd + 16 * wi + gq + 8 * half] = acc[nb][2 * half + e];
  __syncthreads();
  const float Dh = D_[h];
#pragma unroll 2
  for (int k = 0; k < Q * kSsdCols / 4 / 256; ++k) {
    const int i = tid + 256 * k, t = i >> 4, q = i & 15;
    const float4 a = *reinterpret_cast<const float4*>(st + t * kSsdWgOutLd + 4 * q);
    const float4 xv = *reinterpret_cast<const float4*>(xb + int64_t(t) * d.ld_xbc + 4 * q);
    *reinterpret_cast<float4*>(y + (tok + t) * d.ldy + p0 + 4 * q) =
        make_float4(a.x + Dh * xv.x, a.y + Dh * xv.y, a.z + Dh * xv.z, a.w + Dh * xv.w);
  }
#else
  // Built without sm_90a code: never launched (ssd_outputs_wgmma_on checks flash_wgmma_available()).
  (void)d, (void)x, (void)C, (void)CB, (void)S, (void)Ssc, (void)dtv, (void)cum, (void)ecum, (void)D_, (void)y;
  __trap();
#endif
}

// The chunks' end states on wgmma (ssd_states_kernel's product): E^T (128 state entries n x 64
// columns p of a head) = B^T Xd over the chunk's tokens s, Xd = xdf x. Both operands are stored
// token-major ([s][n], [s][p]) where TF32's wgmma needs them K-major, so one is turned: x's tile
// is transposed into Xd^T [p][s] (scaled by xdf, rounded) for the shared-memory operand, and B^T's
// fragments are read into registers from B's tile as it came. Two warpgroups a block, each 64 of
// the 128 n. Shared memory: ST stages of B [32 s][136] and x [32 s][68] as copied (rows padded
// so that the fragment reads and the transpose hit distinct banks), two Xd^T tiles [64 p][32 s]
// (128-byte swizzle), xdf [Q].
constexpr int kSsdWgBLd = 128 + 8, kSsdWgXLd = kSsdCols + 4;
constexpr int kSsdWgStStage = (kSsdTile * (kSsdWgBLd + kSsdWgXLd) * 4 + 1023) / 1024 * 1024;  // 26 KB, 1024-aligned
constexpr int kSsdWgEpiLd = 128 + 4;  // the end states staged [64 p][132] for their stores (conflict-free)
static_assert(2 * kSsdWgStStage >= kSsdCols * kSsdWgEpiLd * 4, "the staged end states fit two stages");

inline size_t ssd_states_wgmma_smem(int ST, int Q) {
  return 1024 + size_t(ST) * kSsdWgStStage + 2 * size_t(kSsdCols) * 128 + sizeof(float) * size_t(Q);
}

// Block (p block x n block of 128 blockIdx.x, (chunk, head) blockIdx.y), 256 threads; Q / 32
// steps of 32 tokens, loads ST - 1 steps ahead.
template <int ST, int MB, class TE = float>
__global__ void __launch_bounds__(256, MB) ssd_states_wgmma_kernel(SsdShape d, const float* __restrict__ x,
                                                                 const float* __restrict__ B,
                                                                 const float* __restrict__ xdf, TE* __restrict__ E,
                                                                 float* __restrict__ Esc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(ST >= 2, "the epilogue stages the end states in two stages' room");
  extern __shared__ float4 ssd_smem4[];
  unsigned char* raw = reinterpret_cast<unsigned char*>(ssd_smem4);
  unsigned char* base = raw + ((1024u - (smem_addr(raw) & 1023u)) & 1023u);
  unsigned char* xdt = base + ST * kSsdWgStStage;  // two [64 p][32 s] tiles
  float* fs = reinterpret_cast<float*>(xdt + 2 * kSsdCols * 128);
  const int nblk = d.N / 128, pb = static_cast<int>(blockIdx.x) / nblk, nbk = static_cast<int>(blockIdx.x) - pb * nblk;
  const int b = blockIdx.y, c = b / d.H, h = b - c * d.H, g = h / (d.H / d.G);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2, wi = warp & 3;
  const int gq = lane >> 2, cq = lane & 3;
  const int64_t tok = int64_t(c) * d.Q;
  const float* xb = x + tok * d.ld_xbc + int64_t(h) * d.P + pb * kSsdCols;
  const float* Bb = B + tok * d.ld_xbc + int64_t(g) * d.N + nbk * 128;
  FH1_PDL_ENTER();
  for (int i = tid; i < d.Q; i += 256) fs[i] = xdf[int64_t(b) * d.Q + i];
  const auto bst = [&](int buf) { return reinterpret_cast<float*>(base + buf * kSsdWgStStage); };
  const auto xst = [&](int buf) { return bst(buf) + kSsdTile * kSsdWgBLd; };
  const auto load = [&](int kt, int buf) {
    const int64_t s0 = int64_t(kt) * kSsdTile;
    float* Bt = bst(buf);
    float* Xt = xst(buf);
#pragma unroll
    for (int k = 0; k < 4; ++k) {  // B: 32 rows of 32 chunks
      const int i = tid + 256 * k, r = i >> 5, q = i & 31;
      cp_async16(Bt + r * kSsdWgBLd + 4 * q, Bb + (s0 + r) * d.ld_xbc + 4 * q, true);
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) {  // x: 32 rows of 16 chunks
      const int i = tid + 256 * k, r = i >> 4, q = i & 15;
      cp_async16(Xt + r * kSsdWgXLd + 4 * q, xb + (s0 + r) * d.ld_xbc + 4 * q, true);
    }
    cp_async_commit();
  };
  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
  const int KT = d.Q / kSsdTile;
  ssd_first_tiles<ST>(KT, load);
  for (int kt = 0; kt < KT; ++kt) {
    const int buf = kt % ST;
    cp_async_wait<ST - 2>();
    __syncthreads();  // tile kt landed for all; the Xd^T tile of step kt - 2 read by no one now
    unsigned char* xt = xdt + (kt & 1) * kSsdCols * 128;
    {
      const float* Xt = xst(buf);
      const float* f = fs + kt * kSsdTile;
#pragma unroll
      for (int k = 0; k < 2; ++k) {  // a warp: the 32 tokens s of 4 columns p
        const int i = tid + 256 * k, s = i & 31, p = 4 * (i >> 5);
        const float4 v = *reinterpret_cast<const float4*>(Xt + s * kSsdWgXLd + p);
        const float fv = f[s], in[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; ++e)
          *reinterpret_cast<uint32_t*>(xt + sw128_at(p + e, s >> 2) + 4 * (s & 3)) = to_tf32(in[e] * fv);
      }
    }
    fence_proxy_async();
    __syncthreads();  // Xd^T made; every warp past its reads of the stage the next load takes
    if (kt + ST - 1 < KT) load(kt + ST - 1, (kt + ST - 1) % ST);
    else cp_async_commit();
    const float* Bt = bst(buf);
    uint32_t a[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {  // B^T's fragment: rows n = 64 wg + 16 wi + gq (+8), columns s = 8 kk + cq (+4)
      const float* br = Bt + (8 * kk + cq) * kSsdWgBLd + 64 * wg + 16 * wi + gq;
      a[kk][0] = to_tf32(br[0]);
      a[kk][1] = to_tf32(br[8]);
      a[kk][2] = to_tf32(br[4 * kSsdWgBLd]);
      a[kk][3] = to_tf32(br[4 * kSsdWgBLd + 8]);
    }
    const uint32_t xa = smem_addr(xt);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs_tf32_n64(acc, a[kk], sw128_desc(xa + 32 * kk, 16, 1024));
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(acc);
  }
  // acc[nb][2 half + e]: state entry n = 64 wg + 16 wi + gq + 8 half, column p = 8 nb + 2 cq + e.
  // Staged in shared memory as [p][n] (the stages are free now), then written a row p at a time
  // by one warp, 16 bytes (float32) or 8 (fp16) a lane: whole rows of 128 entries instead of
  // scattered 4- or 2-byte stores, and the fp16 row's largest |value| found in the warp.
  __syncthreads();  // every warp past its last wgmma and fragment reads of the stages
  float* st = reinterpret_cast<float*>(base);
#pragma unroll
  for (int nb = 0; nb < 8; ++nb)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        st[(8 * nb + 2 * cq + e) * kSsdWgEpiLd + 64 * wg + 16 * wi + gq + 8 * half] = acc[nb][2 * half + e];
  __syncthreads();
  const int64_t row0 = int64_t(b) * d.P + pb * kSsdCols;  // this block's first row p of E
#pragma unroll 2
  for (int r = 0; r < kSsdCols / 8; ++r) {  // warp w: rows p = 8 w + r
    const int p = 8 * warp + r;
    const float4 v = *reinterpret_cast<const float4*>(st + p * kSsdWgEpiLd + 4 * lane);
    if constexpr (std::is_same_v<TE, float>) {
      reinterpret_cast<float4*>(E + (row0 + p) * d.N + nbk * 128)[lane] = v;
    } else {
      // fp16 with a power of two for each row p of this block's 128 entries n.
      store_f16_run(v, reinterpret_cast<uint2*>(E + (row0 + p) * d.N + nbk * 128),
                    Esc + (row0 + p) * (d.N / 128) + nbk);
    }
  }
#else
  (void)d, (void)x, (void)B, (void)xdf, (void)E, (void)Esc;
  __trap();
#endif
}

// Where it applies: chunks of 128 tokens and the fused kernels' other conditions (ssd_fused_fits).
inline bool ssd_outputs_wgmma_fits(const SsdShape& d) {
  return d.Q == kSsdWgQ && ssd_fused_fits(d.Q, d.P, d.N) && d.nc * d.H <= 65535;
}

inline bool ssd_states_wgmma_fits(const SsdShape& d) {
  return d.Q % kSsdTile == 0 && d.Q <= 256 && d.P % kSsdCols == 0 && d.N % 128 == 0 && d.nc * d.H <= 65535;
}

// The fp16 chunk states: both kernels above on wgmma, and at most kSsdWgMaxNBlocks n blocks.
inline bool ssd_states16_fits(const SsdShape& d) {
  return ssd_states_wgmma_fits(d) && ssd_outputs_wgmma_fits(d) && d.N <= 128 * kSsdWgMaxNBlocks;
}

// A window's end states as ssd_fused_states() makes them, by the kernel above (2 tiles in
// flight, 3 blocks an SM).
template <class TE>
inline void ssd_wgmma_states(const SsdShape& d, const float* x, const float* B, const float* xdf, TE* E,
                             cudaStream_t s, float* Esc = nullptr) {
  const dim3 grid(unsigned((d.P / kSsdCols) * (d.N / 128)), unsigned(d.nc * d.H));
  launch_big_smem(ssd_states_wgmma_kernel<2, 3, TE>, grid, 256, ssd_states_wgmma_smem(2, d.Q), s, d, x, B, xdf, E,
                  Esc);
}

// A window's y as ssd_fused_outputs() makes it, by the kernel above in shape `variant`
// (set_ssd_wgmma): 1 two tiles in flight and 3 blocks an SM, 2 three tiles and 2 blocks, 3 two
// tiles and 2 blocks.
template <class TS>
inline void ssd_wgmma_outputs(int variant, const SsdShape& d, const float* x, const float* C, const float* dtv,
                              const double* cum, const float* ecum, const float* D, const float* CB, const TS* S,
                              float* y, cudaStream_t s, const float* Ssc = nullptr) {
  const dim3 grid(unsigned(d.P / kSsdCols), unsigned(d.nc * d.H));
  const auto go = [&](auto kernel, int ST) {
    launch_big_smem(kernel, grid, 256, ssd_outputs_wgmma_smem(ST, kStates16<TS>), s, d, x, C, CB, S, Ssc, dtv, cum,
                    ecum, D, y);
  };
  if (variant == 2) go(ssd_outputs_wgmma_kernel<3, 2, TS>, 3);
  else if (variant == 3) go(ssd_outputs_wgmma_kernel<2, 2, TS>, 2);
  else go(ssd_outputs_wgmma_kernel<2, 3, TS>, 2);
}

}  // namespace
}  // namespace fh1::cuda
