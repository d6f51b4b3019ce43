// The decode GEMV of the CUDA backend (cuda_ops.h: GemvJob): bf16 weights, up to 16 rows of x,
// several matrices and the element-wise op after them in one launch. One row of x in float32 on
// the CUDA cores; from 2 rows (gemv_mma_rows) on the tensor cores, x split as hi + lo bf16.
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_mma.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "util/error.h"

namespace fh1::cuda {
namespace {

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float(static_cast<uint32_t>(h) << 16); }

// The 8 products of one 16-byte chunk of a bf16 weight row with x[k .. k + 8), summed.
__device__ __forceinline__ float dot8(const uint4 raw, const float4 a, const float4 b) {
  const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
  float wf[8];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    wf[2 * j] = __uint_as_float(u[j] << 16);
    wf[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
  }
  return wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
}

// Output (t, r) of part P done (sum; up_sum: the up row's in kGated): bias, then the
// epilogue the job took over.
__device__ __forceinline__ void gemv_store_one(const GemvJob& job, const GemvPart& P, int64_t r, int t, float sum,
                                               float up_sum) {
  const int64_t i = int64_t(t) * P.N + r;
  const float val = sum + (P.bias ? P.bias[r] : 0.0f);
  if (job.epi == GemvJob::kResidual) {
    P.y[i] = val;
    const float o = job.other ? job.other[i] : 0.0f;
    if (job.other)
      job.h[i] += job.y_first ? val * job.sa + o * job.sb : o * job.sa + val * job.sb;
    else
      job.h[i] += val * job.sa;
  } else if (job.epi == GemvJob::kGated) {
    const GemvPart& Up = job.part[1];
    const float up = up_sum + (Up.bias ? Up.bias[r] : 0.0f);
    Up.y[i] = up;
    if (job.out != P.y) P.y[i] = val;
    job.out[i] = up * silu(val * job.gs);
  } else {
    P.y[i] = P.v ? val * P.v[r] : val;
  }
}

// Row r of part P done (acc[0]: its T sums; acc[1]: the up row's in kGated).
template <int TB>
__device__ __forceinline__ void gemv_store(const GemvJob& job, const GemvPart& P, int64_t r, int T,
                                           const float (&acc)[2][TB]) {
#pragma unroll
  for (int t = 0; t < TB; ++t) {
    if (t >= T) break;
    gemv_store_one(job, P, r, t, acc[0][t], acc[1][t]);
  }
}

// The scale op's output (job.x_out), as it would have written it: block 0 of a scaled job.
__device__ __forceinline__ void gemv_write_x_out(const GemvJob& job) {
  for (int64_t i = threadIdx.x; i < int64_t(job.T) * job.K; i += blockDim.x) {
    const int64_t t = i / job.K;
    job.x_out[i] = job.x[t * job.ldx + (i - t * job.K)] * job.xs_out;
  }
}

// The general decode GEMV (cuda_ops.h). Block: 8 warps = 8 / W rows of the concatenated parts.
// XS: the scale ops before it taken over (part.xs, job.x_out): every x is multiplied as it is
// read, so the products are exactly those of the ops one by one (a separate instantiation: the
// extra registers slowed every GEMV by ~10 % when all of them had it).
template <int TB, int W, bool VEC, int U, bool XS>
__global__ void __launch_bounds__(256) gemv_job_kernel(const GemvJob job) {
  constexpr int RPB = 8 / W;
  constexpr int NA = 2;  // accumulator sets: gate and up in kGated
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, sub = warp % W;
  const bool gated = job.epi == GemvJob::kGated;
  int64_t r = int64_t(blockIdx.x) * RPB + warp / W;
  int pi = 0;
  if (!gated) {
    while (pi < job.nparts - 1 && r >= job.part[pi].N) {
      r -= job.part[pi].N;
      ++pi;
    }
  }
  const GemvPart& P = job.part[pi];
  const bool valid = r < P.N;
  const int64_t K = job.K;
  const int T = job.T;
  const uint16_t* w0 = P.W + (valid ? r : 0) * K;
  const uint16_t* w1 = gated ? job.part[1].W + (valid ? r : 0) * K : nullptr;
  // (Prefetching the rows into L2 here, before the wait, was tried: 6% slower on an H200; so
  // was issuing the first round of loads into registers here: no faster.)
  FH1_PDL_ENTER();
  const float xs = XS ? P.xs : 1.0f;
  float acc[NA][TB];
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int t = 0; t < TB; ++t) acc[a][t] = 0.0f;
  const float* x = job.x;
  const int64_t ldx = job.ldx;
  if (XS && blockIdx.x == 0 && job.x_out) gemv_write_x_out(job);

