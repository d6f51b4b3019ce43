// Causal grouped-query attention on the GPU (online softmax, float32 accumulation).
//  - many queries (prefill), default: a flash-attention kernel on the tensor cores in TF32
//    (mma.sync m16n8k8; Q, K, V and the probabilities rounded to TF32's 10-bit mantissa, every
//    sum in float32). One block of 4 warps per (64-query tile, head); each warp owns 16 queries;
//    K and V tiles pass through shared memory. About 1e-3 of rms from float32 attention.
//  - many queries, exact mode (set_attention_tf32(false) / FH1_CUDA_ATTN=f32): float32 SIMT,
//    one block per (32-query tile, head); 4 lanes share a query.
//  - few queries (decode): split-KV. One block per (key range, kv head, query): every key is read
//    once for all query heads of its group (up to 8 per block); two keys per warp (16 lanes a
//    key, float4 loads). Partial (max, sum, acc) per range go to scratch and a second kernel
//    merges them. The number of ranges can be fixed from a bucket of the context length and the
//    length itself read from device memory, so that a captured decode graph replays at any
//    length within its bucket.
#include <algorithm>
#include <cfloat>
#include <cstdlib>

#include "kernels/cuda/cuda_ops.h"
#include "util/error.h"

namespace fh1::cuda {
namespace {

constexpr int kTileQ = 32;  // queries per block
constexpr int kTileK = 32;  // keys per shared-memory tile
constexpr int kSplitWarps = 4;
constexpr int kMaxDecodeT = 8;  // at most this many queries: the split-KV kernel

template <int MPL>  // dims per lane: hd <= 4 * MPL; shared rows padded to 4 * MPL
__global__ void __launch_bounds__(kTileQ * 4)
    attn_tile_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const float* __restrict__ kc,
                     const float* __restrict__ vc, int64_t n_past, int H, int Hkv, int hd, float scale,
                     float* __restrict__ out) {
  FH1_PDL_ENTER();
  constexpr int HDP = 4 * MPL;
  extern __shared__ float sm[];
  float* Ks = sm;
  float* Vs = sm + kTileK * HDP;
  const int h = blockIdx.y, kvh = h / (H / Hkv);
  const int qi = threadIdx.x >> 2, j = threadIdx.x & 3;
  const int64_t t = int64_t(blockIdx.x) * kTileQ + qi;
  const bool active = t < T;
  const int64_t ldkv = int64_t(Hkv) * hd;

  float qr[MPL], acc[MPL];
#pragma unroll
  for (int i = 0; i < MPL; ++i) {
    const int d = i * 4 + j;
    qr[i] = (active && d < hd) ? q[t * ldq + int64_t(h) * hd + d] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -FLT_MAX, l = 0.0f;
  const int64_t last_t = min(T, int64_t(blockIdx.x) * kTileQ + kTileQ) - 1;
  const int64_t n_keys = n_past + last_t + 1;
  const int64_t my_last = active ? n_past + t : -1;

  for (int64_t k0 = 0; k0 < n_keys; k0 += kTileK) {
    __syncthreads();
    for (int e = threadIdx.x; e < kTileK * HDP; e += blockDim.x) {
      const int r = e / HDP, d = e - r * HDP;
      const int64_t key = k0 + r;
      const bool ok = key < n_keys && d < hd;
      Ks[e] = ok ? kc[key * ldkv + int64_t(kvh) * hd + d] : 0.0f;
      Vs[e] = ok ? vc[key * ldkv + int64_t(kvh) * hd + d] : 0.0f;
    }
    __syncthreads();
    float sc[kTileK];
    float tile_max = -FLT_MAX;
#pragma unroll
    for (int r = 0; r < kTileK; ++r) {
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < MPL; ++i) part += qr[i] * Ks[r * HDP + i * 4 + j];
      part += __shfl_xor_sync(0xffffffffu, part, 1);
      part += __shfl_xor_sync(0xffffffffu, part, 2);
      sc[r] = (k0 + r <= my_last) ? part : -FLT_MAX;
      tile_max = fmaxf(tile_max, sc[r]);
    }
    if (k0 > my_last) continue;  // nothing visible in this tile for this query
    const float m_new = fmaxf(m, tile_max);
    const float corr = __expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int i = 0; i < MPL; ++i) acc[i] *= corr;
#pragma unroll
    for (int r = 0; r < kTileK; ++r) {
      const float p = (k0 + r <= my_last) ? __expf(sc[r] - m_new) : 0.0f;
      l += p;
#pragma unroll
      for (int i = 0; i < MPL; ++i) acc[i] += p * Vs[r * HDP + i * 4 + j];
    }
    m = m_new;
  }
  if (active) {
    const float inv = 1.0f / l;
#pragma unroll
    for (int i = 0; i < MPL; ++i) {
      const int d = i * 4 + j;
      if (d < hd) out[t * int64_t(H) * hd + int64_t(h) * hd + d] = acc[i] * inv;
    }
  }
}

