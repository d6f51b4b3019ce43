// The tensor-core decode attention kernel over bf16 KV caches, for cuda_attention.cu
// alone (an anonymous namespace), which launches it and merges its partial results.
#pragma once

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/cuda_attention_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace fh1::cuda {
namespace {

// ---- decode on the tensor cores (bf16 KV caches): split-KV, one warp per (key range, kv head
// [, sequence]) ----
// The M = 16 rows of the MMAs are the query heads of one KV group times the queries (G x T <= 16,
// row r = query r / G, head r % G), so each key is read once for its whole group, and the
// softmax rescales once per tile of 32 keys instead of once per key. The warp streams its key
// range through shared memory with cp.async (double-buffered), with the arithmetic of the bf16
// flash kernel (cuda_attention_prefill.cu: Q and P split in hi + lo bf16 parts, float32 sums). It writes the same
// partial results as attn_decode_gqa_kernel (max and sum in natural-log units, unnormalized
// accumulators), merged by attn_merge_kernel. At long contexts the per-key reductions across
// lanes made that kernel latency-bound (15 % of the DRAM bandwidth at 128K on an H200).

constexpr int kDecBK = 32;  // keys per tile

template <int HDP>
__global__ void __launch_bounds__(32)
    attn_decode_mma_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const void* __restrict__ kc,
                           const void* __restrict__ vc, int64_t n_past_host, const int64_t* __restrict__ n_past_dev,
                           const void* const* __restrict__ kcs, const void* const* __restrict__ vcs,
                           const int64_t* __restrict__ n_pasts, int H, int Hkv, int hd, float scale, int nsplit,
                           float* __restrict__ ml, float* __restrict__ pacc) {
  constexpr int BK = kDecBK;
  constexpr int LD = HDP + 8;
  constexpr int CH = HDP / 8;
  __shared__ __align__(16) bf16 Qs[2][16 * LD];
  __shared__ __align__(16) bf16 Ks[2][BK * LD];
  __shared__ __align__(16) bf16 Vs[2][BK * LD];
  const int split = blockIdx.x, kvh = blockIdx.y;
  const int64_t z = blockIdx.z;
  const bool rows = kcs != nullptr;  // rows mode: sequence z, one query, its own caches
  const int G = H / Hkv;
  const int lane = threadIdx.x, gq = lane >> 2, c4 = lane & 3;
  const float qscale = scale * 1.4426950408889634f;
  const int64_t Tq = rows ? 1 : T;
  const int nrows = static_cast<int>(G * Tq);
  // The range and its first tile of keys before the wait when that tile holds only the earlier
  // steps' keys (the kernel before writes the new ones, and the query rows): its loads then
  // overlap that kernel's end. The caches' pointers and lengths are the step's arrays.
  if (rows) {
    kc = kcs[z];
    vc = vcs[z];
  }
  const int64_t n_past = rows ? n_pasts[z] : (n_past_dev ? *n_past_dev : n_past_host);
  const int64_t n_keys = n_past + Tq;
  const int64_t chunk = (n_keys + nsplit - 1) / nsplit;
  const int64_t k_begin = int64_t(split) * chunk;
  const int64_t k_end = min(k_begin + chunk, n_keys);
  const int64_t ldkv = int64_t(Hkv) * hd;
  auto load_tile = [&](int64_t k0, int buf) {
    const bf16* kb = static_cast<const bf16*>(kc) + int64_t(kvh) * hd;
    const bf16* vb = static_cast<const bf16*>(vc) + int64_t(kvh) * hd;
    for (int e = lane; e < BK * CH; e += 32) {
      const int r = e / CH, d = (e - r * CH) * 8;
      const int64_t key = k0 + r;
      const bool ok = key < k_end && d < hd;
      const int64_t off = ok ? key * ldkv + d : 0;
      cp_async16(&Ks[buf][r * LD + d], kb + off, ok);
      cp_async16(&Vs[buf][r * LD + d], vb + off, ok);
    }
  };
  const bool early = k_begin < k_end && min(k_begin + BK, k_end) <= n_past;
  if (early) {
    load_tile(k_begin, 0);
    cp_async_commit();
  }
  FH1_PDL_ENTER();
  // The query rows first, every load in flight at once (one float4 a row per lane at HDP 128):
  // loaded one pair at a time, each load waited for before the next, they were two thirds of
  // the kernel's time at short contexts (ncu, 7B at 1K keys).
  constexpr int QC = HDP / 4;   // float4 chunks of a row
  constexpr int RPP = 32 / QC;  // rows a pass of the warp covers
  constexpr int NQ = 16 / RPP;  // passes: loads per lane
  const bool qvec = ldq % 4 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0;
  float4 qv[NQ];
#pragma unroll
  for (int i = 0; i < NQ; ++i) {
    const int r = i * RPP + lane / QC, d = (lane % QC) * 4;
    qv[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (r < nrows && d < hd) {  // hd % 8 == 0: the chunk is whole
      const float* qr = q + (rows ? z : r / G) * ldq + int64_t(kvh * G + r % G) * hd + d;
      qv[i] = qvec ? *reinterpret_cast<const float4*>(qr) : make_float4(qr[0], qr[1], qr[2], qr[3]);
    }
  }
  if (!early) {
    if (k_begin < k_end) load_tile(k_begin, 0);
    cp_async_commit();
  }

#pragma unroll
  for (int i = 0; i < NQ; ++i) {
    const int r = i * RPP + lane / QC, d = (lane % QC) * 4;
    const float v[4] = {qv[i].x * qscale, qv[i].y * qscale, qv[i].z * qscale, qv[i].w * qscale};
    const uint32_t hi0 = pack_bf16x2(v[0], v[1]), hi1 = pack_bf16x2(v[2], v[3]);
    const uint32_t lo0 = pack_bf16x2(v[0] - __uint_as_float(hi0 << 16), v[1] - __uint_as_float(hi0 & 0xffff0000u));
    const uint32_t lo1 = pack_bf16x2(v[2] - __uint_as_float(hi1 << 16), v[3] - __uint_as_float(hi1 & 0xffff0000u));
    *reinterpret_cast<uint2*>(&Qs[0][r * LD + d]) = make_uint2(hi0, hi1);
    *reinterpret_cast<uint2*>(&Qs[1][r * LD + d]) = make_uint2(lo0, lo1);
  }
  __syncwarp();
  uint32_t qf[2][HDP / 16][4];
#pragma unroll
  for (int part = 0; part < 2; ++part)
#pragma unroll
    for (int kk = 0; kk < HDP / 16; ++kk) {
      const bf16* qa = &Qs[part][gq * LD + 2 * c4 + kk * 16];
      qf[part][kk][0] = *reinterpret_cast<const uint32_t*>(qa);
      qf[part][kk][1] = *reinterpret_cast<const uint32_t*>(qa + 8 * LD);
      qf[part][kk][2] = *reinterpret_cast<const uint32_t*>(qa + 8);
      qf[part][kk][3] = *reinterpret_cast<const uint32_t*>(qa + 8 * LD + 8);
    }

  float o[HDP / 8][4];
#pragma unroll
  for (int i = 0; i < HDP / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
  const int64_t last_lo = n_past + gq / G, last_hi = n_past + (gq + 8) / G;  // last visible key per row
  const int64_t vis_lo = min(last_lo, k_end - 1), vis_hi = min(last_hi, k_end - 1);  // ... in this range

  int buf = 0;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK, buf ^= 1) {
    if (k0 + BK < k_end) {
      load_tile(k0 + BK, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncwarp();
    float s[BK / 8][4];
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HDP / 16; ++kk)
#pragma unroll
      for (int part = 0; part < 2; ++part)
#pragma unroll
        for (int nt = 0; nt < BK / 8; ++nt) {
          const bf16* kr = &Ks[buf][(nt * 8 + gq) * LD + kk * 16 + 2 * c4];
          mma_bf16(s[nt], qf[part][kk], *reinterpret_cast<const uint32_t*>(kr),
                   *reinterpret_cast<const uint32_t*>(kr + 8));
        }
    mask_keys_after(s, k0, c4, vis_lo, vis_hi);
    float mx[2];
    online_softmax_step(s, mrow, lrow, o, mx);
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t pa[4], pl[4];
      probs_bf16<true>(s[2 * kk], s[2 * kk + 1], mx, lrow, pa, pl);
      const bf16* vrow = &Vs[buf][(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8];
#pragma unroll
      for (int dt = 0; dt < HDP / 16; ++dt) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, vrow + dt * 16);
        mma_bf16(o[2 * dt], pa, vf[0], vf[1]);
        mma_bf16(o[2 * dt + 1], pa, vf[2], vf[3]);
        mma_bf16(o[2 * dt], pl, vf[0], vf[1]);
        mma_bf16(o[2 * dt + 1], pl, vf[2], vf[3]);
      }
    }
    __syncwarp();  // the buffer just read is the next load's target
  }
  store_decode_partial<HDP>(o, mrow, lrow, nrows, rows, z, H, G, kvh, nsplit, split, hd, ml, pacc);
}

}  // namespace
}  // namespace fh1::cuda
