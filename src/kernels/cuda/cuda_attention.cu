// Causal grouped-query attention on the GPU (online softmax, float32 accumulation): the decode
// kernels (few queries) and the dispatch of every attention call; the prefill kernels (many
// queries) are in cuda_attention_prefill.cu.
//  - bf16 KV caches, G query heads x T queries <= 16 rows per KV head: split-KV on the tensor
//    cores (attn_decode_mma_kernel, cuda_attention_decode_mma.cuh).
//  - otherwise: split-KV in float32. One block per (key range, kv head, query): every key is read
//    once for all query heads of its group (up to 8 per block); two keys per warp (16 lanes a
//    key, float4 loads).
// Partial (max, sum, acc) per range go to scratch and a second kernel merges them. The number of
// ranges can be fixed from a bucket of the context length and the length itself read from device
// memory, so that a captured decode graph replays at any length within its bucket.
// Every kernel reads the KV caches as KV = float or bf16 (the backend's kv_cache_dtype(); bf16
// halves the bytes a long-context decode step reads) and converts to float32 on load. 8-bit
// caches (quant/kv_q8.h) have their own tensor-core decode kernel (attn_decode_q8_kernel,
// cuda_attention_decode_q8.cuh); anything else widens their rows to bf16 in the scratch first
// (attention_q8).
#include <algorithm>
#include <cfloat>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/cuda_attention_common.cuh"
#include "kernels/cuda/cuda_attention_decode_mma.cuh"
#include "kernels/cuda/cuda_attention_decode_q8.cuh"
#include "kernels/cuda/cuda_kv.cuh"
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
constexpr int kQ8PerSm = 12;  // the 8-bit kernel's blocks an SM, at most (its registers' bound)
// per_sm: the blocks an SM holds (5 for the bf16 kernel; the 8-bit one's from the occupancy
// calculator, at most kQ8PerSm, which the scratch sizes plan for).
int mma_split_count(int64_t n_keys, int64_t units, bool bucket, bool one_sequence, int per_sm = 5) {
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
  const int64_t want_blocks =
      forced_blocks ? forced_blocks : sms * (one_sequence && n <= (int64_t(1) << 16) ? 3 : per_sm);
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

// The 8-bit decode kernel's tiles: keys x stages in flight. 16 x 2 by default: 12 blocks an SM
// (by its registers) where 16 x 3 fit 10 (by shared memory), and a warp's own latency bounds
// the kernel, so more warps won (H200, 7B at 128K: batch 1 6.549 -> 6.268 ms, batch 8 19.11 ->
// 18.52; 32 x 2 and 16 x 4, fewer blocks an SM, were 3-16 % slower than 16 x 3 and are no
// longer built). FH1_CUDA_DEC_Q8=16x3 (tuning only): 3 in flight.
using DecodeQ8Kernel = decltype(&attn_decode_q8_kernel<128, 32, 16, 2>);
template <int HDP>
DecodeQ8Kernel decode_q8_kernel(int qb) {
  static const bool three = [] {
    const char* e = std::getenv("FH1_CUDA_DEC_Q8");
    return e != nullptr && std::strcmp(e, "16x3") == 0;
  }();
  if (qb == 32) return three ? attn_decode_q8_kernel<HDP, 32, 16, 3> : attn_decode_q8_kernel<HDP, 32, 16, 2>;
  return three ? attn_decode_q8_kernel<HDP, 16, 16, 3> : attn_decode_q8_kernel<HDP, 16, 16, 2>;
}

// The blocks of one warp an SM holds of `kernel`, at most `bound` (the scratch's plan).
template <typename K>
int blocks_per_sm(K kernel, int bound) {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, 32, 0) != cudaSuccess || n <= 0) return bound;
  return std::min(n, bound);
}