// Partial results: ml[2 * idx] = max, ml[2 * idx + 1] = sum; pacc[idx * hd + d], idx = (t * H + h) * nsplit + split.
template <int DPL>  // dims per lane: hd <= 32 * DPL
__global__ void __launch_bounds__(kSplitWarps * 32)
    attn_split_kernel(const float* __restrict__ q, int64_t ldq, const float* __restrict__ kc,
                      const float* __restrict__ vc, int64_t n_past, int H, int Hkv, int hd, float scale,
                      int64_t chunk, int nsplit, float* __restrict__ ml, float* __restrict__ pacc) {
  FH1_PDL_ENTER();
  __shared__ float s_m[kSplitWarps], s_l[kSplitWarps];
  __shared__ float s_acc[kSplitWarps][32 * DPL];
  const int split = blockIdx.x, h = blockIdx.y;
  const int64_t t = blockIdx.z;
  const int kvh = h / (H / Hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t ldkv = int64_t(Hkv) * hd;
  const int64_t k_begin = int64_t(split) * chunk;
  const int64_t k_end = min(k_begin + chunk, n_past + t + 1);

  float qr[DPL], acc[DPL];
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + 32 * i;
    qr[i] = d < hd ? q[t * ldq + int64_t(h) * hd + d] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -FLT_MAX, l = 0.0f;
  const float* kb = kc + int64_t(kvh) * hd;
  const float* vb = vc + int64_t(kvh) * hd;
  for (int64_t key = k_begin + warp; key < k_end; key += kSplitWarps) {
    float part = 0.0f, vv[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + 32 * i;
      part += d < hd ? qr[i] * kb[key * ldkv + d] : 0.0f;
      vv[i] = d < hd ? vb[key * ldkv + d] : 0.0f;
    }
    for (int o = 16; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
    const float m_new = fmaxf(m, part);
    const float corr = __expf(m - m_new), p = __expf(part - m_new);
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[i] = acc[i] * corr + p * vv[i];
    m = m_new;
  }
  if (lane == 0) { s_m[warp] = m; s_l[warp] = l; }
#pragma unroll
  for (int i = 0; i < DPL; ++i) s_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float M = -FLT_MAX;
  for (int w = 0; w < kSplitWarps; ++w) M = fmaxf(M, s_m[w]);
  const int64_t idx = (t * H + h) * nsplit + split;
  if (threadIdx.x == 0) {
    float L = 0.0f;
    for (int w = 0; w < kSplitWarps; ++w) L += s_l[w] * __expf(s_m[w] - M);
    ml[2 * idx] = M;
    ml[2 * idx + 1] = L;
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float a = 0.0f;
    for (int w = 0; w < kSplitWarps; ++w) a += s_acc[w][d] * __expf(s_m[w] - M);
    pacc[idx * hd + d] = a;
  }
}

// One block per (head, query row): the ranges' weights exp(m_s - M) computed once into shared
// memory (block-wide max and sum), then each thread sums its dims over the ranges.
__device__ float block_reduce(float v, bool is_max, float* red) {
  for (int o = 16; o > 0; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, u) : v + u;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : (is_max ? -FLT_MAX : 0.0f);
  for (int o = 16; o > 0; o >>= 1) {
    const float u = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, u) : v + u;
  }
  return v;
}

__global__ void attn_merge_kernel(const float* __restrict__ ml, const float* __restrict__ pacc, int H, int hd,
                                  int nsplit, float* __restrict__ out) {
  FH1_PDL_ENTER();
  extern __shared__ float wsplit[];  // nsplit weights
  __shared__ float red[32];
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  const int64_t base = (t * H + h) * nsplit;
  float M = -FLT_MAX;
  for (int s = threadIdx.x; s < nsplit; s += blockDim.x) M = fmaxf(M, ml[2 * (base + s)]);
  M = block_reduce(M, true, red);
  float L = 0.0f;
  for (int s = threadIdx.x; s < nsplit; s += blockDim.x) {
    const float e = __expf(ml[2 * (base + s)] - M);
    wsplit[s] = e;
    L += ml[2 * (base + s) + 1] * e;
  }
  L = block_reduce(L, false, red);  // its barriers also publish wsplit
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float a = 0.0f;
#pragma unroll 8
    for (int s = 0; s < nsplit; ++s) a += pacc[(base + s) * hd + d] * wsplit[s];
    out[t * int64_t(H) * hd + int64_t(h) * hd + d] = a / L;
  }
}