  auto step = [&](const uint4 raw, int64_t k, float (&ac)[TB]) {
#pragma unroll
    for (int t = 0; t < TB; ++t) {
      if (t < T) {
        const float* xr = x + t * ldx + k;
        if constexpr (VEC) {
          float4 a = *reinterpret_cast<const float4*>(xr), b = *reinterpret_cast<const float4*>(xr + 4);
          if constexpr (XS) {
            a = make_float4(a.x * xs, a.y * xs, a.z * xs, a.w * xs);
            b = make_float4(b.x * xs, b.y * xs, b.z * xs, b.w * xs);
          }
          ac[t] += dot8(raw, a, b);
        } else {
          static_assert(!XS, "the scaled GEMV reads x in float4s");
          ac[t] += dot8(raw, make_float4(xr[0], xr[1], xr[2], xr[3]), make_float4(xr[4], xr[5], xr[6], xr[7]));
        }
      }
    }
  };
  if (valid) {
    const int64_t K8 = (K % 8 == 0) ? K : 0;  // rows 16-byte aligned only when K % 8 == 0
    constexpr int64_t S = int64_t(W) * 256;   // elements per step of the W warps of a row
    int64_t k = (int64_t(sub) * 32 + lane) * 8;
    // U 16-byte weight loads in flight per lane before the arithmetic that uses them. The last
    // round is predicated rather than left to a one-load-at-a-time loop: at the 7B shape a lane
    // has only 6-12 loads in all (K = 3072 split over 1-2 warps), so most would be that tail.
    // (Double-buffered rounds of 4, the next issued before the arithmetic on this one, measured
    // the same at the 7B and 34B shapes.)
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    if (!gated) {
      for (; k < K8; k += U * S) {
        uint4 rw[U];
#pragma unroll
        for (int j = 0; j < U; ++j)
          rw[j] = k + j * S < K8 ? __ldcs(reinterpret_cast<const uint4*>(w0 + k + j * S)) : zero;
#pragma unroll
        for (int j = 0; j < U; ++j)
          if (k + j * S < K8) step(rw[j], k + j * S, acc[0]);
      }
    } else {
      for (; k < K8; k += (U / 2) * S) {
        uint4 rw[U];
#pragma unroll
        for (int j = 0; j < U / 2; ++j) {
          const bool in = k + j * S < K8;
          rw[2 * j] = in ? __ldcs(reinterpret_cast<const uint4*>(w0 + k + j * S)) : zero;
          rw[2 * j + 1] = in ? __ldcs(reinterpret_cast<const uint4*>(w1 + k + j * S)) : zero;
        }
#pragma unroll
        for (int j = 0; j < U / 2; ++j) {
          if (k + j * S >= K8) break;
          step(rw[2 * j], k + j * S, acc[0]);
          step(rw[2 * j + 1], k + j * S, acc[1]);
        }
      }
    }
    for (int64_t kk = K8 + int64_t(sub) * 32 + lane; kk < K; kk += int64_t(W) * 32) {  // K not a multiple of 8
      const float wv0 = bf16_bits_to_f32(w0[kk]);
      const float wv1 = gated ? bf16_bits_to_f32(w1[kk]) : 0.0f;
#pragma unroll
      for (int t = 0; t < TB; ++t)
        if (t < T) {
          acc[0][t] += wv0 * (x[t * ldx + kk] * xs);
          if (gated) acc[1][t] += wv1 * (x[t * ldx + kk] * xs);
        }
    }
  }
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int t = 0; t < TB; ++t)
      for (int o = 16; o > 0; o >>= 1) acc[a][t] += __shfl_xor_sync(0xffffffffu, acc[a][t], o);
  if constexpr (W > 1) {
    __shared__ float red[8][NA][TB];
    if (lane == 0)
#pragma unroll
      for (int a = 0; a < NA; ++a)
#pragma unroll
        for (int t = 0; t < TB; ++t) red[warp][a][t] = acc[a][t];
    __syncthreads();
    if (sub == 0 && lane == 0)
#pragma unroll
      for (int a = 0; a < NA; ++a)
#pragma unroll
        for (int t = 0; t < TB; ++t) {
          float v = red[warp][a][t];
          for (int w = 1; w < W; ++w) v += red[warp + w][a][t];
          acc[a][t] = v;
        }
  }
  if (sub != 0 || lane != 0 || !valid) return;
  gemv_store<TB>(job, P, r, T, acc);
}


