// The Mamba-2 scan on the GPU. One warp per (head h, row p of the head's P x N state): each lane
// keeps N / 32 state entries in registers (runs of 4, state_entry()) and walks the tokens in order,
//   S[p, n] = exp(dt A) S[p, n] + dt x[p] B[n];   y[p] = sum_n S[p, n] C[n] + D x[p]
// with the sum over n reduced across the warp. For T == 1 this is the decode recurrence.
//
// For T > 1 one pass over all tokens has only heads * P / 8 blocks, each walking all T tokens in
// order: on a long prompt most of the GPU waits (latency bound). The recurrence is linear in S,
// so the T tokens split into nc chunks that run at the same time, in three launches:
//   1. each chunk c runs the recurrence from a zero state over its tokens (no y) and writes its
//      end state E[c] and its decay a[c, h] = prod_t exp(dt_t A) to the scratch;
//   2. the chunks' start states, in order (one thread per state entry):
//        start[0] = S,  start[c + 1] = a[c] start[c] + E[c],  new S = a[nc-1] start[nc-1] + E[nc-1];
//   3. each chunk reruns the recurrence from start[c] over its tokens and writes y.
// Passes 1 and 3 are the kernel of the single pass with a chunk per blockIdx.y; nc = 1 is that
// single pass (state read, y written, state written in one launch). The chunked form differs
// from the sequential order only by the rounding at chunk boundaries; scan_plan() picks nc. (The
// CPU reference runs the chunked SSD form of the same recurrence; the tests compare the two.)
// All float32; the state is read once and written once per call.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>

#include <cublas_v2.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_rows.cuh"
#include "kernels/cuda/cuda_ssd_mma.cuh"
#include "kernels/cuda/cuda_ssd_wgmma.cuh"
#include "kernels/cuda/cuda_ssd_wgmma_pairs.cuh"
#include "kernels/cuda/cuda_ssm_starts.cuh"
#include "util/error.h"

namespace fh1::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;    // warps of one block: consecutive rows p of one head
constexpr int kMinChunkTokens = 64;  // shorter chunks: the extra pass and the start states cost more than they save
constexpr int64_t kMaxChunks = 65535;  // gridDim.y

template <int NPL>
constexpr int kTileTokens = NPL <= 4 ? 32 : 16;  // at most 32 KB of B and C tiles

// The state entry n that lane holds in its i-th register: runs of 4 consecutive entries (2 or 1
// when NPL < 4), so that B and C are read from shared memory 16 bytes at a time and each
// quarter-warp's 16-byte reads cover 128 contiguous bytes (no bank conflicts). (Entries lane +
// 32 i took four times the shared-memory instructions: the scan of a 7B 8K-token prefill took
// 320 ms, 249 ms with runs of 4; FH1_CUDA_PROFILE on an H200.)
template <int NPL>
__device__ __forceinline__ int state_entry(int lane, int i) {
  constexpr int V = NPL >= 4 ? 4 : NPL;
  return V * lane + 32 * V * (i / V) + i % V;
}

