// The tensor-core decode attention kernel over 8-bit KV caches (quant/kv_q8.h), for
// cuda_attention.cu alone (an anonymous namespace), which launches it and merges its partial
// results (the same as attn_decode_mma_kernel's: cuda_attention_decode_mma.cuh).
#pragma once

#include <cfloat>
#include <cstdint>

#include <cuda_fp16.h>

#include "kernels/cuda/cuda_attention_common.cuh"
#include "kernels/cuda/cuda_kv.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace fh1::cuda {
namespace {

// Split-KV, one warp per (key range, kv head [, sequence]); the M = 16 rows of the MMAs are the
// query heads of one KV group times the queries, as in the bf16 kernel. What differs is how few
// instructions a key takes, so that the kernel runs at the bandwidth of half the bytes (its
// first form widened both caches to bf16 through float32 in shared memory and ran the bf16
// kernel's split products: bound by instruction issue, slower than bf16 caches):
//  - S = Q K^T in fp16 MMAs with the keys' integers as they are (exact in fp16): each lane reads
//    the bytes of its B fragments straight from the staged tile (8 bytes of a key for two k16
//    steps of one block of 32) and turns them into fp16 pairs with a byte permute and a
//    subtraction (0x64xx is 1024 + xx). The d order inside a block is permuted to make those
//    bytes contiguous, and Q's fragments are read in the same order. Each block of the head
//    sums into its own accumulator, times the key's scale for that block into S (float32).
//  - O += P V in fp16 MMAs: V widened to fp16 (integer times the block's scale, rounded once)
//    in shared memory, read transposed by ldmatrix; P one fp16 part.
// Operands are the fp16 prefill kernel's: Q, P and V to 11 bits (the caches' own error is 8).
// Tiles of BK keys and their scales come by cp.async, NST in flight (16 x 2 by default:
// decode_q8_kernel in cuda_attention.cu).

__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(addr), "l"(src), "r"(valid ? 4 : 0));
}

__device__ __forceinline__ uint32_t h2_bits(__half2 h) { return *reinterpret_cast<const uint32_t*>(&h); }
__device__ __forceinline__ __half2 bits_h2(uint32_t u) { return *reinterpret_cast<const __half2*>(&u); }

// Four signed bytes (lowest first) as two fp16 pairs, exactly: lo = (y0, y1), hi = (y2, y3).
__device__ __forceinline__ void i8x4_to_f16x4(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t u = w ^ 0x80808080u;  // y + 128 per byte
  const __half2 bias = __half2half2(__ushort_as_half(0x6480));  // 1024 + 128
  lo = h2_bits(__hsub2(bits_h2(__byte_perm(u, 0x64646464u, 0x4140)), bias));
  hi = h2_bits(__hsub2(bits_h2(__byte_perm(u, 0x64646464u, 0x4342)), bias));
}