// ---- decode: split-KV, one block per (key range, kv head [, head group], query) ----
// Lanes 0-15 take one key, lanes 16-31 the next; lane j of a half holds dims 4*(j + 16 i) .. +3.
// Needs hd % 4 == 0 and 16-byte aligned cache rows (else the per-head kernel above runs).
constexpr int kDecWarps = 4;

template <int V4, int GM>  // float4s per lane: hd <= 64 * V4; at most GM query heads per block
__global__ void __launch_bounds__(kDecWarps * 32)
    attn_decode_gqa_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const float* __restrict__ kc,
                           const float* __restrict__ vc, int64_t n_past_host, const int64_t* __restrict__ n_past_dev,
                           const float* const* __restrict__ kcs, const float* const* __restrict__ vcs,
                           const int64_t* __restrict__ n_pasts, int H, int Hkv, int hd, float scale, int nsplit,
                           float* __restrict__ ml, float* __restrict__ pacc) {
  constexpr int HDP = 64 * V4;
  constexpr int NPART = kDecWarps * 2;
  __shared__ __align__(16) float s_q[GM * HDP];
  __shared__ float s_m[NPART][GM], s_l[NPART][GM];
  __shared__ __align__(16) float s_acc[NPART][GM * HDP];
  const int G = H / Hkv;
  const int ngroups = (G + GM - 1) / GM;
  const int split = blockIdx.x, kvh = blockIdx.y / ngroups, hg = blockIdx.y % ngroups;
  const int h0 = kvh * G + hg * GM;
  const int g = min(GM, G - hg * GM);
  // Rows mode (kcs != null): query row z is sequence z's one new token, with its own caches.
  const int64_t z = blockIdx.z;
  const bool rows = kcs != nullptr;
  if (rows) {
    kc = kcs[z];
    vc = vcs[z];
  }
  const int64_t t = rows ? 0 : z;
  const int64_t Tq = rows ? 1 : T;
  const int64_t n_past = rows ? n_pasts[z] : (n_past_dev ? *n_past_dev : n_past_host);
  const int64_t chunk = (n_past + Tq + nsplit - 1) / nsplit;
  const int64_t k_begin = int64_t(split) * chunk;
  const int64_t k_end = min(k_begin + chunk, n_past + t + 1);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, half = lane >> 4, hl = lane & 15;
  const int64_t ldkv = int64_t(Hkv) * hd;
  FH1_PDL_ENTER();

  for (int e = threadIdx.x; e < GM * HDP; e += blockDim.x) {
    const int j = e / HDP, d = e - j * HDP;
    s_q[e] = (j < g && d < hd) ? q[z * ldq + int64_t(h0 + j) * hd + d] * scale : 0.0f;
  }
  __syncthreads();

  float4 acc[GM][V4];
  float m[GM], l[GM];
#pragma unroll
  for (int j = 0; j < GM; ++j) {
    m[j] = -FLT_MAX;
    l[j] = 0.0f;
#pragma unroll
    for (int i = 0; i < V4; ++i) acc[j][i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  const float* kb = kc + int64_t(kvh) * hd;
  const float* vb = vc + int64_t(kvh) * hd;
  auto load = [&](int64_t key, bool valid, float4 (&kv)[V4], float4 (&vv)[V4]) {
#pragma unroll
    for (int i = 0; i < V4; ++i) {
      const int d = 4 * (hl + 16 * i);
      const bool ok = valid && d < hd;
      kv[i] = ok ? __ldcs(reinterpret_cast<const float4*>(kb + key * ldkv + d)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      vv[i] = ok ? __ldcs(reinterpret_cast<const float4*>(vb + key * ldkv + d)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  };
  auto consume = [&](bool valid, const float4 (&kv)[V4], const float4 (&vv)[V4]) {
#pragma unroll
    for (int j = 0; j < GM; ++j) {
      if (j >= g) break;  // uniform in the block
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < V4; ++i) {
        const float4 qv = *reinterpret_cast<const float4*>(&s_q[j * HDP + 4 * (hl + 16 * i)]);
        part += qv.x * kv[i].x + qv.y * kv[i].y + qv.z * kv[i].z + qv.w * kv[i].w;
      }
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
      if (valid) {
        const float m_new = fmaxf(m[j], part);
        const float corr = __expf(m[j] - m_new), p = __expf(part - m_new);
        l[j] = l[j] * corr + p;
#pragma unroll
        for (int i = 0; i < V4; ++i) {
          acc[j][i].x = acc[j][i].x * corr + p * vv[i].x;
          acc[j][i].y = acc[j][i].y * corr + p * vv[i].y;
          acc[j][i].z = acc[j][i].z * corr + p * vv[i].z;
          acc[j][i].w = acc[j][i].w * corr + p * vv[i].w;
        }
        m[j] = m_new;
      }
    }
  };
  // Two key pairs per warp per iteration: both pairs' loads in flight before any arithmetic.
  constexpr int64_t kStride = 2 * kDecWarps;
  for (int64_t key0 = k_begin + 2 * warp; key0 < k_end; key0 += 2 * kStride) {
    const int64_t ka = key0 + half, kb2 = key0 + kStride + half;
    const bool va = ka < k_end, vb2 = kb2 < k_end;
    float4 k1[V4], v1[V4], k2[V4], v2[V4];
    load(ka, va, k1, v1);
    load(kb2, vb2, k2, v2);
    consume(va, k1, v1);
    consume(vb2, k2, v2);
  }
  const int part_id = warp * 2 + half;
#pragma unroll
  for (int j = 0; j < GM; ++j) {
    if (hl == 0) { s_m[part_id][j] = m[j]; s_l[part_id][j] = l[j]; }
#pragma unroll
    for (int i = 0; i < V4; ++i) *reinterpret_cast<float4*>(&s_acc[part_id][j * HDP + 4 * (hl + 16 * i)]) = acc[j][i];
  }
  __syncthreads();
  for (int j = 0; j < g; ++j) {
    float M = -FLT_MAX;
    for (int w = 0; w < NPART; ++w) M = fmaxf(M, s_m[w][j]);
    const int64_t idx = (z * H + h0 + j) * nsplit + split;
    if (threadIdx.x == 0) {
      float L = 0.0f;
      for (int w = 0; w < NPART; ++w) L += s_l[w][j] * __expf(s_m[w][j] - M);
      ml[2 * idx] = M;
      ml[2 * idx + 1] = L;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
      float a = 0.0f;
      for (int w = 0; w < NPART; ++w) a += s_acc[w][j * HDP + d] * __expf(s_m[w][j] - M);
      pacc[idx * hd + d] = a;
    }
  }
}

// ---- prefill: flash attention on the tensor cores (TF32) ----
constexpr int kFlashQ = 64;  // queries per block (16 per warp)

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Fragments (PTX m16n8k8 tf32; g = lane / 4, c = lane % 4): A a0 (g, c), a1 (g+8, c), a2 (g, c+4),
// a3 (g+8, c+4); B b0 (k c, n g), b1 (k c+4, n g); C c0 (g, 2c), c1 (g, 2c+1), c2 (g+8, 2c),
// c3 (g+8, 2c+1). For P V the 8 keys of a step are taken in the order 0,2,4,6,1,3,5,7, so the
// probabilities of S's C fragment are P's A fragment as they are (a0 = c0, a1 = c2, a2 = c1,
// a3 = c3) and V's B fragment reads keys 2c and 2c + 1.
template <int HDP, int BK>  // head dim padded (multiple of 32); keys per tile
__global__ void __launch_bounds__(128)
    attn_flash_tf32_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const float* __restrict__ kc,
                           const float* __restrict__ vc, int64_t n_past, int H, int Hkv, int hd, float scale,
                           bool vec, float* __restrict__ out) {
  FH1_PDL_ENTER();
  constexpr int LD = HDP + 4;  // padded rows: conflict-free fragment reads
  extern __shared__ float sm[];
  float* Qs = sm;
  float* Ks = Qs + kFlashQ * LD;
  float* Vs = Ks + BK * LD;
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest rows first
  const int h = blockIdx.y, kvh = h / (H / Hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, c4 = lane & 3;
  const int64_t q0 = int64_t(qt) * kFlashQ;
  const int64_t ldkv = int64_t(Hkv) * hd;
  const float qscale = scale * 1.4426950408889634f;  // scores in log2 units: exp2 below

  for (int e = threadIdx.x; e < kFlashQ * HDP; e += blockDim.x) {
    const int r = e / HDP, d = e - r * HDP;
    const int64_t t = q0 + r;
    const float v = (t < T && d < hd) ? q[t * ldq + int64_t(h) * hd + d] * qscale : 0.0f;
    Qs[r * LD + d] = __uint_as_float(to_tf32(v));
  }

  float o[HDP / 8][4];
#pragma unroll
  for (int i = 0; i < HDP / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
  const int64_t wq = q0 + warp * 16;  // this warp's first query
  const int64_t t_lo = wq + gq, t_hi = wq + gq + 8;
  const int64_t last_t = min(T, q0 + kFlashQ) - 1;
  const int64_t n_keys = n_past + last_t + 1;
  const float* kb = kc + int64_t(kvh) * hd;
  const float* vb = vc + int64_t(kvh) * hd;
  const float* qa = Qs + (warp * 16 + gq) * LD;

  for (int64_t k0 = 0; k0 < n_keys; k0 += BK) {
    __syncthreads();
    if (vec) {
      constexpr int R4 = HDP / 4;
      for (int e = threadIdx.x; e < BK * R4; e += blockDim.x) {
        const int r = e / R4, d = 4 * (e - r * R4);
        const int64_t key = k0 + r;
        float4 kv = make_float4(0.0f, 0.0f, 0.0f, 0.0f), vv = kv;
        if (key < n_keys && d < hd) {
          kv = *reinterpret_cast<const float4*>(kb + key * ldkv + d);
          vv = *reinterpret_cast<const float4*>(vb + key * ldkv + d);
        }
        float* ks = Ks + r * LD + d;
        float* vs = Vs + r * LD + d;
        ks[0] = __uint_as_float(to_tf32(kv.x)); ks[1] = __uint_as_float(to_tf32(kv.y));
        ks[2] = __uint_as_float(to_tf32(kv.z)); ks[3] = __uint_as_float(to_tf32(kv.w));
        vs[0] = __uint_as_float(to_tf32(vv.x)); vs[1] = __uint_as_float(to_tf32(vv.y));
        vs[2] = __uint_as_float(to_tf32(vv.z)); vs[3] = __uint_as_float(to_tf32(vv.w));
      }
    } else {
      for (int e = threadIdx.x; e < BK * HDP; e += blockDim.x) {
        const int r = e / HDP, d = e - r * HDP;
        const int64_t key = k0 + r;
        const bool ok = key < n_keys && d < hd;
        Ks[r * LD + d] = __uint_as_float(to_tf32(ok ? kb[key * ldkv + d] : 0.0f));
        Vs[r * LD + d] = __uint_as_float(to_tf32(ok ? vb[key * ldkv + d] : 0.0f));
      }
    }
    __syncthreads();
    if (k0 > n_past + wq + 15) continue;  // every key of this tile is in this warp's future

    float s[BK / 8][4];
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HDP; kk += 8) {
      const uint32_t a0 = __float_as_uint(qa[kk + c4]), a1 = __float_as_uint(qa[8 * LD + kk + c4]);
      const uint32_t a2 = __float_as_uint(qa[kk + c4 + 4]), a3 = __float_as_uint(qa[8 * LD + kk + c4 + 4]);
#pragma unroll
      for (int nt = 0; nt < BK / 8; ++nt) {
        const float* kr = Ks + (nt * 8 + gq) * LD + kk + c4;
        mma_tf32(s[nt], a0, a1, a2, a3, __float_as_uint(kr[0]), __float_as_uint(kr[4]));
      }
    }
    if (k0 + BK - 1 > n_past + wq) {  // the tile reaches past some query of this warp: mask
#pragma unroll
      for (int nt = 0; nt < BK / 8; ++nt) {
        const int64_t key = k0 + nt * 8 + 2 * c4;
        if (key > n_past + t_lo) s[nt][0] = -INFINITY;
        if (key + 1 > n_past + t_lo) s[nt][1] = -INFINITY;
        if (key > n_past + t_hi) s[nt][2] = -INFINITY;
        if (key + 1 > n_past + t_hi) s[nt][3] = -INFINITY;
      }
    }
    float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) {
      mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    }
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float mu = mx[r] == -INFINITY ? 0.0f : mx[r];
      corr[r] = exp2f(mrow[r] - mu);
      mrow[r] = mx[r];
      mx[r] = mu;
      lrow[r] *= corr[r];
    }
#pragma unroll
    for (int i = 0; i < HDP / 8; ++i) {
      o[i][0] *= corr[0]; o[i][1] *= corr[0];
      o[i][2] *= corr[1]; o[i][3] *= corr[1];
    }
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) {
      const float p0 = exp2f(s[nt][0] - mx[0]), p1 = exp2f(s[nt][1] - mx[0]);
      const float p2 = exp2f(s[nt][2] - mx[1]), p3 = exp2f(s[nt][3] - mx[1]);
      lrow[0] += p0 + p1;
      lrow[1] += p2 + p3;
      const uint32_t a0 = to_tf32(p0), a1 = to_tf32(p2), a2 = to_tf32(p1), a3 = to_tf32(p3);
      const float* v0 = Vs + (nt * 8 + 2 * c4) * LD + gq;
#pragma unroll
      for (int i = 0; i < HDP / 8; ++i)
        mma_tf32(o[i], a0, a1, a2, a3, __float_as_uint(v0[i * 8]), __float_as_uint(v0[LD + i * 8]));
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
  }
  const int64_t ldo = int64_t(H) * hd;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t t = r == 0 ? t_lo : t_hi;
    if (t >= T) continue;
    const float inv = 1.0f / lrow[r];
    float* orow = out + t * ldo + int64_t(h) * hd;
#pragma unroll
    for (int i = 0; i < HDP / 8; ++i) {
      const int d = i * 8 + 2 * c4;
      if (d < hd) orow[d] = o[i][2 * r] * inv;
      if (d + 1 < hd) orow[d + 1] = o[i][2 * r + 1] * inv;
    }
  }
}

struct SplitPlan {
  int nsplit;
  int64_t chunk;
};

// The number of key ranges for `n_keys` keys (rounded up to a power of two when `bucket`, so that
// one plan serves every length of the bucket); `units` blocks per range.
int split_count(int64_t n_keys, int64_t units, bool bucket) {
  int64_t n = n_keys;
  if (bucket) {
    n = 64;
    while (n < n_keys) n *= 2;
  }
  // FH1_CUDA_DEC_BLOCKS (tuning only): the blocks to aim for (default 1024).
  static const int64_t want_blocks = [] {
    const char* e = std::getenv("FH1_CUDA_DEC_BLOCKS");
    return e ? std::max<int64_t>(64, std::atoll(e)) : int64_t(1024);
  }();
  const int64_t cap = std::max<int64_t>(1, want_blocks / std::max<int64_t>(1, units));
  return static_cast<int>(std::max<int64_t>(1, std::min((n + 63) / 64, cap)));
}

SplitPlan split_plan(int64_t T, int64_t n_past, int H) {
  const int64_t n_keys = n_past + T;
  const int64_t nsplit = split_count(n_keys, int64_t(H) * T, false);
  const int64_t chunk = (n_keys + nsplit - 1) / nsplit;
  return {static_cast<int>((n_keys + chunk - 1) / chunk), chunk};
}

bool gqa_decode_ok(int hd, const float* k, const float* v, int Hkv) {
  return hd % 4 == 0 && hd <= 256 && (int64_t(Hkv) * hd) % 4 == 0 && reinterpret_cast<uintptr_t>(k) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(v) % 16 == 0;
}

int gqa_gm(int hd) { return hd <= 128 ? 8 : 4; }

int64_t gqa_units(int64_t T, int H, int Hkv, int hd) {
  const int G = H / Hkv, gm = gqa_gm(hd);
  return T * Hkv * ((G + gm - 1) / gm);
}

template <int MPL>
void launch_tile(const float* q, int64_t ldq, int64_t T, const float* k, const float* v, int64_t n_past, int H,
                 int Hkv, int hd, float scale, float* out, cudaStream_t s) {
  const size_t smem = size_t(2) * kTileK * 4 * MPL * sizeof(float);
  if (smem > 48 * 1024)
    check(cudaFuncSetAttribute(attn_tile_kernel<MPL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem)),
          "attention smem");
  const dim3 grid(static_cast<unsigned>((T + kTileQ - 1) / kTileQ), static_cast<unsigned>(H));
  launch(attn_tile_kernel<MPL>, grid, kTileQ * 4, smem, s, q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out);
  check_launch("attention (tile)");
}

