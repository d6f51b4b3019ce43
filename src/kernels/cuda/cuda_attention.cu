// Causal grouped-query attention on the GPU, float32 throughout (online softmax).
//  - many queries (prefill): one block per (32-query tile, head); 4 lanes share a query, each
//    holding every 4th dimension; keys and values pass through shared memory 32 rows at a time.
//  - few queries (decode): split-KV. One block per (key range, head, query); each warp walks its
//    keys with the lanes across dimensions; partial (max, sum, acc) per range go to scratch and a
//    second kernel merges them.
#include <algorithm>
#include <cfloat>

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

__global__ void attn_merge_kernel(const float* __restrict__ ml, const float* __restrict__ pacc, int H, int hd,
                                  int nsplit, float* __restrict__ out) {
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  const int64_t base = (t * H + h) * nsplit;
  float M = -FLT_MAX;
  for (int s = 0; s < nsplit; ++s) M = fmaxf(M, ml[2 * (base + s)]);
  float L = 0.0f;
  for (int s = 0; s < nsplit; ++s) L += ml[2 * (base + s) + 1] * __expf(ml[2 * (base + s)] - M);
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < nsplit; ++s) a += pacc[(base + s) * hd + d] * __expf(ml[2 * (base + s)] - M);
    out[t * int64_t(H) * hd + int64_t(h) * hd + d] = a / L;
  }
}

struct SplitPlan {
  int nsplit;
  int64_t chunk;
};

SplitPlan split_plan(int64_t T, int64_t n_past, int H) {
  const int64_t n_keys = n_past + T;
  const int64_t want_blocks = 1024;
  int64_t nsplit = (n_keys + 63) / 64;
  const int64_t cap = std::max<int64_t>(1, want_blocks / (int64_t(H) * T));
  nsplit = std::max<int64_t>(1, std::min(nsplit, cap));
  const int64_t chunk = (n_keys + nsplit - 1) / nsplit;
  return {static_cast<int>((n_keys + chunk - 1) / chunk), chunk};
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
  attn_tile_kernel<MPL><<<grid, kTileQ * 4, smem, s>>>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out);
  check_launch("attention (tile)");
}

template <int DPL>
void launch_split(const float* q, int64_t ldq, int64_t T, const float* k, const float* v, int64_t n_past, int H,
                  int Hkv, int hd, float scale, float* out, float* scratch, cudaStream_t s) {
  const SplitPlan sp = split_plan(T, n_past, H);
  float* ml = scratch;
  float* pacc = scratch + 2 * T * H * sp.nsplit;
  const dim3 grid(static_cast<unsigned>(sp.nsplit), static_cast<unsigned>(H), static_cast<unsigned>(T));
  attn_split_kernel<DPL><<<grid, kSplitWarps * 32, 0, s>>>(q, ldq, k, v, n_past, H, Hkv, hd, scale, sp.chunk,
                                                          sp.nsplit, ml, pacc);
  check_launch("attention (split)");
  attn_merge_kernel<<<dim3(static_cast<unsigned>(H), static_cast<unsigned>(T)), 32 * ((hd + 31) / 32), 0, s>>>(
      ml, pacc, H, hd, sp.nsplit, out);
  check_launch("attention (merge)");
}

}  // namespace

size_t attention_scratch_floats(int64_t T, int64_t n_past, int H, int hd) {
  if (T > kMaxDecodeT) return 0;
  const SplitPlan sp = split_plan(T, n_past, H);
  return static_cast<size_t>(T * H * sp.nsplit) * static_cast<size_t>(2 + hd);
}

void attention(const float* q, int64_t ldq, int64_t T, const float* k, const float* v, int64_t n_past, int H,
               int Hkv, int hd, float scale, float* out, float* scratch, cudaStream_t s) {
  if (T == 0 || H == 0) return;
  if (Hkv <= 0 || H % Hkv != 0) throw Error("CUDA attention: heads must be a multiple of kv heads");
  if (hd > 256) throw Error("CUDA attention: head_dim " + std::to_string(hd) + " > 256 is not supported");
  if (T <= kMaxDecodeT) {
    if (hd <= 32) launch_split<1>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    else if (hd <= 64) launch_split<2>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    else if (hd <= 128) launch_split<4>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    else launch_split<8>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
    return;
  }
  if (hd <= 16) launch_tile<4>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else if (hd <= 32) launch_tile<8>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else if (hd <= 64) launch_tile<16>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else if (hd <= 128) launch_tile<32>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else launch_tile<64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
}

}  // namespace fh1::cuda