template <int HDP, int QB, int BK, int NST>  // QB: values per scale (16 or 32; the row's kv_q8_block)
__global__ void __launch_bounds__(32, BK == 16 ? 12 : 8)  // 12: 168 registers, 3 warps a scheduler (not 2)
    attn_decode_q8_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const void* __restrict__ kc,
                          const void* __restrict__ vc, int64_t n_past_host, const int64_t* __restrict__ n_past_dev,
                          const void* const* __restrict__ kcs, const void* const* __restrict__ vcs,
                          const int64_t* __restrict__ n_pasts, int H, int Hkv, int hd, float scale, int nsplit,
                          float* __restrict__ ml, float* __restrict__ pacc) {
  static_assert(QB == 16 || QB == 32, "blocks of 16 or 32 values");
  static_assert(BK == 16 || BK == 32, "tiles of 16 or 32 keys");
  constexpr int NT = BK / 8;
  constexpr int SR = HDP + 32;  // a staged row's bytes: 8-byte reads of 4 rows at once hit distinct banks
  constexpr int LD = HDP + 8;   // the fp16 V tile's row
  constexpr int NS = HDP / QB;  // scales of a head's row, at most
  constexpr int C16 = HDP / 16;
  constexpr int KS = HDP / 16;  // k16 steps of S = Q K^T
  __shared__ __align__(16) uint8_t stage[NST][2][BK * SR];  // [stage][K, V][key * SR + byte]
  __shared__ __align__(16) float scl[NST][2][BK * NS];      // [stage][K, V][key * NS + block]
  __shared__ __align__(16) __half Vs[BK * LD];
  const int split = blockIdx.x, kvh = blockIdx.y;
  const int64_t z = blockIdx.z;
  const bool rows = kcs != nullptr;  // rows mode: sequence z, one query, its own caches
  const int G = H / Hkv;
  const int lane = threadIdx.x, gq = lane >> 2, c4 = lane & 3;
  const float qscale = scale * 1.4426950408889634f;
  const int64_t Tq = rows ? 1 : T;
  const int nrows = static_cast<int>(G * Tq);
  if (rows) {
    kc = kcs[z];
    vc = vcs[z];
  }
  const int64_t n_past = rows ? n_pasts[z] : (n_past_dev ? *n_past_dev : n_past_host);
  const int64_t n_keys = n_past + Tq;
  const int64_t chunk = (n_keys + nsplit - 1) / nsplit;
  const int64_t k_begin = int64_t(split) * chunk;
  const int64_t k_end = min(k_begin + chunk, n_keys);
  const int64_t width = int64_t(Hkv) * hd;
  const int64_t rbytes = kv_q8_row_bytes_of(width);
  const int64_t sat = kv_q8_scales_at_of(width);
  const int nsh = hd / QB, sb0 = kvh * hd / QB;  // this head's blocks
  const uint8_t* kq = static_cast<const uint8_t*>(kc);
  const uint8_t* vq = static_cast<const uint8_t*>(vc);

  auto load_tile = [&](int64_t k0, int st) {
#pragma unroll
    for (int i = 0; i < BK * C16 / 32; ++i) {  // HDP >= 32: whole passes
      const int e = lane + 32 * i, r = e / C16, d = (e % C16) * 16;
      const int64_t key = k0 + r;
      const bool ok = key < k_end && d < hd;
      const int64_t off = ok ? key * rbytes + int64_t(kvh) * hd + d : 0;
      cp_async16(&stage[st][0][r * SR + d], kq + off, ok);
      cp_async16(&stage[st][1][r * SR + d], vq + off, ok);
    }
#pragma unroll
    for (int i = 0; i < (BK * NS + 31) / 32; ++i) {
      const int e = lane + 32 * i, r = e / NS, j = e % NS;
      if (e >= BK * NS) break;
      const int64_t key = k0 + r;
      const bool ok = key < k_end && j < nsh;
      const int64_t off = ok ? key * rbytes + sat + 4 * int64_t(sb0 + j) : 0;
      cp_async4(&scl[st][0][e], kq + off, ok);
      cp_async4(&scl[st][1][e], vq + off, ok);
    }
  };
  // The first tile before the wait when it holds only the earlier steps' keys (the kernel
  // before writes the new ones, and the query rows).
  const bool early = k_begin < k_end && min(k_begin + BK, k_end) <= n_past;
  if (early) {
    load_tile(k_begin, 0);
    cp_async_commit();
  }
  FH1_PDL_ENTER();
  // The query rows, every load in flight at once: lane (gq, c4) holds rows gq and gq + 8 at the
  // d of its A fragments, 4 values a k16 step (the block-permuted order of the K bytes).
  auto qoff = [&](int kk) { return QB == 32 ? 32 * (kk >> 1) + 8 * c4 + 4 * (kk & 1) : 16 * kk + 4 * c4; };
  const bool qvec = ldq % 4 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0;
  float4 qv[2][KS];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      const int r = gq + 8 * h, d = qoff(kk);
      qv[h][kk] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < nrows && d < hd) {
        const float* qr = q + (rows ? z : r / G) * ldq + int64_t(kvh * G + r % G) * hd + d;
        qv[h][kk] = qvec ? *reinterpret_cast<const float4*>(qr) : make_float4(qr[0], qr[1], qr[2], qr[3]);
      }
    }
  if (!early) {
    if (k_begin < k_end) load_tile(k_begin, 0);
    cp_async_commit();
  }
#pragma unroll
  for (int i = 1; i < NST - 1; ++i) {
    const int64_t k0 = k_begin + int64_t(i) * BK;
    if (k0 < k_end) load_tile(k0, i);
    cp_async_commit();
  }
  uint32_t qf[KS][4];
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    const float4 a = qv[0][kk], b = qv[1][kk];
    qf[kk][0] = pack_f16x2(a.x * qscale, a.y * qscale);
    qf[kk][1] = pack_f16x2(b.x * qscale, b.y * qscale);
    qf[kk][2] = pack_f16x2(a.z * qscale, a.w * qscale);
    qf[kk][3] = pack_f16x2(b.z * qscale, b.w * qscale);
  }

  float o[HDP / 8][4];