__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// Chunk c = blockIdx.y: tokens [c * chunk_len, min(T, (c + 1) * chunk_len)), from the state at
// state_in + c * state_stride (zeros when state_in is null); the end state goes to state_out +
// c * state_stride when state_out is not null (state_in == state_out: in place). kWriteY: the
// chunk's y; else (pass 1) its decay prod_t exp(dt_t A) goes to decay_out[c * H + h] when
// decay_out is not null.
// Tokens pass through shared memory TS at a time: B (and C for y) of the head's group, dt after
// softplus and clamp, and x of the block's rows, loaded once for all warps of the block.
template <int NPL, int TS, bool kWriteY>  // state entries per lane: N <= 32 * NPL; TS tokens per tile
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    ssm_scan_kernel(const float* __restrict__ x, const float* __restrict__ B, const float* __restrict__ C,
                    int64_t ld_xbc, const float* __restrict__ dt_raw, int64_t ld_dt, int64_t T, int64_t chunk_len,
                    int H, int P, int N, int heads_per_group, const float* __restrict__ A_,
                    const float* __restrict__ D_, const float* __restrict__ dt_bias, float dt_min, float dt_max,
                    const float* state_in, float* state_out, int64_t state_stride, float* __restrict__ decay_out,
                    float* __restrict__ y) {
  FH1_PDL_ENTER();
  // Without y, the C tile and the staged y are not used (one float each).
  __shared__ __align__(16) float Bs[TS * 32 * NPL];
  __shared__ __align__(16) float Cs[kWriteY ? TS * 32 * NPL : 4];
  __shared__ float dts[TS], xs[TS * kWarpsPerBlock], ys[kWriteY ? TS * kWarpsPerBlock : 1];
  const int blocks_per_head = (P + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int h = blockIdx.x / blocks_per_head;
  const int p0 = (blockIdx.x % blocks_per_head) * kWarpsPerBlock;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int p = p0 + warp;
  const bool row_ok = p < P;
  const int64_t g_off = int64_t(h / heads_per_group) * N;
  const float A = A_[h], Dh = D_[h], bias = dt_bias[h];
  const int64_t ldy = int64_t(H) * P;
  const int64_t chunk = blockIdx.y;
  const int64_t t_begin = chunk * chunk_len, t_end = T - t_begin < chunk_len ? T : t_begin + chunk_len;
  const int64_t row_at = chunk * state_stride + (int64_t(h) * P + (row_ok ? p : 0)) * N;

  float s[NPL];
#pragma unroll
  for (int i = 0; i < NPL; ++i) {
    const int n = state_entry<NPL>(lane, i);
    s[i] = (state_in != nullptr && row_ok && n < N) ? state_in[row_at + n] : 0.0f;
  }
  float decay = 1.0f;  // pass 1: prod of exp(dt A) over the chunk's tokens
  constexpr int NP = 32 * NPL;  // padded row of Bs / Cs
  for (int64_t t0 = t_begin; t0 < t_end; t0 += TS) {
    const int L = static_cast<int>(t_end - t0 < TS ? t_end - t0 : TS);
    __syncthreads();
    for (int e = threadIdx.x; e < TS * NP; e += blockDim.x) {
      const int r = e / NP, n = e - r * NP;
      const bool ok = r < L && n < N;
      const int64_t at = (t0 + r) * ld_xbc + g_off + n;
      Bs[e] = ok ? B[at] : 0.0f;
      if constexpr (kWriteY) Cs[e] = ok ? C[at] : 0.0f;
    }
    for (int e = threadIdx.x; e < TS * kWarpsPerBlock; e += blockDim.x) {
      const int r = e / kWarpsPerBlock, w = e - r * kWarpsPerBlock;
      xs[e] = (r < L && p0 + w < P) ? x[(t0 + r) * ld_xbc + int64_t(h) * P + p0 + w] : 0.0f;
    }
    for (int r = threadIdx.x; r < TS; r += blockDim.x)
      dts[r] = r < L ? fminf(fmaxf(softplus(dt_raw[(t0 + r) * ld_dt + h] + bias), dt_min), dt_max) : 0.0f;
    __syncthreads();
    if constexpr (kWriteY) {
      // Four tokens at a time: the state updates stay in order, the four reductions over n
      // interleave (the same arithmetic per token as the loop below).
      int r = 0;
      for (; r + 4 <= L; r += 4) {
        float acc[4], xv[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const float dt = dts[r + u];
          xv[u] = xs[(r + u) * kWarpsPerBlock + warp];
          const float dA = expf(dt * A), dx = dt * xv[u];
          acc[u] = 0.0f;
#pragma unroll
          for (int i = 0; i < NPL; ++i) {
            s[i] = s[i] * dA + Bs[(r + u) * NP + state_entry<NPL>(lane, i)] * dx;
            acc[u] += s[i] * Cs[(r + u) * NP + state_entry<NPL>(lane, i)];
          }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
#pragma unroll
          for (int u = 0; u < 4; ++u) acc[u] += __shfl_xor_sync(0xffffffffu, acc[u], o);
        if (lane == 0)
#pragma unroll
          for (int u = 0; u < 4; ++u) ys[(r + u) * kWarpsPerBlock + warp] = acc[u] + Dh * xv[u];
      }
      for (; r < L; ++r) {
        const float dt = dts[r], xv = xs[r * kWarpsPerBlock + warp];
        const float dA = expf(dt * A), dx = dt * xv;
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < NPL; ++i) {
          s[i] = s[i] * dA + Bs[r * NP + state_entry<NPL>(lane, i)] * dx;
          acc += s[i] * Cs[r * NP + state_entry<NPL>(lane, i)];
        }
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) ys[r * kWarpsPerBlock + warp] = acc + Dh * xv;
      }
      __syncthreads();
      for (int e = threadIdx.x; e < L * kWarpsPerBlock; e += blockDim.x) {
        const int r = e / kWarpsPerBlock, w = e - r * kWarpsPerBlock;
        if (p0 + w < P) y[(t0 + r) * ldy + int64_t(h) * P + p0 + w] = ys[e];
      }
    } else {
      // The state alone (the same update as above) and the chunk's decay.
#pragma unroll 4
      for (int r = 0; r < L; ++r) {
        const float dt = dts[r];
        const float dA = expf(dt * A), dx = dt * xs[r * kWarpsPerBlock + warp];
        decay *= dA;
#pragma unroll
        for (int i = 0; i < NPL; ++i) s[i] = s[i] * dA + Bs[r * NP + state_entry<NPL>(lane, i)] * dx;
      }
    }
  }
  if (state_out != nullptr && row_ok) {
#pragma unroll
    for (int i = 0; i < NPL; ++i) {
      const int n = state_entry<NPL>(lane, i);
      if (n < N) state_out[row_at + n] = s[i];
    }
  }
  if (!kWriteY && decay_out != nullptr && p0 == 0 && threadIdx.x == 0) decay_out[chunk * H + h] = decay;
}

// Pass 2, the chunks' start states: cuda_ssm_starts.cuh.

// ---- The chunked SSD: Mamba-2's matrix form, for long prompts ----
// For chunks of Q tokens (c) and head h (group g), with a_t = dt_t A and cum_t = a_0 + ... + a_t
// within the chunk (in double: the products below use differences of these sums):
//   CB[c, g]      = C B^T                                              (Q x Q, per group)
//   M[c, h][t, s] = CB[t, s] exp(cum_t - cum_s) dt_s for s <= t, else 0
//   y[c, h]       = M X                                                (intra-chunk, Q x P)
//   E[c, h]       = Xd^T B,  Xd[s, p] = exp(cum_last - cum_s) dt_s x[s, p]   (the chunk's end
//                   state from zero, P x N, the layout of `state`)
//   start states  = the recurrence over chunks (ssm_chunk_starts_kernel), E overwritten by them
//   y[c, h]      += exp(cum_t) (C S_start^T)[t, p] + D x[t, p]
// In TF32 (tf32: inputs rounded to 10-bit mantissas, float32 sums), where the shapes fit
// (ssd_fused_fits), CB is a strided batched cuBLAS GEMM and the rest two fused kernels
// (cuda_ssd_mma.cuh): E, and y with M formed in registers. Otherwise the four products are batched
// cuBLAS GEMMs of float32 matrices through pointer arrays, over (chunk, head) for y = M X and over
// (chunk, group) for the others, in TF32 or float32 (only the order of the sums differs from the
// recurrence), and the rest element-wise kernels. The same products as the recurrence's chain of warp reductions
// per token, but in GEMMs (one 7B layer at 8K tokens: 5.43 ms by the recurrence, 1.31 ms in
// float32, 0.74 ms in TF32 on an H200). Tokens go through in windows of whole chunks
// (scratch bounded by the window); the last T % Q tokens go to the recurrence.
// One warp per (chunk, head): dt (softplus, clamp), the running sums cum of dt A, the chunk's
// decay exp(cum_last), and per token the factors of the element-wise kernels below: xdf =
// exp(cum_last - cum_t) dt_t (of Xd) and ecum = exp(cum_t) (of the start states' outputs).
__global__ void ssd_prep_kernel(const float* __restrict__ dt_raw, int64_t ld_dt, SsdShape d, const float* __restrict__ A,
                                const float* __restrict__ dt_bias, float dt_min, float dt_max, float* __restrict__ dtv,
                                double* __restrict__ cum, float* __restrict__ decay, float* __restrict__ xdf,
                                float* __restrict__ ecum) {
  FH1_PDL_ENTER();
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (w >= d.nc * d.H) return;
  const int64_t c = w / d.H;
  const int h = static_cast<int>(w % d.H);
  const float Ah = A[h], bias = dt_bias[h];
  double run = 0.0;
  for (int t0 = 0; t0 < d.Q; t0 += 32) {
    const int t = t0 + lane;
    float dt = 0.0f;
    if (t < d.Q) dt = fminf(fmaxf(softplus(dt_raw[(c * d.Q + t) * ld_dt + h] + bias), dt_min), dt_max);
    double v = double(dt * Ah);
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const double n = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += n;
    }
    v += run;
    if (t < d.Q) {
      dtv[w * d.Q + t] = dt;
      cum[w * d.Q + t] = v;
    }
    run = __shfl_sync(0xffffffffu, v, 31);
  }
  if (lane == 0) decay[w] = expf(float(run));
  // Each lane reads back the sums it wrote.
  for (int t = lane; t < d.Q; t += 32) {
    const double ct = cum[w * d.Q + t];
    xdf[w * d.Q + t] = expf(float(run - ct)) * dtv[w * d.Q + t];
    ecum[w * d.Q + t] = expf(float(ct));
  }
}