template <int HDP, int BK>
void launch_flash(const float* q, int64_t ldq, int64_t T, const float* k, const float* v, int64_t n_past, int H,
                  int Hkv, int hd, float scale, float* out, cudaStream_t s) {
  const size_t smem = size_t(kFlashQ + 2 * BK) * (HDP + 4) * sizeof(float);
  static bool attr_set = false;  // per template instance
  if (!attr_set) {
    check(cudaFuncSetAttribute(attn_flash_tf32_kernel<HDP, BK>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem)),
          "attention (flash) smem");
    attr_set = true;
  }
  const bool vec = hd % 4 == 0 && (int64_t(Hkv) * hd) % 4 == 0 && reinterpret_cast<uintptr_t>(k) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(v) % 16 == 0;
  const dim3 grid(static_cast<unsigned>((T + kFlashQ - 1) / kFlashQ), static_cast<unsigned>(H));
  launch(attn_flash_tf32_kernel<HDP, BK>, grid, 128, smem, s, q, ldq, T, k, v, n_past, H, Hkv, hd, scale, vec, out);
  check_launch("attention (flash tf32)");
}

template <int DPL>
void launch_split(const float* q, int64_t ldq, int64_t T, const float* k, const float* v, int64_t n_past, int H,
                  int Hkv, int hd, float scale, float* out, float* scratch, cudaStream_t s) {
  const SplitPlan sp = split_plan(T, n_past, H);
  float* ml = scratch;
  float* pacc = scratch + 2 * T * H * sp.nsplit;
  const dim3 grid(static_cast<unsigned>(sp.nsplit), static_cast<unsigned>(H), static_cast<unsigned>(T));
  launch(attn_split_kernel<DPL>, grid, kSplitWarps * 32, 0, s, q, ldq, k, v, n_past, H, Hkv, hd, scale, sp.chunk,
                                                          sp.nsplit, ml, pacc);
  check_launch("attention (split)");
  launch(attn_merge_kernel, dim3(static_cast<unsigned>(H), static_cast<unsigned>(T)), 32 * ((hd + 31) / 32),
         sp.nsplit * sizeof(float), s, ml, pacc, H, hd, sp.nsplit, out);
  check_launch("attention (merge)");
}