#pragma unroll
  for (int i = 0; i < HDP / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
  const int64_t last_lo = n_past + gq / G, last_hi = n_past + (gq + 8) / G;  // last visible key per row
  const int64_t vis_lo = min(last_lo, k_end - 1), vis_hi = min(last_hi, k_end - 1);  // ... in this range
  const __half* vfrag = &Vs[((lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8];

  int st = 0;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
    {  // the tile NST - 1 ahead into the stage read the step before
      const int64_t kn = k0 + int64_t(NST - 1) * BK;
      if (kn < k_end) load_tile(kn, (st + NST - 1) % NST);
      cp_async_commit();
    }
    cp_async_wait<NST - 1>();
    __syncwarp();
    const uint8_t* kst = stage[st][0];
    const uint8_t* vst = stage[st][1];
    const float* ksc = scl[st][0];
    const float* vsc = scl[st][1];
    // V: bytes -> fp16 values (integer times scale) in the tile the ldmatrix reads.
#pragma unroll
    for (int i = 0; i < BK * C16 / 32; ++i) {
      const int e = lane + 32 * i, r = e / C16, d = (e % C16) * 16;
      uint4 lo = make_uint4(0u, 0u, 0u, 0u), hi = lo;
      if (d < hd) {
        const uint4 raw = *reinterpret_cast<const uint4*>(vst + r * SR + d);
        const __half2 s2 = __float2half2_rn(vsc[r * NS + d / QB]);
        uint32_t w[8];
        i8x4_to_f16x4(raw.x, w[0], w[1]);
        i8x4_to_f16x4(raw.y, w[2], w[3]);
        i8x4_to_f16x4(raw.z, w[4], w[5]);
        i8x4_to_f16x4(raw.w, w[6], w[7]);
#pragma unroll
        for (int i = 0; i < 8; ++i) w[i] = h2_bits(__hmul2(bits_h2(w[i]), s2));
        lo = make_uint4(w[0], w[1], w[2], w[3]);
        hi = make_uint4(w[4], w[5], w[6], w[7]);
      }
      *reinterpret_cast<uint4*>(&Vs[r * LD + d]) = lo;
      *reinterpret_cast<uint4*>(&Vs[r * LD + d + 8]) = hi;
    }
    // S = Q K^T, a block of the head at a time, times the keys' scales.
    float s[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
      const uint8_t* krow = kst + (nt * 8 + gq) * SR;
      const float* sca = ksc + (nt * 8 + 2 * c4) * NS;  // the lane's two keys' scales
#pragma unroll
      for (int b = 0; b < NS; ++b) {
        if (b * QB >= hd) break;
        float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if constexpr (QB == 32) {
          const uint2 w = *reinterpret_cast<const uint2*>(krow + 32 * b + 8 * c4);
          uint32_t k0lo, k0hi, k1lo, k1hi;
          i8x4_to_f16x4(w.x, k0lo, k0hi);
          i8x4_to_f16x4(w.y, k1lo, k1hi);
          mma_f16(t, qf[2 * b], k0lo, k0hi);
          mma_f16(t, qf[2 * b + 1], k1lo, k1hi);
        } else {
          uint32_t klo, khi;
          i8x4_to_f16x4(*reinterpret_cast<const uint32_t*>(krow + 16 * b + 4 * c4), klo, khi);
          mma_f16(t, qf[b], klo, khi);
        }
        const float sa = sca[b], sb = sca[NS + b];
        s[nt][0] = fmaf(sa, t[0], s[nt][0]);
        s[nt][1] = fmaf(sb, t[1], s[nt][1]);
        s[nt][2] = fmaf(sa, t[2], s[nt][2]);
        s[nt][3] = fmaf(sb, t[3], s[nt][3]);
      }
    }
    mask_keys_after(s, k0, c4, vis_lo, vis_hi);
    // The online softmax (online_softmax_step's), the accumulators rescaled only when a row's
    // maximum moved in some lane (long ranges: rarely; times 1 changes nothing).
    float mx[2], corr[2];
    tile_row_max(s, mrow, mx);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float mu = mx[r] == -INFINITY ? 0.0f : mx[r];
      corr[r] = exp2f(mrow[r] - mu);
      mrow[r] = mx[r];
      mx[r] = mu;
      lrow[r] *= corr[r];
    }
    if (__any_sync(0xffffffffu, corr[0] != 1.0f || corr[1] != 1.0f)) rescale_rows(o, corr);
    uint32_t pa[BK / 16][4];  // the probabilities as A fragments, one a k16 step of keys
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      const float(&s0)[4] = s[2 * kk];
      const float(&s1)[4] = s[2 * kk + 1];
      const float p00 = exp2f(s0[0] - mx[0]), p01 = exp2f(s0[1] - mx[0]);
      const float p02 = exp2f(s0[2] - mx[1]), p03 = exp2f(s0[3] - mx[1]);
      const float p10 = exp2f(s1[0] - mx[0]), p11 = exp2f(s1[1] - mx[0]);
      const float p12 = exp2f(s1[2] - mx[1]), p13 = exp2f(s1[3] - mx[1]);
      lrow[0] += p00 + p01 + p10 + p11;
      lrow[1] += p02 + p03 + p12 + p13;
      pa[kk][0] = pack_f16x2(p00, p01);
      pa[kk][1] = pack_f16x2(p02, p03);
      pa[kk][2] = pack_f16x2(p10, p11);
      pa[kk][3] = pack_f16x2(p12, p13);
    }
    __syncwarp();  // the V tile's stores before the ldmatrix
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk)
#pragma unroll
      for (int dt = 0; dt < HDP / 16; ++dt) {
        if (dt * 16 >= hd) break;
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, vfrag + kk * 16 * LD + dt * 16);
        mma_f16(o[2 * dt], pa[kk], vf[0], vf[1]);
        mma_f16(o[2 * dt + 1], pa[kk], vf[2], vf[3]);
      }
    __syncwarp();  // this stage and the V tile are the next steps' targets
    st = st + 1 == NST ? 0 : st + 1;
  }
  cp_async_wait<0>();
  store_decode_partial<HDP>(o, mrow, lrow, nrows, rows, z, H, G, kvh, nsplit, split, hd, ml, pacc);
}

}  // namespace
}  // namespace fh1::cuda