// Decode on the tensor cores: one sequence of T queries (kcs == null), or `zcount` sequences of
// one query each (kcs / vcs / n_pasts: device arrays); n_keys (host) picks the plan.
template <int HDP, bool Q8>
void launch_decode_mma(const float* q, int64_t ldq, int64_t T, const void* k, const void* v, int64_t n_past,
                       const int64_t* n_past_dev, const void* const* kcs, const void* const* vcs,
                       const int64_t* n_pasts, int64_t zcount, int64_t n_keys, bool bucket, int H, int Hkv, int hd,
                       float scale, float* out, float* scratch, cudaStream_t s) {
  const bool rows = kcs != nullptr;
  static const int q8_per_sm = Q8 ? blocks_per_sm(decode_q8_kernel<HDP>(32), kQ8PerSm) : 0;
  const int nsplit = mma_split_count(n_keys, zcount * Hkv, bucket, zcount == 1, Q8 ? q8_per_sm : 5);
  const int64_t qrows = rows ? zcount : T;  // query rows of the partial results
  float* ml = scratch;
  float* pacc = scratch + 2 * qrows * H * nsplit;
  const dim3 grid(static_cast<unsigned>(nsplit), static_cast<unsigned>(Hkv), static_cast<unsigned>(zcount));
  auto kernel = Q8 ? decode_q8_kernel<HDP>(kv_q8_block_of(int64_t(Hkv) * hd)) : attn_decode_mma_kernel<HDP>;
  launch(kernel, grid, 32, 0, s, q, ldq, rows ? int64_t(1) : T, k, v, n_past, n_past_dev, kcs,
         vcs, n_pasts, H, Hkv, hd, scale, nsplit, ml, pacc);
  check_launch("attention (decode mma)");
  launch_merge(ml, pacc, H, qrows, hd, nsplit, out, s);
}

template <bool Q8, typename... A>
void decode_mma(int hd, A... a) {
  if (hd <= 32) launch_decode_mma<32, Q8>(a...);
  else if (hd <= 64) launch_decode_mma<64, Q8>(a...);
  else launch_decode_mma<128, Q8>(a...);
}