template <int V4, int GM>
void launch_gqa(const float* q, int64_t ldq, int64_t T, const float* k, const float* v, int64_t n_past,
                const int64_t* n_past_dev, bool bucket, int H, int Hkv, int hd, float scale, float* out,
                float* scratch, cudaStream_t s) {
  const int G = H / Hkv;
  const int ngroups = (G + GM - 1) / GM;
  const int nsplit = split_count(n_past + T, gqa_units(T, H, Hkv, hd), bucket);
  float* ml = scratch;
  float* pacc = scratch + 2 * T * H * nsplit;
  const dim3 grid(static_cast<unsigned>(nsplit), static_cast<unsigned>(Hkv * ngroups), static_cast<unsigned>(T));
  launch(attn_decode_gqa_kernel<V4, GM>, grid, kDecWarps * 32, 0, s, q, ldq, T, k, v, n_past, n_past_dev, nullptr,
                                                                 nullptr, nullptr, H, Hkv, hd, scale, nsplit, ml, pacc);
  check_launch("attention (decode)");
  launch(attn_merge_kernel, dim3(static_cast<unsigned>(H), static_cast<unsigned>(T)), 32 * ((hd + 31) / 32),
         nsplit * sizeof(float), s, ml, pacc, H, hd, nsplit, out);
  check_launch("attention (merge)");
}

