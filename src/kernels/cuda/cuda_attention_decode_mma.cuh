// The tensor-core decode attention kernel (bf16 and 8-bit KV caches), for cuda_attention.cu
// alone (an anonymous namespace), which launches it and merges its partial results.
#pragma once

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/cuda_attention_common.cuh"
#include "kernels/cuda/cuda_kv.cuh"
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
//
// Q8 (8-bit caches; decode_q8_mma_ok: hd % 16 == 0 and whole blocks of 16 or 32 values per
// head): the tile's bytes and scales come by cp.async into a staging buffer (double-buffered:
// the second is the query rows' space, free once their fragments are in registers), and are
// widened to bf16 (value times scale, rounded) into the one bf16 tile the MMAs read. The
// widening stays off the conversion unit but for the bf16 packing: a byte becomes a float by
// the bits 2^23 + (q + 128) (a byte permute) minus 2^23 + 128, exactly.
constexpr int kDecBK = 32;    // keys per tile
constexpr int kDecQ8BK = 16;  // ... of the 8-bit form: half the shared memory, 8 blocks an SM instead of 5

__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(addr), "l"(src), "r"(valid ? 4 : 0));
}
// Four signed bytes (w, lowest first) times sc, as two bf16 pairs.
__device__ __forceinline__ uint2 widen4(uint32_t w, float sc) {
  const uint32_t u = w ^ 0x80808080u;  // q + 128 per byte
  float f[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    f[i] = (__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540u + i)) - 8388736.0f) * sc;
  return make_uint2(pack_bf16x2(f[0], f[1]), pack_bf16x2(f[2], f[3]));
}