// The GEMMs' pointer arrays, one thread per (chunk, head): ptr[k * nb + b] for A, B and C of the
// intra-chunk outputs (per head); then per (chunk c, group g) at ptr[3 nb + k nc G + c G + g]
// those of CB (k = 0..2), of the end states (3..5) and of the start states' outputs (6..8): a
// group's heads are adjacent columns of x and of the states, so one GEMM serves all of them.
__global__ void ssd_pointers_kernel(SsdShape d, const float* x, const float* B, const float* C, float* y,
                                    const float* CB, float* M, float* Xd, float* E, const float** ptr) {
  FH1_PDL_ENTER();
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nb = d.nc * d.H;
  if (b >= nb) return;
  const int64_t c = b / d.H;
  const int h = static_cast<int>(b % d.H), hpg = d.H / d.G, g = h / hpg;
  const int64_t tok = c * d.Q, QQ = int64_t(d.Q) * d.Q, PN = int64_t(d.P) * d.N;
  ptr[b] = x + tok * d.ld_xbc + int64_t(h) * d.P;
  ptr[nb + b] = M + b * QQ;
  ptr[2 * nb + b] = y + tok * d.ldy + int64_t(h) * d.P;
  if (h % hpg == 0) {
    const int64_t ncg = d.nc * d.G, bg = c * d.G + g;
    const float* Bc = B + tok * d.ld_xbc + int64_t(g) * d.N;
    const float* Cc = C + tok * d.ld_xbc + int64_t(g) * d.N;
    float* xdc = Xd + tok * d.ldy + int64_t(h) * d.P;
    const float* v[9] = {Bc, Cc, CB + bg * QQ, Bc, xdc, E + b * PN, E + b * PN, Cc, xdc};
    for (int k = 0; k < 9; ++k) ptr[3 * nb + k * ncg + bg] = v[k];
  }
}

// M[c, h][t, s] from CB[c, g][t, s] (both row-major Q x Q). Block (x, b = c H + h); 32-bit
// index arithmetic (64-bit divisions made these element-wise kernels cost more than the GEMMs).
__global__ void ssd_mask_kernel(SsdShape d, const float* __restrict__ CB, const float* __restrict__ dtv,
                                const double* __restrict__ cum, float* __restrict__ M) {
  FH1_PDL_ENTER();
  const int QQ = d.Q * d.Q;
  const int b = blockIdx.y, c = b / d.H, h = b - c * d.H, g = h / (d.H / d.G);
  const double* cb = cum + int64_t(b) * d.Q;
  const float* dtb = dtv + int64_t(b) * d.Q;
  const float* cbm = CB + (int64_t(c) * d.G + g) * QQ;
  float* Mb = M + int64_t(b) * QQ;
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < QQ; r += gridDim.x * blockDim.x) {
    const int t = r / d.Q, s = r - t * d.Q;
    Mb[r] = s <= t ? cbm[r] * expf(float(cb[t] - cb[s])) * dtb[s] : 0.0f;
  }
}

// The same, 4 entries (s .. s + 3 of row t) a thread, where Q is a multiple of 4: the entries
// past the diagonal are stored as zeros without reading anything (the scalar form ran at ~1.5
// TB/s, its 100 MB of a 1.5B-Deep layer at 8K in 69 us on an H200).
__global__ void ssd_mask4_kernel(SsdShape d, const float* __restrict__ CB, const float* __restrict__ dtv,
                                 const double* __restrict__ cum, float* __restrict__ M) {
  FH1_PDL_ENTER();
  const int Q4 = d.Q / 4, QQ = d.Q * d.Q;
  const int b = blockIdx.y, c = b / d.H, h = b - c * d.H, g = h / (d.H / d.G);
  const double* cb = cum + int64_t(b) * d.Q;
  const float* dtb = dtv + int64_t(b) * d.Q;
  const float* cbm = CB + (int64_t(c) * d.G + g) * QQ;
  float* Mb = M + int64_t(b) * QQ;
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < d.Q * Q4; r += gridDim.x * blockDim.x) {
    const int t = r / Q4, s0 = 4 * (r - t * Q4);
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (s0 <= t) {
      const double ct = cb[t];
      const float4 v = reinterpret_cast<const float4*>(cbm)[r];
      const float4 dt = reinterpret_cast<const float4*>(dtb)[s0 / 4];
      o.x = v.x * expf(float(ct - cb[s0])) * dt.x;
      if (s0 + 1 <= t) o.y = v.y * expf(float(ct - cb[s0 + 1])) * dt.y;
      if (s0 + 2 <= t) o.z = v.z * expf(float(ct - cb[s0 + 2])) * dt.z;
      if (s0 + 3 <= t) o.w = v.w * expf(float(ct - cb[s0 + 3])) * dt.w;
    }
    reinterpret_cast<float4*>(Mb)[r] = o;
  }
}