template <int V4, int GM>
void launch_gqa_rows(const float* q, int64_t ldq, int64_t n, const float* const* kcs, const float* const* vcs,
                     const int64_t* n_pasts, int64_t max_past, bool bucket, int H, int Hkv, int hd, float scale,
                     float* out, float* scratch, cudaStream_t s) {
  const int G = H / Hkv;
  const int ngroups = (G + GM - 1) / GM;
  const int nsplit = split_count(max_past + 1, gqa_units(n, H, Hkv, hd), bucket);
  float* ml = scratch;
  float* pacc = scratch + 2 * n * H * nsplit;
  const dim3 grid(static_cast<unsigned>(nsplit), static_cast<unsigned>(Hkv * ngroups), static_cast<unsigned>(n));
  launch(attn_decode_gqa_kernel<V4, GM>, grid, kDecWarps * 32, 0, s, q, ldq, 1, nullptr, nullptr, 0, nullptr, kcs, vcs,
                                                                 n_pasts, H, Hkv, hd, scale, nsplit, ml, pacc);
  check_launch("attention (decode rows)");
  launch(attn_merge_kernel, dim3(static_cast<unsigned>(H), static_cast<unsigned>(n)), 32 * ((hd + 31) / 32),
         nsplit * sizeof(float), s, ml, pacc, H, hd, nsplit, out);
  check_launch("attention (merge)");
}

}  // namespace