// The decode GEMV on the tensor cores, for 2 to 16 rows of x (the kernel above re-reads x's rows
// from L1 for every 16 bytes of weights, and from 4 rows on is bound by that). Each warp takes a
// tile of 16 MT rows of one part (of both matrices in kGated) over 1 / W of K and multiplies with
// mma.sync m16n8k16 in bf16: A = the weights' rows as they lie in memory, B = x's rows as hi + lo
// bf16 parts (about 16 of float32's 24 bits, as the cuBLAS split keeps), both parts into the same
// float32 sums. Lane (g, c) loads 16 bytes of rows g and g + 8 (of each 16) and the same 8 k of
// x's row g: in a chunk of 32 k, MMA h takes those 8 k's entries 4 h .. 4 h + 3 as its k slots
// 2 c, 2 c + 1, 2 c + 8, 2 c + 9. A sum does not care for the order, and every operand comes from
// one load. TG groups of 8 rows of x (T <= 8 TG); GATED: job.epi == kGated; x's parts made once
// for MT row blocks of 16. U chunks in flight: 8 16-byte weight loads a lane in all.
template <int TG, int MT, int W, bool GATED, bool XS>
__global__ void __launch_bounds__(256, 2) gemv_mma_kernel(const GemvJob job) {
  constexpr int TPB = 8 / W;  // tiles a block
  constexpr int NA = GATED ? 2 : 1, U = 4 / (NA * MT), R = 16 * MT;
  static_assert(U >= 1, "8 loads a lane at most");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, sub = warp % W, g = lane >> 2, c = lane & 3;
  int64_t tile = int64_t(blockIdx.x) * TPB + warp / W;
  int pi = 0;
  if (!GATED) {
    while (pi < job.nparts - 1 && tile >= (job.part[pi].N + R - 1) / R) {
      tile -= (job.part[pi].N + R - 1) / R;
      ++pi;
    }
  }
  const GemvPart& P = job.part[pi];
  const int64_t N = P.N, r0 = tile * R, K = job.K, ldx = job.ldx;
  const bool valid = r0 < N;
  const int T = job.T;
  FH1_PDL_ENTER();
  if (XS && blockIdx.x == 0 && job.x_out) gemv_write_x_out(job);
  float acc[NA][MT][TG][4];
#pragma unroll
  for (int a = 0; a < NA; ++a)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < TG; ++j) acc[a][m][j][0] = acc[a][m][j][1] = acc[a][m][j][2] = acc[a][m][j][3] = 0.0f;
  if (valid) {
    // Rows past the part's end read its last row again and are never stored.
    const uint16_t* w[NA][MT][2];
#pragma unroll
    for (int a = 0; a < NA; ++a) {
      const uint16_t* W0 = a == 0 ? P.W : job.part[1].W;  // (kGated: P is part 0, gate; part 1 up)
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h) w[a][m][h] = W0 + min(r0 + 16 * m + 8 * h + g, N - 1) * K;
    }
    const float xs = XS ? P.xs : 1.0f;
    const float* xr[TG];
    bool xin[TG];