// Xd[t, h P + p] = xdf[c, h, t] x[t, h P + p]. V: 4 entries a thread (P, the strides and the
// pointers allow it), over the window's rows x units.
template <bool V>
__global__ void ssd_xd_kernel(SsdShape d, const float* __restrict__ x, const float* __restrict__ xdf,
                              float* __restrict__ Xd) {
  FH1_PDL_ENTER();
  const int U = V ? d.ldy / 4 : d.ldy, PU = V ? d.P / 4 : d.P;
  FH1_FOR_ROWS(t, d.nc * d.Q) FH1_FOR_UNITS(u, U) {
    const int c = static_cast<int>(t) / d.Q, tt = static_cast<int>(t) - c * d.Q;
    const float f = xdf[(int64_t(c) * d.H + static_cast<int>(u) / PU) * d.Q + tt];
    if constexpr (V) st4(Xd + t * d.ldy, u, map4(ld4(x + t * d.ld_xbc, u), [f](float v) { return f * v; }));
    else Xd[t * d.ldy + u] = f * x[t * d.ld_xbc + u];
  }
}

// y[t, h P + p] += ecum[c, h, t] Yoff[t, h P + p] + D[h] x[t, h P + p]. V: as ssd_xd_kernel.
template <bool V>
__global__ void ssd_combine_kernel(SsdShape d, const float* __restrict__ x, const float* __restrict__ Yoff,
                                   const float* __restrict__ ecum, const float* __restrict__ D_, float* __restrict__ y) {
  FH1_PDL_ENTER();
  const int U = V ? d.ldy / 4 : d.ldy, PU = V ? d.P / 4 : d.P;
  FH1_FOR_ROWS(t, d.nc * d.Q) FH1_FOR_UNITS(u, U) {
    const int c = static_cast<int>(t) / d.Q, tt = static_cast<int>(t) - c * d.Q, h = static_cast<int>(u) / PU;
    const float e = ecum[(int64_t(c) * d.H + h) * d.Q + tt], Dh = D_[h];
    const auto f = [e, Dh](float yv, float ov, float xv) { return yv + (e * ov + Dh * xv); };
    if constexpr (V) st4(y + t * d.ldy, u, map4(ld4(y + t * d.ldy, u), ld4(Yoff + t * d.ldy, u), ld4(x + t * d.ld_xbc, u), f));
    else y[t * d.ldy + u] = f(y[t * d.ldy + u], Yoff[t * d.ldy + u], x[t * d.ld_xbc + u]);
  }
}

// How many chunks (0: choose from the device). FH1_CUDA_SCAN_CHUNKS sets it at start.
std::atomic<int>& forced_scan_chunks() {
  static std::atomic<int> n{[] {
    const char* e = std::getenv("FH1_CUDA_SCAN_CHUNKS");
    return e ? std::max(0, std::atoi(e)) : 0;
  }()};
  return n;
}

// Blocks of the y pass (the larger kernel of the two) the current device holds at once: its SMs
// times the blocks one SM holds. Queried once per device (host-side calls only, no stream work).
template <int NPL>
int64_t resident_scan_blocks() {
  static std::mutex mu;
  static std::map<int, int64_t> by_device;
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  auto it = by_device.find(dev);
  if (it != by_device.end()) return it->second;
  int sms = 0, per_sm = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, ssm_scan_kernel<NPL, kTileTokens<NPL>, true>,
                                                      kWarpsPerBlock * 32, 0),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return by_device[dev] = int64_t(std::max(sms, 1)) * std::max(per_sm, 1);
}

struct ScanPlan {
  int chunks = 1;
  int64_t chunk_len = 0;  // tokens per chunk; the last chunk may have fewer
};

// nc: chunking adds a pass, so it pays only where the single pass leaves most of the device
// idle: when the single pass's heads * P / 8 blocks fill at most a quarter of what the device
// holds at once, nc is the most chunks that still run together in one wave (a second wave would
// not pay); otherwise nc = 1. At most T / 64 chunks. Measured on an H200 (132 SMs, 6 blocks per
// SM), 8K-token prefill: 0.5B (192 blocks) 199 -> 177 ms with 4 chunks; 7B (384 blocks) 768 ms
// with 1 chunk, 818 ms with 2, 783 ms with 16; so 7B, 3B and 34B keep the single pass.
template <int NPL>
ScanPlan scan_plan(int64_t T, const SsmParams& p) {
  const int forced = forced_scan_chunks().load();
  int64_t nc = forced;
  if (forced == 0) {
    const int64_t head_blocks =
        std::max<int64_t>(1, int64_t(p.heads) * ((p.head_dim + kWarpsPerBlock - 1) / kWarpsPerBlock));
    const int64_t resident = resident_scan_blocks<NPL>();
    nc = head_blocks * 4 <= resident ? std::min(resident / head_blocks, T / kMinChunkTokens) : 1;
  }
  nc = std::clamp<int64_t>(nc, 1, std::clamp<int64_t>(T, 1, kMaxChunks));
  ScanPlan plan;
  plan.chunk_len = (T + nc - 1) / nc;
  plan.chunks = static_cast<int>((T + plan.chunk_len - 1) / plan.chunk_len);  // no empty chunk
  return plan;
}

size_t scan_scratch_floats(const ScanPlan& plan, const SsmParams& p) {
  if (plan.chunks <= 1) return 0;
  // Per chunk: its state [H, P, N], then its decay per head.
  return size_t(plan.chunks) * (size_t(p.heads) * p.head_dim * p.d_state + size_t(p.heads));
}

// f(std::integral_constant<int, NPL>{}) with the state entries per lane that d_state N needs.
template <class F>
auto with_entries_per_lane(int N, F&& f) {
  if (N <= 32) return f(std::integral_constant<int, 1>{});
  if (N <= 64) return f(std::integral_constant<int, 2>{});
  if (N <= 128) return f(std::integral_constant<int, 4>{});
  if (N <= 256) return f(std::integral_constant<int, 8>{});
  throw Error("CUDA ssm_scan: d_state " + std::to_string(N) + " > 256 is not supported");
}