template <typename KV>
void attention_rows_t(const float* q, int64_t ldq, int64_t n, const KV* const* kcs, const KV* const* vcs,
                      const int64_t* n_pasts, int64_t max_past, bool bucket, int H, int Hkv, int hd, float scale,
                      float* out, float* scratch, cudaStream_t s) {
  if constexpr (std::is_same_v<KV, bf16>) {
    if (decode_mma_ok(1, H, Hkv, hd)) {
      decode_mma<false>(hd, q, ldq, int64_t(1), static_cast<const void*>(nullptr), static_cast<const void*>(nullptr),
                        int64_t(0), static_cast<const int64_t*>(nullptr), reinterpret_cast<const void* const*>(kcs),
                        reinterpret_cast<const void* const*>(vcs), n_pasts, n, max_past + 1, bucket, H, Hkv, hd, scale,
                        out, scratch, s);
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
        decode_mma<false>(hd, q, ldq, T, static_cast<const void*>(k), static_cast<const void*>(v), n_past, n_past_dev,
                          static_cast<const void* const*>(nullptr), static_cast<const void* const*>(nullptr),
                          static_cast<const int64_t*>(nullptr), int64_t(1), n_past + T, bucket, H, Hkv, hd, scale, out,
                          scratch, s);
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

// Rows [0, rows) of an 8-bit cache as bf16 rows of `width` (value times scale, rounded).
__global__ void kv_q8_to_bf16_kernel(const uint8_t* __restrict__ cache, int64_t rows, int64_t width,
                                     bf16* __restrict__ out) {
  FH1_PDL_ENTER();
  const int B = kv_q8_block_of(width);
  const int64_t rb = kv_q8_row_bytes_of(width);
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * width;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / width, c = e - r * width;
    const uint8_t* row = cache + r * rb;
    out[e] = __float2bfloat16_rn(static_cast<float>(reinterpret_cast<const int8_t*>(row)[c]) *
                                 reinterpret_cast<const float*>(row + kv_q8_scales_at_of(width))[c / B]);
  }
}

// The 8-bit form of the tensor-core decode kernel: its shapes, and whole 16-byte chunks of a
// head's values in whole blocks of 16 or 32 (every Falcon-H1 size: head size 64 or 128).
bool decode_q8_mma_ok(int64_t T, int H, int Hkv, int hd) {
  if (Hkv <= 0 || H % Hkv != 0 || !decode_mma_ok(T, H, Hkv, hd) || hd % 16 != 0) return false;
  const int qb = kv_q8_block_of(int64_t(Hkv) * hd);
  return qb >= 16 && hd % qb == 0;
}

// Elements of one widened cache, rounded up to whole 16 bytes.
int64_t widened_elems(int64_t n_keys, int64_t width) { return (n_keys * width + 7) / 8 * 8; }

// 8-bit caches: the tensor-core decode kernel's Q8 form where it applies, else both caches
// widened to bf16 at the start of the scratch and the bf16 path on them (after them in the scratch).
void attention_q8(const float* q, int64_t ldq, int64_t T, const void* k, const void* v, int64_t n_past,
                  const int64_t* n_past_dev, bool bucket, int H, int Hkv, int hd, float scale, bool tf32, float* out,
                  float* scratch, cudaStream_t s) {
  if (T <= kMaxDecodeT && decode_q8_mma_ok(T, H, Hkv, hd)) {
    decode_mma<true>(hd, q, ldq, T, k, v, n_past, n_past_dev, static_cast<const void* const*>(nullptr),
                     static_cast<const void* const*>(nullptr), static_cast<const int64_t*>(nullptr), int64_t(1),
                     n_past + T, bucket, H, Hkv, hd, scale, out, scratch, s);
    return;
  }
  // (A recorded decode step records these with its host length: attention_decode_device_len
  // says no, so its graph is captured again at each length.)
  if (n_past_dev) throw Error("CUDA attention: 8-bit caches with a device-side length need the 8-bit decode kernel");
  const int64_t n_keys = n_past + T, width = int64_t(Hkv) * hd, e = widened_elems(n_keys, width);
  bf16* kb = reinterpret_cast<bf16*>(scratch);
  bf16* vb = kb + e;
  for (auto [src, dst] : {std::pair{k, kb}, std::pair{v, vb}}) {
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((e + 255) / 256, 65535));
    launch(kv_q8_to_bf16_kernel, blocks, 256, 0, s, static_cast<const uint8_t*>(src), n_keys, width, dst);
    check_launch("attention (8-bit caches widened)");
  }
  // Launched plainly: the bf16 decode kernel reads its first tile before the PDL wait, which is
  // safe for cache rows the kernel just before does not write, but here it writes all of V's.
  PdlOff plain(true);
  attention_t(q, ldq, T, static_cast<const bf16*>(kb), static_cast<const bf16*>(vb), n_past, n_past_dev, bucket, H,
              Hkv, hd, scale, tf32, out, scratch + e, s);
}

}  // namespace

bool attention_rows_ok(int H, int hd, int Hkv, KvType kv) {
  if (hd % 4 != 0 || hd > 256 || (int64_t(Hkv) * hd) % 4 != 0) return false;
  return kv != KvType::Q8 || decode_q8_mma_ok(1, H, Hkv, hd);
}

size_t attention_rows_scratch_floats(int64_t n, int64_t max_past, int H, int Hkv, int hd, bool bucket) {
  // Enough for either decode kernel.
  const int64_t ns = std::max(split_count(max_past + 1, gqa_units(n, H, Hkv, hd), bucket),
                              mma_split_count(max_past + 1, n * Hkv, bucket, n == 1, kQ8PerSm));
  return static_cast<size_t>(n * H * ns) * static_cast<size_t>(2 + hd);
}