#pragma unroll
    for (int j = 0; j < TG; ++j) {
      xin[j] = 8 * j + g < T;
      xr[j] = job.x + (xin[j] ? 8 * j + g : 0) * ldx;
    }
    const int64_t chunks = (K + 31) / 32;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    // A warp takes G = 4 chunks at a time (in 4 / U rounds of U), whatever U is: the same chunks
    // go to the same warp, summed in the same order, gated or not, so the job that fuses the
    // SiLU gate sums as the two GEMVs do (the bf16 KV cache would round a one-ulp difference to
    // 1/256 of the value: decode graphs against direct launches).
    constexpr int G = 4;
    for (int64_t g0 = int64_t(sub) * G; g0 < chunks; g0 += int64_t(W) * G)
      for (int64_t s0 = g0; s0 < g0 + G && s0 < chunks; s0 += U) {
        uint4 wr[U][NA][MT][2];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t k = (s0 + u) * 32 + 8 * c;
          const bool in = s0 + u < chunks && k < K;  // (K % 8 == 0: a lane's 8 k are all in or all out)
#pragma unroll
          for (int a = 0; a < NA; ++a)
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
              for (int h = 0; h < 2; ++h)
                wr[u][a][m][h] = in ? __ldcs(reinterpret_cast<const uint4*>(w[a][m][h] + k)) : zero;
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          if (s0 + u >= chunks) break;
          const int64_t k = (s0 + u) * 32 + 8 * c;
          const bool in = k < K;
#pragma unroll
          for (int j = 0; j < TG; ++j) {
            float v[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            if (in && xin[j]) {
              const float4 p = *reinterpret_cast<const float4*>(xr[j] + k),
                           q = *reinterpret_cast<const float4*>(xr[j] + k + 4);
              v[0] = p.x, v[1] = p.y, v[2] = p.z, v[3] = p.w, v[4] = q.x, v[5] = q.y, v[6] = q.z, v[7] = q.w;
            }
            uint32_t hi[4], lo[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              // x * xs rounded to float first (no FMA contraction into lo), as the scale op that the
              // job took over wrote it: the same parts as scale then GEMV.
              const float a = XS ? __fmul_rn(v[2 * e], xs) : v[2 * e],
                          b = XS ? __fmul_rn(v[2 * e + 1], xs) : v[2 * e + 1];
              const __nv_bfloat162 hb = __floats2bfloat162_rn(a, b);
              const __nv_bfloat162 lb =
                  __floats2bfloat162_rn(__fsub_rn(a, __low2float(hb)), __fsub_rn(b, __high2float(hb)));
              hi[e] = *reinterpret_cast<const uint32_t*>(&hb);
              lo[e] = *reinterpret_cast<const uint32_t*>(&lb);
            }
#pragma unroll
            for (int a = 0; a < NA; ++a)
#pragma unroll
              for (int m = 0; m < MT; ++m) {
                const uint4 wa = wr[u][a][m][0], wb = wr[u][a][m][1];
                const uint32_t A0[4] = {wa.x, wb.x, wa.y, wb.y}, A1[4] = {wa.z, wb.z, wa.w, wb.w};
                mma_bf16(acc[a][m][j], A0, hi[0], hi[1]);
                mma_bf16(acc[a][m][j], A0, lo[0], lo[1]);
                mma_bf16(acc[a][m][j], A1, hi[2], hi[3]);
                mma_bf16(acc[a][m][j], A1, lo[2], lo[3]);
              }
          }
        }
      }
  }
  constexpr int NACC = NA * MT * TG * 4;
  if constexpr (W > 1) {  // the W warps of a tile: summed by the first
    __shared__ float red[8][NACC][32];
    float* flat = &acc[0][0][0][0];
    if (sub != 0)
#pragma unroll
      for (int i = 0; i < NACC; ++i) red[warp][i][lane] = flat[i];
    __syncthreads();
    if (sub == 0)
      for (int o = 1; o < W; ++o)
#pragma unroll
        for (int i = 0; i < NACC; ++i) flat[i] += red[warp + o][i][lane];
  }
  if (sub != 0 || !valid) return;
  // acc[a][m][j][2 h + e]: row r0 + 16 m + 8 h + g, row of x 8 j + 2 c + e.
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < TG; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int t = 8 * j + 2 * c + e;
          const int64_t r = r0 + 16 * m + 8 * h + g;
          if (t < T && r < N) gemv_store_one(job, P, r, t, acc[0][m][j][2 * h + e], acc[NA - 1][m][j][2 * h + e]);
        }
}

}  // namespace