// The SSD's knobs: the shortest prompt it takes (-1: never; kScanSsdAuto; FH1_CUDA_SSD_MIN) and
// the chunks of a window (FH1_CUDA_SSD_WINDOW; 0: kSsdWindowTokens / Q).
constexpr int64_t kSsdWindowTokens = 8192;
std::atomic<int64_t>& ssd_min_tokens() {
  static std::atomic<int64_t> n{[] {
    const char* e = std::getenv("FH1_CUDA_SSD_MIN");
    return e ? int64_t(std::atoll(e)) : kScanSsdAuto;
  }()};
  return n;
}
// The fused kernels where they fit (FH1_CUDA_SSD_FUSED=0: the batched GEMMs always).
std::atomic<bool>& ssd_fused_on() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("FH1_CUDA_SSD_FUSED");
    return !e || std::string(e) != "0";
  }()};
  return on;
}
// The fused kernels on wgmma where they fit (cuda_ssd_wgmma.cuh; FH1_CUDA_SSD_WGMMA, the values as
// set_ssd_wgmma in cuda_ops.h says).
constexpr int kSsdWgmmaVariants = 4, kSsdWgmmaDefault = 1;
std::atomic<int>& ssd_wgmma_setting() {
  static std::atomic<int> v{[] {
    const char* e = std::getenv("FH1_CUDA_SSD_WGMMA");
    return e ? std::clamp(std::atoi(e), 0, kSsdWgmmaVariants) : kSsdWgmmaDefault;
  }()};
  return v;
}
// The chunks' states through memory as fp16 with a power of two a run of 128 entries, on the
// wgmma path (cuda_ssd_wgmma.cuh; FH1_CUDA_SSD_STATES16=0: float32).
std::atomic<bool>& ssd_states16_setting() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("FH1_CUDA_SSD_STATES16");
    return !e || std::string(e) != "0";
  }()};
  return on;
}
std::atomic<int64_t>& ssd_window_chunks() {
  static std::atomic<int64_t> n{[] {
    const char* e = std::getenv("FH1_CUDA_SSD_WINDOW");
    return e ? std::max<int64_t>(0, std::atoll(e)) : 0;
  }()};
  return n;
}

std::atomic<int>& ssd_forced_chunk() {
  static std::atomic<int> n{[] {
    const char* e = std::getenv("FH1_CUDA_SSD_CHUNK");
    return e ? std::clamp(std::atoi(e), 0, 1024) : 0;
  }()};
  return n;
}

// The SSD's chunk: the model's chunk size (mamba_chunk_size) when it is 32..256, else 128 (a
// shorter chunk makes more, smaller GEMMs and more end states; a longer one a larger mask).
int ssd_chunk_len(const SsmParams& p) {
  const int forced = ssd_forced_chunk().load();
  if (forced > 0) return forced;
  return p.chunk_size >= 32 && p.chunk_size <= 256 ? p.chunk_size : 128;
}

// The leading tokens of a T-token scan that the SSD takes: whole chunks, 0 below the threshold.
// kScanSsdAuto: from 2 chunks where the recurrence's single pass fills the GPU (7B: 256 tokens
// 29.1 -> 26.3 ms of prefill, 512: 48.5 -> 40.5), else from 512 tokens, below which the
// recurrence's parallel chunks win (0.5B: 256 tokens 9.4 ms against 12.3 by the SSD; H200).
int64_t ssd_tokens(int64_t T, const SsmParams& p) {
  int64_t min = ssd_min_tokens().load();
  const int Q = ssd_chunk_len(p);
  if (min == kScanSsdAuto) {
    if (T < 2 * Q) return 0;
    min = 512;
    if (p.d_state <= 256) {
      const bool fills = with_entries_per_lane(p.d_state, [&](auto npl) {
        const int64_t head_blocks = int64_t(p.heads) * ((p.head_dim + kWarpsPerBlock - 1) / kWarpsPerBlock);
        return head_blocks * 4 > resident_scan_blocks<decltype(npl)::value>();
      });
      if (fills) min = 2 * Q;
    }
  }
  if (min < 0 || T < std::max<int64_t>(min, Q)) return 0;
  return T / Q * Q;
}

// Chunks per window: the element-wise kernels take (chunk, head) pairs and the window's tokens
// as gridDim.y (at most 65535).
int64_t ssd_window(int64_t chunks, const SsmParams& p) {
  const int64_t forced = ssd_window_chunks().load(), Q = ssd_chunk_len(p);
  const int64_t w = forced > 0 ? forced : std::max<int64_t>(1, kSsdWindowTokens / Q);
  return std::max<int64_t>(1, std::min({w, chunks, int64_t(65535) / Q, int64_t(65535) / std::max(1, p.heads)}));
}

// Scratch of one window of nc chunks, in floats, each part rounded up to 32 floats, so that every
// part starts 128-byte aligned (the running sums are doubles, the pointer arrays 8-byte pointers,
// and the GEMMs' tensor-core kernels read their matrices 16 bytes at a time: with an odd number
// of heads, parts rounded only to an even count put CB 8 bytes off and TF32 failed with a
// misaligned address). ssd_scan() lays it out in this order.
struct SsdScratch {
  size_t cum, ptr, dtv, decay, xdf, ecum, cb, m, xd, e;
  SsdScratch(int64_t nc, const SsmParams& p) {
    const auto part = [](size_t n) { return (n + 31) / 32 * 32; };
    const size_t Q = size_t(ssd_chunk_len(p)), nb = size_t(nc) * p.heads, ncg = size_t(nc) * p.groups;
    cum = part(2 * nb * Q);
    ptr = part(2 * (3 * nb + 9 * ncg));
    dtv = part(nb * Q);
    decay = part(nb);
    xdf = ecum = part(nb * Q);
    cb = part(ncg * Q * Q);
    m = part(nb * Q * Q);
    xd = part(size_t(nc) * Q * size_t(p.heads) * p.head_dim);
    e = part(nb * size_t(p.head_dim) * p.d_state);
  }
  size_t total() const { return cum + ptr + dtv + decay + xdf + ecum + cb + m + xd + e; }
};