bool attention_rows_ok(int hd, int Hkv) { return hd % 4 == 0 && hd <= 256 && (int64_t(Hkv) * hd) % 4 == 0; }

size_t attention_rows_scratch_floats(int64_t n, int64_t max_past, int H, int Hkv, int hd, bool bucket) {
  const int64_t ns = split_count(max_past + 1, gqa_units(n, H, Hkv, hd), bucket);
  return static_cast<size_t>(n * H * ns) * static_cast<size_t>(2 + hd);
}

void attention_rows(const float* q, int64_t ldq, int64_t n, const float* const* kcs, const float* const* vcs,
                    const int64_t* n_pasts, int64_t max_past, bool bucket, int H, int Hkv, int hd, float scale,
                    float* out, float* scratch, cudaStream_t s) {
  if (n == 0 || H == 0) return;
  if (Hkv <= 0 || H % Hkv != 0) throw Error("CUDA attention: heads must be a multiple of kv heads");
  if (!attention_rows_ok(hd, Hkv)) throw Error("CUDA attention_rows: head_dim must be a multiple of 4, at most 256");
  if (hd <= 64) launch_gqa_rows<1, 8>(q, ldq, n, kcs, vcs, n_pasts, max_past, bucket, H, Hkv, hd, scale, out, scratch, s);
  else if (hd <= 128) launch_gqa_rows<2, 8>(q, ldq, n, kcs, vcs, n_pasts, max_past, bucket, H, Hkv, hd, scale, out, scratch, s);
  else launch_gqa_rows<4, 4>(q, ldq, n, kcs, vcs, n_pasts, max_past, bucket, H, Hkv, hd, scale, out, scratch, s);
}