void gemv_bf16(const uint16_t* W, int64_t N, int64_t K, const float* x, int64_t ldx, int64_t T, const float* bias,
               float* y, cudaStream_t s) {
  GemvJob job;
  job.part[0] = GemvPart{W, bias, y, N};
  job.K = K;
  job.x = x;
  job.ldx = ldx;
  job.T = static_cast<int>(T);
  gemv_job(job, s);
}

namespace {

struct GemvLaunch {
  bool vec, scaled;
  int unroll;
  unsigned blocks;
};

template <int TB, int WW>
void launch_gemv(const GemvJob& job, const GemvLaunch& g, cudaStream_t s) {
  if (g.scaled) launch(gemv_job_kernel<TB, WW, true, 8, true>, g.blocks, 256, 0, s, job);
  else if (g.vec && g.unroll == 8) launch(gemv_job_kernel<TB, WW, true, 8, false>, g.blocks, 256, 0, s, job);
  else if (g.vec) launch(gemv_job_kernel<TB, WW, true, 4, false>, g.blocks, 256, 0, s, job);
  else launch(gemv_job_kernel<TB, WW, false, 4, false>, g.blocks, 256, 0, s, job);
}

template <int TG, int MT, int WW>
void launch_gemv_mma(const GemvJob& job, bool scaled, unsigned blocks, cudaStream_t s) {
  const bool gated = job.epi == GemvJob::kGated;
  if (gated && scaled) launch(gemv_mma_kernel<TG, MT, WW, true, true>, blocks, 256, 0, s, job);
  else if (gated) launch(gemv_mma_kernel<TG, MT, WW, true, false>, blocks, 256, 0, s, job);
  else if (scaled) launch(gemv_mma_kernel<TG, MT, WW, false, true>, blocks, 256, 0, s, job);
  else launch(gemv_mma_kernel<TG, MT, WW, false, false>, blocks, 256, 0, s, job);
}

// f(std::integral_constant<int, W>) for the split W (warps a row or tile: 1, 2, 4 or 8).
template <class F>
void with_split(int W, F&& f) {
  if (W == 1) f(std::integral_constant<int, 1>{});
  else if (W == 2) f(std::integral_constant<int, 2>{});
  else if (W == 4) f(std::integral_constant<int, 4>{});
  else f(std::integral_constant<int, 8>{});
}

template <int TB>
void launch_gemv_w(const GemvJob& job, int W, const GemvLaunch& g, cudaStream_t s) {
  with_split(W, [&](auto w) { launch_gemv<TB, decltype(w)::value>(job, g, s); });
}

template <int TG, int MT>
void launch_gemv_mma_w(const GemvJob& job, int W, bool scaled, unsigned blocks, cudaStream_t s) {
  with_split(W, [&](auto w) { launch_gemv_mma<TG, MT, decltype(w)::value>(job, scaled, blocks, s); });
}

bool gemv_x_vec(const GemvJob& j) { return j.ldx % 4 == 0 && reinterpret_cast<uintptr_t>(j.x) % 16 == 0; }

int env_int(const char* name, int fallback) {
  const char* e = std::getenv(name);
  return e ? std::atoi(e) : fallback;
}

std::atomic<int>& gemv_mma_setting() {
  static std::atomic<int> v{std::max(0, env_int("FH1_CUDA_GEMV_MMA", 2))};
  return v;
}
std::atomic<int>& gemv_mma_tile_setting() {
  static std::atomic<int> v{env_int("FH1_CUDA_GEMV_MMA_TILE", 16) == 32 ? 32 : 16};
  return v;
}

}  // namespace

void set_gemv_mma_rows(int rows) { gemv_mma_setting() = std::max(0, rows); }
int gemv_mma_rows() { return gemv_mma_setting(); }
void set_gemv_mma_tile_rows(int rows) { gemv_mma_tile_setting() = rows == 32 ? 32 : 16; }
int gemv_mma_tile_rows() { return gemv_mma_tile_setting(); }

bool gemv_scales_fused(const GemvJob& job) { return gemv_x_vec(job); }