// The first Ts tokens (whole chunks) of a scan by the SSD, window by window, `state` carried.
void ssd_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
              int64_t Ts, const SsmParams& p, float* state, float* y, float* scratch, size_t scratch_floats,
              bool tf32, cublasHandle_t blas, cudaStream_t s) {
  const int Q = ssd_chunk_len(p);
  const int64_t chunks = Ts / Q, window = ssd_window(chunks, p);
  const SsdScratch sz(window, p);
  if (scratch == nullptr || scratch_floats < sz.total())
    throw Error("CUDA ssm_scan: the chunked SSD needs ssm_scan_scratch_floats() of scratch");
  cudaStream_t bs = nullptr;
  check_blas(cublasGetStream(blas, &bs), "cublasGetStream");
  if (bs != s) throw Error("CUDA ssm_scan: the cuBLAS handle is not on the scan's stream");
  double* cum = reinterpret_cast<double*>(scratch);
  const float** ptr = reinterpret_cast<const float**>(scratch + sz.cum);
  float* dtv = scratch + sz.cum + sz.ptr;
  float* decay = dtv + sz.dtv;
  float* xdf = decay + sz.decay;
  float* ecum = xdf + sz.xdf;
  float* CB = ecum + sz.ecum;
  float* M = CB + sz.cb;
  float* Xd = M + sz.m;
  float* E = Xd + sz.xd;
  // cuBLAS cannot see the pointers in the arrays, and its TF32 kernels assume 16-byte aligned
  // matrices (a misaligned one is a device fault, not an error code): TF32 only where every
  // matrix of every chunk starts on 16 bytes (the caller's x, B, C and y and their strides, the
  // heads' and groups' column offsets, the scratch parts of Q x Q), else float32.
  const auto on16 = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool aligned = on16(x) && on16(B) && on16(C) && on16(y) && on16(scratch) && ld_xbc % 4 == 0 &&
                       p.head_dim % 4 == 0 && p.d_state % 4 == 0 && Q % 4 == 0;
  const cublasComputeType_t compute = tf32 && aligned ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const float one = 1.0f, zero = 0.0f;
  const int64_t HP = int64_t(p.heads) * p.head_dim;
  const auto blocks = [](int64_t n) { return blocks_for(static_cast<size_t>(n)); };
  const bool starts4 = on16(E) && on16(state) && (int64_t(p.head_dim) * p.d_state) % 4 == 0;
  const bool fused = tf32 && aligned && starts4 && ssd_fused_on().load() && ssd_fused_fits(Q, p.head_dim, p.d_state);
  for (int64_t c0 = 0; c0 < chunks; c0 += window) {
    SsdShape d;
    d.Q = Q;
    d.nc = std::min(window, chunks - c0);
    d.H = p.heads, d.P = p.head_dim, d.N = p.d_state, d.G = p.groups;
    d.ld_xbc = ld_xbc, d.ldy = HP;
    const int64_t t0 = c0 * Q, nb = d.nc * d.H, ncg = d.nc * d.G;
    const float* xw = x + t0 * ld_xbc;
    const float* Bw = B + t0 * ld_xbc;
    const float* Cw = C + t0 * ld_xbc;
    float* yw = y + t0 * HP;
    launch(ssd_prep_kernel, blocks(nb * 32), kThreads, 0, s, dt_raw + t0 * ld_dt, ld_dt, d, p.A, p.dt_bias, p.dt_min,
           p.dt_max, dtv, cum, decay, xdf, ecum);
    const auto chunk_starts = [&] {
      const unsigned nblk = blocks(starts4 ? HP * d.N / 4 : HP * d.N);
      with_starts_group(nblk, [&](auto A) {
        if (starts4)
          launch(ssm_chunk_starts_kernel<true, A.value>, nblk, kThreads, 0, s, E, static_cast<const float*>(decay),
                 static_cast<int>(d.nc), d.H, int64_t(d.P) * d.N, state);
        else
          launch(ssm_chunk_starts_kernel<false, A.value>, nblk, kThreads, 0, s, E, static_cast<const float*>(decay),
                 static_cast<int>(d.nc), d.H, int64_t(d.P) * d.N, state);
      });
    };
    if (fused) {
      const int wv = ssd_wgmma();
      ssd_chunks_cb(d, Bw, Cw, CB, compute, blas);
      if (wv == 1 && ssd_states16() && ssd_states16_fits(d)) {
        // fp16 states in the first half of E's room, their factors in the second.
        auto* E16 = reinterpret_cast<__half*>(static_cast<float*>(E));
        float* factors = E + sz.e / 2;
        ssd_wgmma_states(d, xw, Bw, xdf, E16, s, factors);
        const unsigned nblk = blocks(HP * d.N / 4);
        with_starts_group(nblk, [&](auto A) {
          launch(ssm_chunk_starts16_kernel<A.value>, nblk, kThreads, 0, s, E16, factors,
                 static_cast<const float*>(decay), static_cast<int>(d.nc), d.H, int64_t(d.P) * d.N, state);
        });
        ssd_wgmma_outputs16(wv, d, xw, Cw, dtv, cum, ecum, p.D, CB, E16, factors, yw, s);
        continue;
      }
      if (wv > 0 && wv != 4 && ssd_states_wgmma_fits(d)) ssd_wgmma_states(d, xw, Bw, xdf, E, s);
      else ssd_fused_states(d, xw, Bw, xdf, E, s);
      chunk_starts();
      if (wv > 0 && ssd_outputs_wgmma_fits(d)) ssd_wgmma_outputs(wv, d, xw, Cw, dtv, cum, ecum, p.D, CB, E, yw, s);
      else ssd_fused_outputs(d, xw, Cw, dtv, cum, ecum, p.D, CB, E, yw, s);
      continue;
    }
    launch(ssd_pointers_kernel, blocks(nb), kThreads, 0, s, d, xw, Bw, Cw, yw, static_cast<const float*>(CB), M, Xd, E,
           ptr);
    const auto gemm = [&](cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, int arr,
                          int64_t lda, int64_t ldb, int64_t ldc, int64_t count, const char* what) {
      const void* const* a = reinterpret_cast<const void* const*>(ptr + arr);
      const void* const* b = reinterpret_cast<const void* const*>(ptr + arr + count);
      void* const* c = reinterpret_cast<void* const*>(const_cast<float**>(ptr + arr + 2 * count));
      check_blas(cublasGemmBatchedEx(blas, ta, tb, int(m), int(n), int(k), &one, a, CUDA_R_32F, int(lda), b, CUDA_R_32F,
                                     int(ldb), &zero, c, CUDA_R_32F, int(ldc), int(count), compute, CUBLAS_GEMM_DEFAULT),
                 what);
    };
    const int64_t GP = int64_t(p.heads / p.groups) * d.P;  // a group's columns of x and y
    // CB (column-major Q x Q, s by t) = B^T C, per (chunk, group).
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, Q, Q, d.N, int(3 * nb), ld_xbc, ld_xbc, Q, ncg, "the chunks' C B^T");
    if (Q % 4 == 0)
      launch(ssd_mask4_kernel, dim3((blocks(int64_t(Q) * Q / 4) + 1) / 2, unsigned(nb)), kThreads, 0, s, d,
             static_cast<const float*>(CB), static_cast<const float*>(dtv), static_cast<const double*>(cum), M);
    else
      launch(ssd_mask_kernel, dim3((blocks(int64_t(Q) * Q) + 7) / 8, unsigned(nb)), kThreads, 0, s, d,
             static_cast<const float*>(CB), static_cast<const float*>(dtv), static_cast<const double*>(cum), M);
    // y (column-major P x Q, ld H P) = X M^T, per (chunk, head).
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, d.P, Q, Q, 0, ld_xbc, Q, HP, nb, "the intra-chunk outputs");
    // The element-wise kernels 4 entries a thread where everything is aligned (a head's columns
    // whole float4s, as every row).
    if (aligned)
      launch_rows(ssd_xd_kernel<true>, d.nc * Q, HP / 4, s, d, xw, static_cast<const float*>(xdf), Xd);
    else
      launch_rows(ssd_xd_kernel<false>, d.nc * Q, HP, s, d, xw, static_cast<const float*>(xdf), Xd);
    // E (column-major N x P per head, the group's heads side by side) = B^T Xd, per (chunk, group).
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, d.N, GP, Q, int(3 * nb + 3 * ncg), ld_xbc, HP, d.N, ncg, "the chunks' end states");
    chunk_starts();
    // The start states' outputs (column-major G P x Q, into Xd) = S C^T, per (chunk, group).
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, GP, Q, d.N, int(3 * nb + 6 * ncg), d.N, ld_xbc, HP, ncg, "the start states' outputs");
    if (aligned)
      launch_rows(ssd_combine_kernel<true>, d.nc * Q, HP / 4, s, d, xw, static_cast<const float*>(Xd),
                  static_cast<const float*>(ecum), p.D, yw);
    else
      launch_rows(ssd_combine_kernel<false>, d.nc * Q, HP, s, d, xw, static_cast<const float*>(Xd),
                  static_cast<const float*>(ecum), p.D, yw);
  }
  check_launch("ssm_scan (SSD)");
}