size_t attention_scratch_floats(int64_t T, int64_t n_past, int H, int Hkv, int hd, bool bucket) {
  if (T > kMaxDecodeT) return 0;
  // Enough for either decode kernel.
  const int64_t ns1 = split_plan(T, n_past, H).nsplit;
  const int64_t ns2 = split_count(n_past + T, gqa_units(T, H, Hkv, hd), bucket);
  return static_cast<size_t>(T * H * std::max(ns1, ns2)) * static_cast<size_t>(2 + hd);
}

bool attention_decode_device_len(int64_t T, int hd, const float* k, const float* v, int Hkv) {
  return T <= kMaxDecodeT && gqa_decode_ok(hd, k, v, Hkv);
}

void attention(const float* q, int64_t ldq, int64_t T, const float* k, const float* v, int64_t n_past,
               const int64_t* n_past_dev, bool bucket, int H, int Hkv, int hd, float scale, bool tf32, float* out,
               float* scratch, cudaStream_t s) {
  if (T == 0 || H == 0) return;
  if (Hkv <= 0 || H % Hkv != 0) throw Error("CUDA attention: heads must be a multiple of kv heads");
  if (hd > 256) throw Error("CUDA attention: head_dim " + std::to_string(hd) + " > 256 is not supported");
  if (T <= kMaxDecodeT) {
    if (gqa_decode_ok(hd, k, v, Hkv)) {
      if (hd <= 64) launch_gqa<1, 8>(q, ldq, T, k, v, n_past, n_past_dev, bucket, H, Hkv, hd, scale, out, scratch, s);
      else if (hd <= 128) launch_gqa<2, 8>(q, ldq, T, k, v, n_past, n_past_dev, bucket, H, Hkv, hd, scale, out, scratch, s);
      else launch_gqa<4, 4>(q, ldq, T, k, v, n_past, n_past_dev, bucket, H, Hkv, hd, scale, out, scratch, s);
      return;
    }
    if (n_past_dev) throw Error("CUDA attention: a device-side length needs the GQA decode kernel");
    if (hd <= 32) launch_split<1>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    else if (hd <= 64) launch_split<2>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    else if (hd <= 128) launch_split<4>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    else launch_split<8>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    return;
  }
  if (tf32) {
    // Keys per tile: 64 up to hd 64; 32 above (less shared memory, 3 blocks per SM: 7B prefill
    // at 32K 16% faster on an H200 than with 64). FH1_CUDA_FLASH_BK=64 / 32 forces one.
    static const int bk = [] {
      const char* e = std::getenv("FH1_CUDA_FLASH_BK");
      return e == nullptr ? 0 : std::atoi(e);
    }();
    if (hd <= 32) launch_flash<32, 64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    else if (hd <= 64 && bk == 32) launch_flash<64, 32>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    else if (hd <= 64) launch_flash<64, 64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    else if (hd <= 128 && bk != 64) launch_flash<128, 32>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    else if (hd <= 128) launch_flash<128, 64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    else launch_flash<256, 32>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    return;
  }
  if (hd <= 16) launch_tile<4>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else if (hd <= 32) launch_tile<8>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else if (hd <= 64) launch_tile<16>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else if (hd <= 128) launch_tile<32>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else launch_tile<64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
}

}  // namespace fh1::cuda