void attention_rows(const float* q, int64_t ldq, int64_t n, const void* const* kcs, const void* const* vcs,
                    const int64_t* n_pasts, int64_t max_past, bool bucket, int H, int Hkv, int hd, float scale,
                    KvType kv, float* out, float* scratch, cudaStream_t s) {
  if (n == 0 || H == 0) return;
  if (Hkv <= 0 || H % Hkv != 0) throw Error("CUDA attention: heads must be a multiple of kv heads");
  if (!attention_rows_ok(H, hd, Hkv, kv))
    throw Error("CUDA attention_rows: not for this head size, GQA group or KV cache type (attention_rows_ok)");
  if (kv == KvType::Q8)
    decode_mma<true>(hd, q, ldq, int64_t(1), static_cast<const void*>(nullptr), static_cast<const void*>(nullptr),
                     int64_t(0), static_cast<const int64_t*>(nullptr), kcs, vcs, n_pasts, n, max_past + 1, bucket, H,
                     Hkv, hd, scale, out, scratch, s);
  else if (kv == KvType::BF16)
    attention_rows_t(q, ldq, n, reinterpret_cast<const bf16* const*>(kcs), reinterpret_cast<const bf16* const*>(vcs),
                     n_pasts, max_past, bucket, H, Hkv, hd, scale, out, scratch, s);
  else
    attention_rows_t(q, ldq, n, reinterpret_cast<const float* const*>(kcs), reinterpret_cast<const float* const*>(vcs),
                     n_pasts, max_past, bucket, H, Hkv, hd, scale, out, scratch, s);
}

size_t attention_scratch_floats(int64_t T, int64_t n_past, int H, int Hkv, int hd, bool bucket, KvType kv,
                                bool tensor_cores) {
  if (kv == KvType::Q8 && !(T <= kMaxDecodeT && decode_q8_mma_ok(T, H, Hkv, hd)))  // two bf16 caches first
    return static_cast<size_t>(widened_elems(n_past + T, int64_t(Hkv) * hd)) +
           attention_scratch_floats(T, n_past, H, Hkv, hd, bucket, KvType::BF16, tensor_cores);
  if (T > kMaxDecodeT) {  // the caches' fp16 form for the fp16 flash kernel
    const bool f16 = kv == KvType::BF16 && tensor_cores && flash_precision() == 3;
    return f16 ? (attention_prefill_scratch_bytes(T, n_past, Hkv, hd) + sizeof(float) - 1) / sizeof(float) : 0;
  }
  // Enough for either decode kernel.
  const int64_t ns1 = split_plan(T, n_past, H).nsplit;
  const int64_t ns2 = split_count(n_past + T, gqa_units(T, H, Hkv, hd), bucket);
  const int64_t ns3 = mma_split_count(n_past + T, Hkv, bucket, true, kQ8PerSm);
  return static_cast<size_t>(T * H * std::max({ns1, ns2, ns3})) * static_cast<size_t>(2 + hd);
}

bool attention_decode_device_len(int64_t T, int H, int hd, const void* k, const void* v, int Hkv, KvType kv) {
  if (T > kMaxDecodeT) return false;
  if (kv == KvType::Q8) return decode_q8_mma_ok(T, H, Hkv, hd);
  return kv == KvType::BF16 ? gqa_decode_ok<bf16>(hd, k, v, Hkv) : gqa_decode_ok<float>(hd, k, v, Hkv);
}

void attention(const float* q, int64_t ldq, int64_t T, const void* k, const void* v, int64_t n_past,
               const int64_t* n_past_dev, bool bucket, int H, int Hkv, int hd, float scale, bool tf32, KvType kv,
               float* out, float* scratch, cudaStream_t s) {
  if (T == 0 || H == 0) return;
  if (Hkv <= 0 || H % Hkv != 0) throw Error("CUDA attention: heads must be a multiple of kv heads");
  if (hd > 256) throw Error("CUDA attention: head_dim " + std::to_string(hd) + " > 256 is not supported");
  if (kv == KvType::Q8)
    attention_q8(q, ldq, T, k, v, n_past, n_past_dev, bucket, H, Hkv, hd, scale, tf32, out, scratch, s);
  else if (kv == KvType::BF16)
    attention_t(q, ldq, T, static_cast<const bf16*>(k), static_cast<const bf16*>(v), n_past, n_past_dev, bucket, H,
                Hkv, hd, scale, tf32, out, scratch, s);
  else
    attention_t(q, ldq, T, static_cast<const float*>(k), static_cast<const float*>(v), n_past, n_past_dev, bucket, H,
                Hkv, hd, scale, tf32, out, scratch, s);
}

}  // namespace fh1::cuda