template <int NPL>
void launch_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
                 int64_t T, const SsmParams& p, float* state, float* y, float* scratch, size_t scratch_floats,
                 cudaStream_t s) {
  constexpr int TS = kTileTokens<NPL>;
  const ScanPlan plan = scan_plan<NPL>(T, p);
  const dim3 grid(static_cast<unsigned>(p.heads * ((p.head_dim + kWarpsPerBlock - 1) / kWarpsPerBlock)),
                  static_cast<unsigned>(plan.chunks));
  const auto pass = [&](auto kernel, const float* state_in, float* state_out, int64_t state_stride,
                        float* decay_out, float* y_out) {
    launch(kernel, grid, kWarpsPerBlock * 32, 0, s, x, B, C, ld_xbc, dt_raw, ld_dt, T, plan.chunk_len, p.heads,
           p.head_dim, p.d_state, p.heads / p.groups, p.A, p.D, p.dt_bias, p.dt_min, p.dt_max, state_in, state_out,
           state_stride, decay_out, y_out);
  };
  if (plan.chunks == 1) {
    pass(ssm_scan_kernel<NPL, TS, true>, state, state, 0, nullptr, y);
    check_launch("ssm_scan");
    return;
  }
  if (scratch == nullptr || scratch_floats < scan_scratch_floats(plan, p))
    throw Error("CUDA ssm_scan: " + std::to_string(plan.chunks) + " chunks need ssm_scan_scratch_floats() of scratch");
  const int64_t head_entries = int64_t(p.head_dim) * p.d_state, entries = p.heads * head_entries;
  float* chunk_states = scratch;                     // [nc, H, P, N]
  float* decay = scratch + plan.chunks * entries;  // [nc, H]
  pass(ssm_scan_kernel<NPL, TS, false>, nullptr, chunk_states, entries, decay, nullptr);
  const bool v4 = head_entries % 4 == 0 && aligned16(chunk_states) && aligned16(state);
  const unsigned nblk = blocks_for(static_cast<size_t>(v4 ? entries / 4 : entries));
  with_starts_group(nblk, [&](auto A) {
    if (v4)
      launch(ssm_chunk_starts_kernel<true, A.value>, nblk, kThreads, 0, s, chunk_states,
             static_cast<const float*>(decay), plan.chunks, p.heads, head_entries, state);
    else
      launch(ssm_chunk_starts_kernel<false, A.value>, nblk, kThreads, 0, s, chunk_states,
             static_cast<const float*>(decay), plan.chunks, p.heads, head_entries, state);
  });
  pass(ssm_scan_kernel<NPL, TS, true>, chunk_states, nullptr, entries, nullptr, y);
  check_launch("ssm_scan (chunks)");
}