void gemv_job(const GemvJob& job_in, cudaStream_t s) {
  if (job_in.T <= 0) return;
  GemvJob job = job_in;
  const bool gated = job.epi == GemvJob::kGated;
  int64_t rows = 0;
  for (int i = 0; i < (gated ? 1 : job.nparts); ++i) rows += job.part[i].N;
  if (rows == 0) return;
  // Split K (W warps a row) only when there are too few rows to give every SM 16 warps: the
  // split's shared-memory reduction cost more than it gained at every 7B shape (an H200, 7B
  // decode at 1K: 6.68 ms with a target of 64 warps per SM, 5.95 ms with W = 1 throughout).
  // 8 loads in flight per lane (4 with W = 1: 6.30 ms).
  // FH1_CUDA_GEMV_WANT / _W / _U (tuning only): the row target, a fixed split, the loads in flight.
  static const int64_t want = [] {
    const char* e = std::getenv("FH1_CUDA_GEMV_WANT");
    if (e) return int64_t(std::atoll(e));
    int dev = 0, sms = 132;
    if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    return int64_t(16) * sms;
  }();
  static const int force_w = [] {
    const char* e = std::getenv("FH1_CUDA_GEMV_W");
    return e ? std::atoi(e) : 0;
  }();
  static const int unroll = env_int("FH1_CUDA_GEMV_U", 8) == 4 ? 4 : 8;
  const auto split = [&](int64_t units) {  // warps a unit (a row, or a tile of 16 or 32 rows)
    const int w = units >= want ? 1 : units * 2 >= want ? 2 : units * 4 >= want ? 4 : 8;
    return force_w == 1 || force_w == 2 || force_w == 4 || force_w == 8 ? force_w : w;
  };
  bool scaled = job.x_out != nullptr;
  for (int i = 0; i < job.nparts; ++i) scaled = scaled || job.part[i].xs != 1.0f;
  const int mma_from = gemv_mma_rows();
  if (mma_from > 0 && job.T >= mma_from && job.K % 8 == 0 && gemv_x_vec(job)) {
    const int mt = gemv_mma_tile_rows() / 16;
    int64_t tiles = 0;  // a part's rows in whole tiles
    for (int i = 0; i < (gated ? 1 : job.nparts); ++i) tiles += (job.part[i].N + 16 * mt - 1) / (16 * mt);
    const int W = split(tiles);
    const unsigned blocks = static_cast<unsigned>((tiles * W + 7) / 8);
    if (job.T > 16) throw Error("gemv: more than 16 rows");
    if (job.T <= 8 && mt == 1) launch_gemv_mma_w<1, 1>(job, W, scaled, blocks, s);
    else if (job.T <= 8) launch_gemv_mma_w<1, 2>(job, W, scaled, blocks, s);
    else if (mt == 1) launch_gemv_mma_w<2, 1>(job, W, scaled, blocks, s);
    else launch_gemv_mma_w<2, 2>(job, W, scaled, blocks, s);
    check_launch("gemv (tensor cores)");
    return;
  }
  const int W = split(rows);
  const unsigned blocks = static_cast<unsigned>((rows * W + 7) / 8);
  if (scaled && !gemv_scales_fused(job)) {
    // No scaled instantiation for this case: the scale runs first, as its own op would have
    // (every part's scale is then the same: the recorder joins others only when fused).
    for (int i = 1; i < job.nparts; ++i)
      if (job.part[i].xs != job.part[0].xs) throw Error("gemv: parts with different scales need the fused kernel");
    float* xo = job.x_out;
    if (xo == nullptr) throw Error("gemv: a scaled job without x_out needs the fused kernel");
    scale(job.x, static_cast<size_t>(job.T) * job.K, job.part[0].xs, xo, s);
    job.x = xo;
    job.ldx = job.K;
    for (int i = 0; i < job.nparts; ++i) job.part[i].xs = 1.0f;
    job.x_out = nullptr;
    scaled = false;
  }
  const GemvLaunch g{gemv_x_vec(job), scaled, unroll, blocks};
  if (job.T <= 1) launch_gemv_w<1>(job, W, g, s);
  else if (job.T <= 2) launch_gemv_w<2>(job, W, g, s);
  else if (job.T <= 4) launch_gemv_w<4>(job, W, g, s);
  else if (job.T <= 8) launch_gemv_w<8>(job, W, g, s);
  else if (job.T <= 16) launch_gemv_w<16>(job, W, g, s);
  else throw Error("gemv: more than 16 rows");
  check_launch("gemv");
}

}  // namespace fh1::cuda
