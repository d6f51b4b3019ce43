// Causal grouped-query attention on the GPU (online softmax, float32 accumulation): the decode
// kernels (few queries) and the dispatch of every attention call; the prefill kernels (many
// queries) are in cuda_attention_prefill.cu.
//  - bf16 KV caches, G query heads x T queries <= 16 rows per KV head: split-KV on the tensor
//    cores (attn_decode_mma_kernel below).
//  - otherwise: split-KV in float32. One block per (key range, kv head, query): every key is read
//    once for all query heads of its group (up to 8 per block); two keys per warp (16 lanes a
//    key, float4 loads).
// Partial (max, sum, acc) per range go to scratch and a second kernel merges them. The number of
// ranges can be fixed from a bucket of the context length and the length itself read from device
// memory, so that a captured decode graph replays at any length within its bucket.
// Every kernel reads the KV caches as KV = float or bf16 (the backend's kv_cache_dtype(); bf16
// halves the bytes a long-context decode step reads) and converts to float32 on load.
#include <algorithm>
#include <cfloat>
#include <cstdlib>
#include <type_traits>

#include "kernels/cuda/cuda_attention_common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "util/error.h"

namespace fh1::cuda {
namespace {

constexpr int kSplitWarps = 4;  // warps of the float32 per-head split kernel

// Partial results: ml[2 * idx] = max, ml[2 * idx + 1] = sum; pacc[idx * hd + d], idx = (t * H + h) * nsplit + split.
template <int DPL, typename KV>  // dims per lane: hd <= 32 * DPL
__global__ void __launch_bounds__(kSplitWarps * 32)
    attn_split_kernel(const float* __restrict__ q, int64_t ldq, const KV* __restrict__ kc,
                      const KV* __restrict__ vc, int64_t n_past, int H, int Hkv, int hd, float scale,
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
  const KV* kb = kc + int64_t(kvh) * hd;
  const KV* vb = vc + int64_t(kvh) * hd;
  for (int64_t key = k_begin + warp; key < k_end; key += kSplitWarps) {
    float part = 0.0f, vv[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + 32 * i;
      part += d < hd ? qr[i] * kv_ld(kb + key * ldkv + d) : 0.0f;
      vv[i] = d < hd ? kv_ld(vb + key * ldkv + d) : 0.0f;
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

// One block of WARPS warps per (head, query row, 32 dims): the ranges' weights exp(m_s - M)
// computed once into shared memory; warp w sums ranges w, w + WARPS, ... (lane = dim, 8 ranges'
// loads in flight), then the partial sums meet in shared memory. (One thread per dim walking all
// the ranges in order, one block per head, was latency-bound at long contexts: 35 us a layer at
// 128K.) More warps for more ranges: each round of loads is a trip to L2 after the wait.
template <int WARPS>
__global__ void __launch_bounds__(WARPS * 32)
    attn_merge_kernel(const float* __restrict__ ml, const float* __restrict__ pacc, int H, int hd, int nsplit,
                      float* __restrict__ out) {
  FH1_PDL_ENTER();
  extern __shared__ float wsplit[];  // nsplit weights
  __shared__ float red[32];
  __shared__ float part[WARPS][32];
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  const int64_t base = (t * H + h) * nsplit;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int d = blockIdx.z * 32 + lane;
  // The first kPre partials of the lane issued with the maxima, before the weights are known:
  // at nsplit <= 8 * kPre (up to 2K keys at the 7B shape) the one round trip after the wait.
  constexpr int kPre = 8;
  const float* pd = pacc + base * hd + d;
  float pre[kPre];
#pragma unroll
  for (int u = 0; u < kPre; ++u) {
    const int s = warp + u * WARPS;
    pre[u] = d < hd && s < nsplit ? pd[int64_t(s) * hd] : 0.0f;
  }
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
  float acc = 0.0f;
  if (d < hd) {
#pragma unroll
    for (int u = 0; u < kPre; ++u)
      if (warp + u * WARPS < nsplit) acc += pre[u] * wsplit[warp + u * WARPS];
    int s = warp + kPre * WARPS;
    for (; s + 7 * WARPS < nsplit; s += 8 * WARPS) {
      float v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) v[u] = pd[int64_t(s + u * WARPS) * hd];
#pragma unroll
      for (int u = 0; u < 8; ++u) acc += v[u] * wsplit[s + u * WARPS];
    }
    for (; s < nsplit; s += WARPS) acc += pd[int64_t(s) * hd] * wsplit[s];
  }
  part[warp][lane] = acc;
  __syncthreads();
  if (warp == 0 && d < hd) {
    float a = 0.0f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) a += part[w][lane];
    out[t * int64_t(H) * hd + int64_t(h) * hd + d] = a / L;
  }
}

template <int WARPS>
void launch_merge_w(const float* ml, const float* pacc, int H, int64_t T, int hd, int nsplit, float* out,
                    cudaStream_t s) {
  const size_t smem = size_t(nsplit) * sizeof(float);
  if (smem > 48 * 1024) {
    static size_t attr = 48 * 1024;  // raised once to the largest need seen
    if (smem > attr) {
      check(cudaFuncSetAttribute(attn_merge_kernel<WARPS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(smem)),
            "attention merge smem");
      attr = smem;
    }
  }
  const dim3 grid(static_cast<unsigned>(H), static_cast<unsigned>(T), static_cast<unsigned>((hd + 31) / 32));
  launch(attn_merge_kernel<WARPS>, grid, WARPS * 32, smem, s, ml, pacc, H, hd, nsplit, out);
  check_launch("attention (merge)");
}

void launch_merge(const float* ml, const float* pacc, int H, int64_t T, int hd, int nsplit, float* out,
                  cudaStream_t s) {
  // 32 warps a block past 64 ranges: 7B batch 1, 330 ranges at 16K and 128K, 1.2 and 1.7 %
  // faster steps than 8 warps (H200). FH1_CUDA_MERGE_WARPS (tuning only): 8, 16 or 32 always.
  static const int force = [] {
    const char* e = std::getenv("FH1_CUDA_MERGE_WARPS");
    return e ? std::atoi(e) : 0;
  }();
  const int warps = force ? force : nsplit > 64 ? 32 : 8;
  if (warps >= 32) launch_merge_w<32>(ml, pacc, H, T, hd, nsplit, out, s);
  else if (warps >= 16) launch_merge_w<16>(ml, pacc, H, T, hd, nsplit, out, s);
  else launch_merge_w<8>(ml, pacc, H, T, hd, nsplit, out, s);
}

// ---- decode: split-KV, one block per (key range, kv head [, head group], query) ----
// Lanes 0-15 take one key, lanes 16-31 the next; lane j of a half holds dims 4*(j + 16 i) .. +3.
// Needs hd % 4 == 0 and aligned cache rows (16 bytes for float, 8 for bf16; else the per-head
// kernel above runs).
constexpr int kDecWarps = 4;

template <int V4, int GM, typename KV>  // 4-value groups per lane: hd <= 64 * V4; at most GM query heads per block
__global__ void __launch_bounds__(kDecWarps * 32)
    attn_decode_gqa_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const KV* __restrict__ kc,
                           const KV* __restrict__ vc, int64_t n_past_host, const int64_t* __restrict__ n_past_dev,
                           const KV* const* __restrict__ kcs, const KV* const* __restrict__ vcs,
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
  const KV* kb = kc + int64_t(kvh) * hd;
  const KV* vb = vc + int64_t(kvh) * hd;
  auto load = [&](int64_t key, bool valid, float4 (&kv)[V4], float4 (&vv)[V4]) {
#pragma unroll
    for (int i = 0; i < V4; ++i) {
      const int d = 4 * (hl + 16 * i);
      const bool ok = valid && d < hd;
      kv[i] = ok ? kv_ld4_cs(kb + key * ldkv + d) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      vv[i] = ok ? kv_ld4_cs(vb + key * ldkv + d) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
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

// ---- decode on the tensor cores (bf16 KV caches): split-KV, one warp per (key range, kv head
// [, sequence]) ----
// The M = 16 rows of the MMAs are the query heads of one KV group times the queries (G x T <= 16,
// row r = query r / G, head r % G), so each key is read once for its whole group, and the
// softmax rescales once per tile of 32 keys instead of once per key. The warp streams its key
// range through shared memory with cp.async (double-buffered), with the arithmetic of the bf16
// flash kernel above (Q and P split in hi + lo bf16 parts, float32 sums). It writes the same
// partial results as attn_decode_gqa_kernel (max and sum in natural-log units, unnormalized
// accumulators), merged by attn_merge_kernel. At long contexts the per-key reductions across
// lanes made that kernel latency-bound (15 % of the DRAM bandwidth at 128K on an H200).
constexpr int kDecBK = 32;  // keys per tile

template <int HDP>
__global__ void __launch_bounds__(32)
    attn_decode_mma_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const bf16* __restrict__ kc,
                           const bf16* __restrict__ vc, int64_t n_past_host, const int64_t* __restrict__ n_past_dev,
                           const bf16* const* __restrict__ kcs, const bf16* const* __restrict__ vcs,
                           const int64_t* __restrict__ n_pasts, int H, int Hkv, int hd, float scale, int nsplit,
                           float* __restrict__ ml, float* __restrict__ pacc) {
  constexpr int LD = HDP + 8;
  constexpr int CH = HDP / 8;
  __shared__ __align__(16) bf16 Qs[2][16 * LD];
  __shared__ __align__(16) bf16 Ks[2][kDecBK * LD];
  __shared__ __align__(16) bf16 Vs[2][kDecBK * LD];
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
  const bf16* kb = kc + int64_t(kvh) * hd;
  const bf16* vb = vc + int64_t(kvh) * hd;

  auto load_tile = [&](int64_t k0, int buf) {
    for (int e = lane; e < kDecBK * CH; e += 32) {
      const int r = e / CH, d = (e - r * CH) * 8;
      const int64_t key = k0 + r;
      const bool ok = key < k_end && d < hd;
      const int64_t off = ok ? key * ldkv + d : 0;
      cp_async16(&Ks[buf][r * LD + d], kb + off, ok);
      cp_async16(&Vs[buf][r * LD + d], vb + off, ok);
    }
  };
  const bool early = k_begin < k_end && min(k_begin + kDecBK, k_end) <= n_past;
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
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kDecBK, buf ^= 1) {
    if (k0 + kDecBK < k_end) {
      load_tile(k0 + kDecBK, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncwarp();
    float s[kDecBK / 8][4];
#pragma unroll
    for (int nt = 0; nt < kDecBK / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HDP / 16; ++kk)
#pragma unroll
      for (int part = 0; part < 2; ++part)
#pragma unroll
        for (int nt = 0; nt < kDecBK / 8; ++nt) {
          const bf16* kr = &Ks[buf][(nt * 8 + gq) * LD + kk * 16 + 2 * c4];
          mma_bf16(s[nt], qf[part][kk], *reinterpret_cast<const uint32_t*>(kr),
                   *reinterpret_cast<const uint32_t*>(kr + 8));
        }
    mask_keys_after(s, k0, c4, vis_lo, vis_hi);
    float mx[2];
    online_softmax_step(s, mrow, lrow, o, mx);
#pragma unroll
    for (int kk = 0; kk < kDecBK / 16; ++kk) {
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

struct SplitPlan {
  int nsplit;
  int64_t chunk;
};

// The keys a plan is made for: `n_keys`, or with `bucket` its power-of-two bucket (at least 64),
// so that one plan serves every length of the bucket.
int64_t bucket_keys(int64_t n_keys, bool bucket) {
  if (!bucket) return n_keys;
  int64_t n = 64;
  while (n < n_keys) n *= 2;
  return n;
}

// The number of key ranges for `n_keys` keys (of their bucket when `bucket`); `units` blocks per
// range.
int split_count_for(int64_t n_keys, int64_t units, bool bucket, int64_t want_blocks, int64_t keys = 64) {
  const int64_t n = bucket_keys(n_keys, bucket);
  const int64_t cap = std::max<int64_t>(1, want_blocks / std::max<int64_t>(1, units));
  return static_cast<int>(std::max<int64_t>(1, std::min((n + keys - 1) / keys, cap)));
}

int split_count(int64_t n_keys, int64_t units, bool bucket) {
  // FH1_CUDA_DEC_BLOCKS (tuning only): the blocks to aim for (default 1024).
  static const int64_t want_blocks = [] {
    const char* e = std::getenv("FH1_CUDA_DEC_BLOCKS");
    return e ? std::max<int64_t>(64, std::atoll(e)) : int64_t(1024);
  }();
  return split_count_for(n_keys, units, bucket, want_blocks);
}

// The tensor-core decode kernel: one-warp blocks, as many as the GPU holds at once (its shared
// memory allows ~5 per SM at head size 128), so that every key range is read in one wave; but
// ranges of at most ~1600 keys. A decode step runs the attention beside the Mamba-2 mixer
// (cuda_step.h, branches), whose kernels take some of the slots: a range that then waits for a
// second wave should be short (H200, 0.5B shape, batch 8 at 128K: 10.3 ms a step with 3200-key
// ranges, 9.4 with 1600; batch 1 and shorter contexts keep one wave, which was faster there).
//
// One sequence with a bucket of at most 64K keys aims at 3 blocks per SM instead: there the keys
// are few, and shorter waves of longer ranges leave more of the SMs to the Mamba-2 chain beside
// and fewer ranges to merge (H200, 7B batch 1: 16K 5.278 -> 5.153 ms, 32K 5.532 -> 5.424, 4K
// within 0.5 %; 0.5B and 1.5B-Deep at 16K within 0.7 %; past the rule's end, 3 per SM was 0.4 %
// slower at 64K and 6 % at 128K).
int mma_split_count(int64_t n_keys, int64_t units, bool bucket, bool one_sequence) {
  static const int64_t sms = [] {
    int dev = 0, n = 132;
    if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return int64_t(n);
  }();
  // FH1_CUDA_DEC_MMA_BLOCKS (tuning only): the blocks to aim for, at every length.
  static const int64_t forced_blocks = [] {
    const char* e = std::getenv("FH1_CUDA_DEC_MMA_BLOCKS");
    return e ? std::max<int64_t>(16, std::atoll(e)) : int64_t(0);
  }();
  static const int64_t max_range = [] {
    const char* e = std::getenv("FH1_CUDA_DEC_MMA_RANGE");
    return e ? std::max<int64_t>(64, std::atoll(e)) : int64_t(1600);
  }();
  // FH1_CUDA_DEC_MMA_KEYS (tuning only): the shortest range aimed for, in keys of the bucket.
  static const int64_t keys = [] {
    const char* e = std::getenv("FH1_CUDA_DEC_MMA_KEYS");
    return e ? std::max<int64_t>(16, std::atoll(e)) : int64_t(32);
  }();
  const int64_t n = bucket_keys(n_keys, bucket);
  const int64_t want_blocks = forced_blocks ? forced_blocks : sms * (one_sequence && n <= (int64_t(1) << 16) ? 3 : 5);
  const int one_wave = split_count_for(n_keys, units, bucket, want_blocks, keys);
  return static_cast<int>(std::max<int64_t>(one_wave, (n + max_range - 1) / max_range));
}

// The tensor-core decode kernel takes bf16 caches in whole 16-byte chunks and a group of query
// heads times queries of at most 16 rows.
bool decode_mma_ok(int64_t Tq, int H, int Hkv, int hd) {
  static const bool on = [] {
    const char* e = std::getenv("FH1_CUDA_DEC_MMA");
    return e == nullptr || std::atoi(e) != 0;
  }();
  return on && hd % 8 == 0 && hd <= 128 && (int64_t(Hkv) * hd) % 8 == 0 && int64_t(H / Hkv) * Tq <= 16;
}

SplitPlan split_plan(int64_t T, int64_t n_past, int H) {
  const int64_t n_keys = n_past + T;
  const int64_t nsplit = split_count(n_keys, int64_t(H) * T, false);
  const int64_t chunk = (n_keys + nsplit - 1) / nsplit;
  return {static_cast<int>((n_keys + chunk - 1) / chunk), chunk};
}

template <typename KV>
bool gqa_decode_ok(int hd, const void* k, const void* v, int Hkv) {
  constexpr uintptr_t align = 4 * sizeof(KV);
  return hd % 4 == 0 && hd <= 256 && (int64_t(Hkv) * hd) % 4 == 0 && reinterpret_cast<uintptr_t>(k) % align == 0 &&
         reinterpret_cast<uintptr_t>(v) % align == 0;
}

int gqa_gm(int hd) { return hd <= 128 ? 8 : 4; }

int64_t gqa_units(int64_t T, int H, int Hkv, int hd) {
  const int G = H / Hkv, gm = gqa_gm(hd);
  return T * Hkv * ((G + gm - 1) / gm);
}

template <int DPL, typename KV>
void launch_split(const float* q, int64_t ldq, int64_t T, const KV* k, const KV* v, int64_t n_past, int H,
                  int Hkv, int hd, float scale, float* out, float* scratch, cudaStream_t s) {
  const SplitPlan sp = split_plan(T, n_past, H);
  float* ml = scratch;
  float* pacc = scratch + 2 * T * H * sp.nsplit;
  const dim3 grid(static_cast<unsigned>(sp.nsplit), static_cast<unsigned>(H), static_cast<unsigned>(T));
  launch(attn_split_kernel<DPL, KV>, grid, kSplitWarps * 32, 0, s, q, ldq, k, v, n_past, H, Hkv, hd, scale, sp.chunk,
         sp.nsplit, ml, pacc);
  check_launch("attention (split)");
  launch_merge(ml, pacc, H, T, hd, sp.nsplit, out, s);
}

// Decode, one sequence (kcs == null) or one row per sequence (kcs / vcs / n_pasts: device arrays).
template <int V4, int GM, typename KV>
void launch_gqa(const float* q, int64_t ldq, int64_t T, const KV* k, const KV* v, int64_t n_past,
                const int64_t* n_past_dev, const KV* const* kcs, const KV* const* vcs, const int64_t* n_pasts,
                bool bucket, int H, int Hkv, int hd, float scale, float* out, float* scratch, cudaStream_t s) {
  const int G = H / Hkv;
  const int ngroups = (G + GM - 1) / GM;
  const int nsplit = split_count(n_past + T, gqa_units(T, H, Hkv, hd), bucket);
  float* ml = scratch;
  float* pacc = scratch + 2 * T * H * nsplit;
  const dim3 grid(static_cast<unsigned>(nsplit), static_cast<unsigned>(Hkv * ngroups), static_cast<unsigned>(T));
  launch(attn_decode_gqa_kernel<V4, GM, KV>, grid, kDecWarps * 32, 0, s, q, ldq, kcs ? int64_t(1) : T, k, v, n_past,
         n_past_dev, kcs, vcs, n_pasts, H, Hkv, hd, scale, nsplit, ml, pacc);
  check_launch(kcs ? "attention (decode rows)" : "attention (decode)");
  launch_merge(ml, pacc, H, T, hd, nsplit, out, s);
}

// Decode on the tensor cores: one sequence of T queries (kcs == null), or `zcount` sequences of
// one query each (kcs / vcs / n_pasts: device arrays); n_keys (host) picks the plan.
template <int HDP>
void launch_decode_mma(const float* q, int64_t ldq, int64_t T, const bf16* k, const bf16* v, int64_t n_past,
                       const int64_t* n_past_dev, const bf16* const* kcs, const bf16* const* vcs,
                       const int64_t* n_pasts, int64_t zcount, int64_t n_keys, bool bucket, int H, int Hkv, int hd,
                       float scale, float* out, float* scratch, cudaStream_t s) {
  const bool rows = kcs != nullptr;
  const int nsplit = mma_split_count(n_keys, zcount * Hkv, bucket, zcount == 1);
  const int64_t qrows = rows ? zcount : T;  // query rows of the partial results
  float* ml = scratch;
  float* pacc = scratch + 2 * qrows * H * nsplit;
  const dim3 grid(static_cast<unsigned>(nsplit), static_cast<unsigned>(Hkv), static_cast<unsigned>(zcount));
  launch(attn_decode_mma_kernel<HDP>, grid, 32, 0, s, q, ldq, rows ? int64_t(1) : T, k, v, n_past, n_past_dev, kcs,
         vcs, n_pasts, H, Hkv, hd, scale, nsplit, ml, pacc);
  check_launch("attention (decode mma)");
  launch_merge(ml, pacc, H, qrows, hd, nsplit, out, s);
}

template <typename... A>
void decode_mma(int hd, A... a) {
  if (hd <= 32) launch_decode_mma<32>(a...);
  else if (hd <= 64) launch_decode_mma<64>(a...);
  else launch_decode_mma<128>(a...);
}

template <typename KV>
void attention_rows_t(const float* q, int64_t ldq, int64_t n, const KV* const* kcs, const KV* const* vcs,
                      const int64_t* n_pasts, int64_t max_past, bool bucket, int H, int Hkv, int hd, float scale,
                      float* out, float* scratch, cudaStream_t s) {
  if constexpr (std::is_same_v<KV, bf16>) {
    if (decode_mma_ok(1, H, Hkv, hd)) {
      decode_mma(hd, q, ldq, int64_t(1), static_cast<const bf16*>(nullptr), static_cast<const bf16*>(nullptr),
                 int64_t(0), static_cast<const int64_t*>(nullptr), kcs, vcs, n_pasts, n, max_past + 1, bucket, H, Hkv,
                 hd, scale, out, scratch, s);
      return;
    }
  }
  // n rows of one query each: the plan is that of n queries at length max_past + 1.
  const KV* none = nullptr;
  if (hd <= 64) launch_gqa<1, 8>(q, ldq, n, none, none, max_past + 1 - n, nullptr, kcs, vcs, n_pasts, bucket, H, Hkv, hd, scale, out, scratch, s);
  else if (hd <= 128) launch_gqa<2, 8>(q, ldq, n, none, none, max_past + 1 - n, nullptr, kcs, vcs, n_pasts, bucket, H, Hkv, hd, scale, out, scratch, s);
  else launch_gqa<4, 4>(q, ldq, n, none, none, max_past + 1 - n, nullptr, kcs, vcs, n_pasts, bucket, H, Hkv, hd, scale, out, scratch, s);
}

template <typename KV>
void attention_t(const float* q, int64_t ldq, int64_t T, const KV* k, const KV* v, int64_t n_past,
                 const int64_t* n_past_dev, bool bucket, int H, int Hkv, int hd, float scale, bool tf32, float* out,
                 float* scratch, cudaStream_t s) {
  if (T <= kMaxDecodeT) {
    const KV* const* none = nullptr;
    if constexpr (std::is_same_v<KV, bf16>) {
      if (decode_mma_ok(T, H, Hkv, hd) && reinterpret_cast<uintptr_t>(k) % 16 == 0 &&
          reinterpret_cast<uintptr_t>(v) % 16 == 0) {
        decode_mma(hd, q, ldq, T, k, v, n_past, n_past_dev, none, none, static_cast<const int64_t*>(nullptr),
                   int64_t(1), n_past + T, bucket, H, Hkv, hd, scale, out, scratch, s);
        return;
      }
    }
    if (gqa_decode_ok<KV>(hd, k, v, Hkv)) {
      if (hd <= 64) launch_gqa<1, 8>(q, ldq, T, k, v, n_past, n_past_dev, none, none, nullptr, bucket, H, Hkv, hd, scale, out, scratch, s);
      else if (hd <= 128) launch_gqa<2, 8>(q, ldq, T, k, v, n_past, n_past_dev, none, none, nullptr, bucket, H, Hkv, hd, scale, out, scratch, s);
      else launch_gqa<4, 4>(q, ldq, T, k, v, n_past, n_past_dev, none, none, nullptr, bucket, H, Hkv, hd, scale, out, scratch, s);
      return;
    }
    if (n_past_dev) throw Error("CUDA attention: a device-side length needs the GQA decode kernel");
    if (hd <= 32) launch_split<1>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    else if (hd <= 64) launch_split<2>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    else if (hd <= 128) launch_split<4>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    else launch_split<8>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    return;
  }
  if constexpr (std::is_same_v<KV, bf16>) attention_prefill(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, tf32, out, scratch, s);
  else attention_prefill(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, tf32, out, s);
}

}  // namespace

bool attention_rows_ok(int hd, int Hkv) { return hd % 4 == 0 && hd <= 256 && (int64_t(Hkv) * hd) % 4 == 0; }

size_t attention_rows_scratch_floats(int64_t n, int64_t max_past, int H, int Hkv, int hd, bool bucket) {
  // Enough for either decode kernel.
  const int64_t ns = std::max(split_count(max_past + 1, gqa_units(n, H, Hkv, hd), bucket),
                              mma_split_count(max_past + 1, n * Hkv, bucket, n == 1));
  return static_cast<size_t>(n * H * ns) * static_cast<size_t>(2 + hd);
}

void attention_rows(const float* q, int64_t ldq, int64_t n, const void* const* kcs, const void* const* vcs,
                    const int64_t* n_pasts, int64_t max_past, bool bucket, int H, int Hkv, int hd, float scale,
                    bool kv_bf16, float* out, float* scratch, cudaStream_t s) {
  if (n == 0 || H == 0) return;
  if (Hkv <= 0 || H % Hkv != 0) throw Error("CUDA attention: heads must be a multiple of kv heads");
  if (!attention_rows_ok(hd, Hkv)) throw Error("CUDA attention_rows: head_dim must be a multiple of 4, at most 256");
  if (kv_bf16)
    attention_rows_t(q, ldq, n, reinterpret_cast<const bf16* const*>(kcs), reinterpret_cast<const bf16* const*>(vcs),
                     n_pasts, max_past, bucket, H, Hkv, hd, scale, out, scratch, s);
  else
    attention_rows_t(q, ldq, n, reinterpret_cast<const float* const*>(kcs), reinterpret_cast<const float* const*>(vcs),
                     n_pasts, max_past, bucket, H, Hkv, hd, scale, out, scratch, s);
}

size_t attention_scratch_floats(int64_t T, int64_t n_past, int H, int Hkv, int hd, bool bucket, bool kv_bf16,
                                bool tensor_cores) {
  if (T > kMaxDecodeT) {  // the caches' fp16 form for the fp16 flash kernel
    const bool f16 = kv_bf16 && tensor_cores && flash_precision() == 3;
    return f16 ? (attention_prefill_scratch_bytes(T, n_past, Hkv, hd) + sizeof(float) - 1) / sizeof(float) : 0;
  }
  // Enough for either decode kernel.
  const int64_t ns1 = split_plan(T, n_past, H).nsplit;
  const int64_t ns2 = split_count(n_past + T, gqa_units(T, H, Hkv, hd), bucket);
  const int64_t ns3 = mma_split_count(n_past + T, Hkv, bucket, true);
  return static_cast<size_t>(T * H * std::max({ns1, ns2, ns3})) * static_cast<size_t>(2 + hd);
}

bool attention_decode_device_len(int64_t T, int hd, const void* k, const void* v, int Hkv, bool kv_bf16) {
  return T <= kMaxDecodeT && (kv_bf16 ? gqa_decode_ok<bf16>(hd, k, v, Hkv) : gqa_decode_ok<float>(hd, k, v, Hkv));
}

void attention(const float* q, int64_t ldq, int64_t T, const void* k, const void* v, int64_t n_past,
               const int64_t* n_past_dev, bool bucket, int H, int Hkv, int hd, float scale, bool tf32, bool kv_bf16,
               float* out, float* scratch, cudaStream_t s) {
  if (T == 0 || H == 0) return;
  if (Hkv <= 0 || H % Hkv != 0) throw Error("CUDA attention: heads must be a multiple of kv heads");
  if (hd > 256) throw Error("CUDA attention: head_dim " + std::to_string(hd) + " > 256 is not supported");
  if (kv_bf16)
    attention_t(q, ldq, T, static_cast<const bf16*>(k), static_cast<const bf16*>(v), n_past, n_past_dev, bucket, H,
                Hkv, hd, scale, tf32, out, scratch, s);
  else
    attention_t(q, ldq, T, static_cast<const float*>(k), static_cast<const float*>(v), n_past, n_past_dev, bucket, H,
                Hkv, hd, scale, tf32, out, scratch, s);
}

}  // namespace fh1::cuda
