// The decode GEMV of the CUDA backend (cuda_ops.h: GemvJob): bf16 weights, float32 activations
// and sums, up to 8 rows of x, several matrices and the element-wise op after them in one launch.
#include <cuda_bf16.h>

#include <cstdlib>
#include <string>

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

// Row r of part P done (acc[0]: its T sums; acc[1]: the up row's in kGated): bias, then the
// epilogue the job took over.
template <int TB>
__device__ __forceinline__ void gemv_store(const GemvJob& job, const GemvPart& P, int64_t r, int T,
                                           const float (&acc)[2][TB]) {
  const int64_t N = P.N;
#pragma unroll
  for (int t = 0; t < TB; ++t) {
    if (t >= T) break;
    const int64_t i = int64_t(t) * N + r;
    const float val = acc[0][t] + (P.bias ? P.bias[r] : 0.0f);
    if (job.epi == GemvJob::kResidual) {
      P.y[i] = val;
      const float o = job.other ? job.other[i] : 0.0f;
      if (job.other)
        job.h[i] += job.y_first ? val * job.sa + o * job.sb : o * job.sa + val * job.sb;
      else
        job.h[i] += val * job.sa;
    } else if (job.epi == GemvJob::kGated) {
      const GemvPart& Up = job.part[1];
      const float up = acc[1][t] + (Up.bias ? Up.bias[r] : 0.0f);
      Up.y[i] = up;
      if (job.out != P.y) P.y[i] = val;
      job.out[i] = up * silu(val * job.gs);
    } else {
      P.y[i] = P.v ? val * P.v[r] : val;
    }
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
  if (XS && blockIdx.x == 0 && job.x_out)  // the scale op's output, as it would have written it
    for (int64_t i = threadIdx.x; i < int64_t(T) * K; i += blockDim.x) {
      const int64_t t = i / K;
      job.x_out[i] = x[t * ldx + (i - t * K)] * job.xs_out;
    }

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

template <int TB>
void launch_gemv_w(const GemvJob& job, int W, const GemvLaunch& g, cudaStream_t s) {
  if (W == 1) launch_gemv<TB, 1>(job, g, s);
  else if (W == 2) launch_gemv<TB, 2>(job, g, s);
  else if (W == 4) launch_gemv<TB, 4>(job, g, s);
  else launch_gemv<TB, 8>(job, g, s);
}

bool gemv_x_vec(const GemvJob& j) { return j.ldx % 4 == 0 && reinterpret_cast<uintptr_t>(j.x) % 16 == 0; }

int env_int(const char* name, int fallback) {
  const char* e = std::getenv(name);
  return e ? std::atoi(e) : fallback;
}

}  // namespace

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
  int W = rows >= want ? 1 : rows * 2 >= want ? 2 : rows * 4 >= want ? 4 : 8;
  if (force_w == 1 || force_w == 2 || force_w == 4 || force_w == 8) W = force_w;
  const unsigned blocks = static_cast<unsigned>((rows * W + 7) / 8);
  bool scaled = job.x_out != nullptr;
  for (int i = 0; i < job.nparts; ++i) scaled = scaled || job.part[i].xs != 1.0f;
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
  else throw Error("gemv: more than 8 rows");
  check_launch("gemv");
}

}  // namespace fh1::cuda