template <int HDP, bool Q8, int BK>  // BK: keys per tile (kDecBK; 8-bit: kDecQ8BK)
__global__ void __launch_bounds__(32)
    attn_decode_mma_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const void* __restrict__ kc,
                           const void* __restrict__ vc, int64_t n_past_host, const int64_t* __restrict__ n_past_dev,
                           const void* const* __restrict__ kcs, const void* const* __restrict__ vcs,
                           const int64_t* __restrict__ n_pasts, int H, int Hkv, int hd, float scale, int nsplit,
                           float* __restrict__ ml, float* __restrict__ pacc) {
  constexpr int LD = HDP + 8;
  constexpr int CH = HDP / 8;
  constexpr int NB = Q8 ? 1 : 2;  // bf16 tiles
  constexpr int NS = 8;           // Q8: scales of one head's values in a row, at most (hd / 16)
  constexpr int C16 = HDP / 16;   // Q8: 16-byte chunks of a staged row
  static_assert(2 * 16 * LD * 2 >= 2 * BK * HDP, "the query rows' space holds a staged tile");
  __shared__ __align__(16) bf16 Qs[2][16 * LD];
  __shared__ __align__(16) bf16 Ks[NB][BK * LD];
  __shared__ __align__(16) bf16 Vs[NB][BK * LD];
  __shared__ __align__(16) uint8_t Q8stage[Q8 ? 2 * BK * HDP : 16];  // staging buffer 0: K rows, V rows
  __shared__ float Q8scale[Q8 ? 2 : 1][2][Q8 ? BK * NS : 1];           // [buffer][K, V][key * NS + block]
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
  // Q8: a row's bytes, where its scales start, and this head's blocks (qb = 1 << qshift values
  // each, hd / qb of them from block kvh * hd / qb).
  const int64_t rbytes = Q8 ? kv_q8_row_bytes_of(ldkv) : 0;
  const int64_t sat = Q8 ? kv_q8_scales_at_of(ldkv) : 0;
  const int qshift = Q8 ? __ffs(kv_q8_block_of(ldkv)) - 1 : 0;
  const int nsh = hd >> qshift, sb0 = (kvh * hd) >> qshift;
  auto stage = [&](int buf) { return buf ? reinterpret_cast<uint8_t*>(&Qs[0][0]) : Q8stage; };

  auto load_tile = [&](int64_t k0, int buf) {
    if constexpr (Q8) {
      const uint8_t* kq = static_cast<const uint8_t*>(kc);
      const uint8_t* vq = static_cast<const uint8_t*>(vc);
      uint8_t* st = stage(buf);
      for (int e = lane; e < BK * C16; e += 32) {
        const int r = e / C16, d = (e - r * C16) * 16;
        const int64_t key = k0 + r;
        const bool ok = key < k_end && d < hd;
        const int64_t off = ok ? key * rbytes + int64_t(kvh) * hd + d : 0;
        cp_async16(st + r * HDP + d, kq + off, ok);
        cp_async16(st + (BK + r) * HDP + d, vq + off, ok);
      }
      for (int e = lane; e < BK * NS; e += 32) {
        const int r = e / NS, j = e - r * NS;
        const int64_t key = k0 + r;
        const bool ok = key < k_end && j < nsh;
        const int64_t off = ok ? key * rbytes + sat + 4 * int64_t(sb0 + j) : 0;
        cp_async4(&Q8scale[buf][0][e], kq + off, ok);
        cp_async4(&Q8scale[buf][1][e], vq + off, ok);
      }
    } else {
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
    }
  };
  // Q8: the staged tile `buf` widened into the bf16 tile (zeros past hd and past the range).
  auto widen_tile = [&](int buf) {
    const uint8_t* st = stage(buf);
#pragma unroll 4
    for (int e = lane; e < 2 * BK * C16; e += 32) {
      const int w = e >= BK * C16 ? 1 : 0;  // 0: K, 1: V
      const int i = e - w * BK * C16;
      const int r = i / C16, d = (i - r * C16) * 16;
      uint4 lo = make_uint4(0u, 0u, 0u, 0u), hi = lo;
      if (d < hd) {
        const uint4 raw = *reinterpret_cast<const uint4*>(st + (w * BK + r) * HDP + d);
        const float sc = Q8scale[buf][w][r * NS + (d >> qshift)];
        const uint2 a = widen4(raw.x, sc), b = widen4(raw.y, sc), c = widen4(raw.z, sc), f = widen4(raw.w, sc);
        lo = make_uint4(a.x, a.y, b.x, b.y);
        hi = make_uint4(c.x, c.y, f.x, f.y);
      }
      bf16* dst = (w ? &Vs[0][0] : &Ks[0][0]) + r * LD + d;
      *reinterpret_cast<uint4*>(dst) = lo;
      *reinterpret_cast<uint4*>(dst + 8) = hi;
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

  __syncwarp();  // Q8: the query rows' space is the second staging buffer from here on
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
    if constexpr (Q8) {
      widen_tile(buf);
      __syncwarp();
    }
    const int tb = Q8 ? 0 : buf;  // the bf16 tile
    float s[BK / 8][4];
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HDP / 16; ++kk)
#pragma unroll
      for (int part = 0; part < 2; ++part)
#pragma unroll
        for (int nt = 0; nt < BK / 8; ++nt) {
          const bf16* kr = &Ks[tb][(nt * 8 + gq) * LD + kk * 16 + 2 * c4];
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
      const bf16* vrow = &Vs[tb][(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8];
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
    __syncwarp();  // the buffer just read is the next load's (or widening's) target
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
  }
  constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = gq + 8 * r;
    if (row >= nrows) continue;
    const int64_t qrow = rows ? z : row / G;
    const int64_t idx = (qrow * H + kvh * G + row % G) * nsplit + split;
    if (c4 == 0) {
      ml[2 * idx] = mrow[r] == -INFINITY ? -FLT_MAX : mrow[r] * kLn2;
      ml[2 * idx + 1] = lrow[r];
    }
    float* pr = pacc + idx * hd;
#pragma unroll
    for (int i = 0; i < HDP / 8; ++i) {
      const int d = i * 8 + 2 * c4;
      if (d < hd) pr[d] = o[i][2 * r];
      if (d + 1 < hd) pr[d + 1] = o[i][2 * r + 1];
    }
  }
}

}  // namespace
}  // namespace fh1::cuda