// Decode rows: sequence i = blockIdx.y has one token, row i of x / B / C / dt, state states[i].
// The same arithmetic as the kernel above for one token.
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    ssm_rows_kernel(const float* __restrict__ x, const float* __restrict__ B, const float* __restrict__ C,
                    int64_t ld_xbc, const float* __restrict__ dt_raw, int64_t ld_dt, int H, int P, int N,
                    int heads_per_group, const float* __restrict__ A_, const float* __restrict__ D_,
                    const float* __restrict__ dt_bias, float dt_min, float dt_max, float* const* states,
                    const float* __restrict__ z, int64_t ldz, float* __restrict__ y) {
  FH1_PDL_ENTER();
  const int64_t i = blockIdx.y;
  const int64_t row = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= int64_t(H) * P) return;
  const int h = static_cast<int>(row / P);
  const int64_t g_off = int64_t(h / heads_per_group) * N;
  const float dt = fminf(fmaxf(softplus(dt_raw[i * ld_dt + h] + dt_bias[h]), dt_min), dt_max);
  const float xv = x[i * ld_xbc + row];
  const float dA = expf(dt * A_[h]), dx = dt * xv;
  const float* Bi = B + i * ld_xbc + g_off;
  const float* Ci = C + i * ld_xbc + g_off;
  float* S = states[i] + row * N;
  float acc = 0.0f;
  for (int n = lane; n < N; n += 32) {
    const float v = S[n] * dA + Bi[n] * dx;
    S[n] = v;
    acc += v * Ci[n];
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) {
    const float v = acc + D_[h] * xv;
    y[i * int64_t(H) * P + row] = z ? v * silu(z[i * ldz + row]) : v;
  }
}

}  // namespace

void ssm_scan_rows(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
                   int64_t n, const SsmParams& p, float* const* states, float* y, cudaStream_t s) {
  ssm_scan_rows_gated(x, B, C, ld_xbc, dt_raw, ld_dt, n, p, states, nullptr, 0, y, s);
}

void ssm_scan_rows_gated(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw,
                         int64_t ld_dt, int64_t n, const SsmParams& p, float* const* states, const float* z,
                         int64_t ldz, float* y, cudaStream_t s) {
  if (n == 0 || p.heads == 0 || p.head_dim == 0) return;
  if (p.groups <= 0 || p.heads % p.groups != 0) throw Error("CUDA ssm_scan: heads must be a multiple of groups");
  const int64_t rows = int64_t(p.heads) * p.head_dim;
  const dim3 grid(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock), static_cast<unsigned>(n));
  launch(ssm_rows_kernel, grid, kWarpsPerBlock * 32, 0, s, x, B, C, ld_xbc, dt_raw, ld_dt, p.heads, p.head_dim, p.d_state,
                                                       p.heads / p.groups, p.A, p.D, p.dt_bias, p.dt_min, p.dt_max,
                                                       states, z, ldz, y);
  check_launch("ssm_scan_rows");
}

size_t ssm_scan_scratch_floats(int64_t T, const SsmParams& p) {
  if (T <= 1 || p.heads == 0 || p.head_dim == 0) return 0;
  const int64_t Ts = ssd_tokens(T, p);
  const size_t ssd = Ts > 0 ? SsdScratch(ssd_window(Ts / ssd_chunk_len(p), p), p).total() : 0;
  if (T - Ts <= 1) return ssd;
  return std::max(ssd, with_entries_per_lane(p.d_state, [&](auto npl) {
    return scan_scratch_floats(scan_plan<decltype(npl)::value>(T - Ts, p), p);
  }));
}

void set_scan_ssd(int64_t min_tokens, int64_t window_chunks, int chunk_len) {
  ssd_min_tokens().store(min_tokens);
  ssd_window_chunks().store(std::max<int64_t>(0, window_chunks));
  ssd_forced_chunk().store(std::clamp(chunk_len, 0, 1024));
}

void set_scan_ssd_fused(bool on) { ssd_fused_on().store(on); }
void set_ssd_states16(bool on) { ssd_states16_setting().store(on); }
bool ssd_states16() { return ssd_states16_setting().load(); }
void set_chunk_starts_group(int chunks) {
  const bool valid = chunks == kStartsGroupSmallGrid || chunks == kStartsGroupLargeGrid;
  chunk_starts_group_setting().store(valid ? chunks : 0);
}
int chunk_starts_group() { return chunk_starts_group_setting().load(); }
void set_ssd_outputs_cols(int cols) { ssd_outputs_cols_setting().store(cols == 64 || cols == 128 ? cols : 0); }
void set_ssd_wgmma(int variant) { ssd_wgmma_setting().store(std::clamp(variant, 0, kSsdWgmmaVariants)); }
int ssd_wgmma() { return flash_wgmma_available() ? ssd_wgmma_setting().load() : 0; }

void set_scan_chunks(int chunks) { forced_scan_chunks().store(std::max(0, chunks)); }

void ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
              int64_t T, const SsmParams& p, float* state, float* y, float* scratch, size_t scratch_floats,
              bool tf32, cublasHandle_t blas, cudaStream_t s) {
  if (T == 0 || p.heads == 0 || p.head_dim == 0) return;
  if (p.groups <= 0 || p.heads % p.groups != 0) throw Error("CUDA ssm_scan: heads must be a multiple of groups");
  const int64_t Ts = ssd_tokens(T, p);
  if (Ts > 0) ssd_scan(x, B, C, ld_xbc, dt_raw, ld_dt, Ts, p, state, y, scratch, scratch_floats, tf32, blas, s);
  if (Ts == T) return;
  const int64_t HP = int64_t(p.heads) * p.head_dim;
  with_entries_per_lane(p.d_state, [&](auto npl) {
    launch_scan<decltype(npl)::value>(x + Ts * ld_xbc, B + Ts * ld_xbc, C + Ts * ld_xbc, ld_xbc, dt_raw + Ts * ld_dt, ld_dt,
                                      T - Ts, p, state, y + Ts * HP, scratch, scratch_floats, s);
  });
}

}  // namespace fh1::cuda
