// Element-wise, normalization, RoPE, embedding and conv kernels of the CUDA backend. Each one
// computes what the CPU reference (src/kernels/cpu/reference_kernels.cpp) computes, in float32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_ops.h"
#include "util/error.h"

namespace fh1::cuda {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(size_t n, int threads = kThreads) {
  const size_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 1u << 30 ? 1u << 30 : b));
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float(static_cast<uint32_t>(h) << 16); }

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ float block_sum(float v) {
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  const int nw = blockDim.x >> 5;
  float s = lane < nw ? part[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

__global__ void f32_to_bf16_kernel(const float* x, int64_t ldx, int64_t T, int64_t K, __nv_bfloat16* out) {
  const int64_t n = T * K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / K, k = i - t * K;
    out[i] = __float2bfloat16_rn(x[t * ldx + k]);
  }
}

// hi = bf16(x), lo = bf16(x - hi): hi + lo carries about 16 bits of x's 24-bit mantissa.
__global__ void f32_to_bf16_split_kernel(const float* x, int64_t ldx, int64_t T, int64_t K, __nv_bfloat16* hi,
                                         __nv_bfloat16* lo) {
  const int64_t n = T * K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / K, k = i - t * K;
    const float v = x[t * ldx + k];
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    hi[i] = h;
    lo[i] = __float2bfloat16_rn(v - __bfloat162float(h));
  }
}

// y[t, :] = y2[t, :] + y2[T + t, :] (+ bias)
__global__ void sum_halves_kernel(const float* y2, int64_t T, int64_t N, const float* bias, float* y) {
  const int64_t n = T * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = y2[i] + y2[n + i] + (bias ? bias[i % N] : 0.0f);
}

// Decode GEMV: y[t, n] = sum_k x[t, k] * W[n, k] (+ bias) for t < T <= TB, float32 activations
// and accumulation. One warp per output row; the row is read once, 16 bytes (8 bf16) per lane
// per step; x (a few rows) comes through L1.
template <int TB, bool VEC>  // VEC: x rows 16-byte aligned (float4 loads)
__global__ void __launch_bounds__(256) gemv_bf16_kernel(const uint16_t* __restrict__ W, int64_t N, int64_t K,
                                                        const float* __restrict__ x, int64_t ldx, int T,
                                                        const float* __restrict__ bias, float* __restrict__ y) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (n >= N) return;
  const uint16_t* w = W + n * K;
  float acc[TB];
#pragma unroll
  for (int t = 0; t < TB; ++t) acc[t] = 0.0f;
  const int64_t K8 = (K % 8 == 0) ? K : 0;  // rows 16-byte aligned only when K % 8 == 0
  for (int64_t k = int64_t(lane) * 8; k < K8; k += 32 * 8) {
    const uint4 raw = *reinterpret_cast<const uint4*>(w + k);
    const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
    float wf[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      wf[2 * j] = __uint_as_float(u[j] << 16);
      wf[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
    }
#pragma unroll
    for (int t = 0; t < TB; ++t) {
      if (t < T) {
        const float* xr = x + t * ldx + k;
        if constexpr (VEC) {
          const float4 a = *reinterpret_cast<const float4*>(xr), b = *reinterpret_cast<const float4*>(xr + 4);
          acc[t] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z +
                    wf[7] * b.w;
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[t] += wf[j] * xr[j];
        }
      }
    }
  }
  for (int64_t k = K8 + lane; k < K; k += 32) {  // K not a multiple of 8
    const float wv = bf16_bits_to_f32(w[k]);
#pragma unroll
    for (int t = 0; t < TB; ++t)
      if (t < T) acc[t] += wv * x[t * ldx + k];
  }
#pragma unroll
  for (int t = 0; t < TB; ++t) {
    float v = acc[t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0 && t < T) y[int64_t(t) * N + n] = v + (bias ? bias[n] : 0.0f);
  }
}

__global__ void f16_to_f32_kernel(const __half* x, size_t n, float* out) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = __half2float(x[i]);
}

__global__ void add_bias_kernel(float* y, int64_t T, int64_t N, const float* bias) {
  const int64_t n = T * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += bias[i % N];
}

template <typename Read>
__global__ void embed_kernel(const int32_t* ids, int64_t T, Read read, int64_t d, float scale, float* out) {
  const int64_t n = T * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / d, k = i - t * d;
    out[i] = read(int64_t(ids[t]) * d + k) * scale;
  }
}

struct ReadBf16 {
  const uint16_t* p;
  __device__ float operator()(int64_t i) const { return bf16_bits_to_f32(p[i]); }
};
struct ReadF32 {
  const float* p;
  __device__ float operator()(int64_t i) const { return p[i]; }
};

// One block per row.
__global__ void rmsnorm_kernel(const float* x, int64_t d, const float* w, float eps, float* out) {
  const float* xr = x + blockIdx.x * d;
  float* o = out + blockIdx.x * d;
  float ss = 0.0f;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) ss += xr[k] * xr[k];
  ss = block_sum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) o[k] = w[k] * (xr[k] * inv);
}

__global__ void scale_kernel(const float* x, size_t n, float a, float* out) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = x[i] * a;
}

__global__ void mul_columns_kernel(float* x, int64_t T, int64_t d, const float* v) {
  const int64_t n = T * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] *= v[i % d];
}

__global__ void residual_add2_kernel(float* h, const float* a, float sa, const float* b, float sb, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    h[i] += b ? a[i] * sa + b[i] * sb : a[i] * sa;
}

__global__ void silu_mul_kernel(const float* gate, const float* up, float gs, size_t n, float* out) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = up[i] * silu(gate[i] * gs);
}

__global__ void gate_silu_kernel(float* y, const float* z, int64_t ldz, int64_t T, int64_t d) {
  const int64_t n = T * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / d, k = i - t * d;
    y[i] *= silu(z[t * ldz + k]);
  }
}

// One block per (row, group).
__global__ void gated_rmsnorm_kernel(float* y, const float* z, int64_t ldz, int64_t d, int groups, const float* w,
                                     float eps, bool norm_before_gate) {
  const int64_t t = blockIdx.x / groups, g = blockIdx.x % groups, gd = d / groups;
  float* yg = y + t * d + g * gd;
  const float* zg = z + t * ldz + g * gd;
  const float* wg = w + g * gd;
  float ss = 0.0f;
  for (int64_t k = threadIdx.x; k < gd; k += blockDim.x) {
    float v = yg[k];
    if (!norm_before_gate) v *= silu(zg[k]);
    ss += v * v;
  }
  ss = block_sum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(gd) + eps);
  for (int64_t k = threadIdx.x; k < gd; k += blockDim.x) {
    float v = yg[k];
    if (!norm_before_gate) v *= silu(zg[k]);
    v = wg[k] * (v * inv);
    if (norm_before_gate) v *= silu(zg[k]);
    yg[k] = v;
  }
}

// One thread per (row, head, i < hd/2); the angle is a float32 product as in the reference, its
// cosine and sine taken in double and rounded.
__global__ void rope_kernel(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* pos,
                            const float* inv_freq) {
  const int half = hd / 2;
  const int64_t n = T * heads * half;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(i % half);
    const int64_t th = i / half;
    const int h = static_cast<int>(th % heads);
    const int64_t t = th / heads;
    const float angle = static_cast<float>(pos[t]) * inv_freq[j];
    double sd, cd;
    sincos(static_cast<double>(angle), &sd, &cd);
    const float c = static_cast<float>(cd), s = static_cast<float>(sd);
    float* v = x + t * ld + int64_t(h) * hd;
    const float a = v[j], b = v[j + half];
    v[j] = a * c - b * s;
    v[j + half] = b * c + a * s;
  }
}

__device__ __forceinline__ float random_uniform(uint64_t seed, size_t i) {  // splitmix64 -> [-1, 1)
  uint64_t z = seed + (static_cast<uint64_t>(i) + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void fill_random_bf16_kernel(__nv_bfloat16* w, size_t n, float amp, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    w[i] = __float2bfloat16_rn(amp * random_uniform(seed, i));
}

__global__ void fill_random_f32_kernel(float* w, size_t n, float amp, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    w[i] = amp * random_uniform(seed, i);
}

// One thread per (t, c): out[t, c] = silu(bias + sum_k w[c, k] * hist[t + k]), where hist is the
// K-1 state rows followed by the T new rows.
__global__ void conv_out_kernel(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w,
                                const float* bias, const float* conv_state, float* out) {
  const int S = K - 1;
  const int64_t n = T * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / C, c = i - t * C;
    float acc = bias ? bias[c] : 0.0f;
    for (int k = 0; k < K; ++k) {
      const int64_t r = t + k;  // row of hist
      const float v = r < S ? conv_state[r * C + c] : in[(r - S) * ld_in + c];
      acc += w[c * K + k] * v;
    }
    out[i] = silu(acc);
  }
}

// One thread per channel, rows in increasing order: new[s] = hist[T + s] (reads precede writes).
__global__ void conv_state_kernel(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, float* conv_state) {
  const int S = K - 1;
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  for (int s = 0; s < S; ++s) {
    const int64_t r = T + s;
    conv_state[int64_t(s) * C + c] = r < S ? conv_state[r * C + c] : in[(r - S) * ld_in + c];
  }
}

}  // namespace

void f32_to_bf16(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* out, cudaStream_t s) {
  f32_to_bf16_kernel<<<blocks_for(T * K), kThreads, 0, s>>>(x, ldx, T, K, reinterpret_cast<__nv_bfloat16*>(out));
  check_launch("f32_to_bf16");
}

void f32_to_bf16_split(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* hi, uint16_t* lo, cudaStream_t s) {
  f32_to_bf16_split_kernel<<<blocks_for(T * K), kThreads, 0, s>>>(x, ldx, T, K, reinterpret_cast<__nv_bfloat16*>(hi),
                                                                   reinterpret_cast<__nv_bfloat16*>(lo));
  check_launch("f32_to_bf16_split");
}

void sum_halves(const float* y2, int64_t T, int64_t N, const float* bias, float* y, cudaStream_t s) {
  sum_halves_kernel<<<blocks_for(T * N), kThreads, 0, s>>>(y2, T, N, bias, y);
  check_launch("sum_halves");
}

void gemv_bf16(const uint16_t* W, int64_t N, int64_t K, const float* x, int64_t ldx, int64_t T, const float* bias,
               float* y, cudaStream_t s) {
  const unsigned blocks = static_cast<unsigned>((N + 7) / 8);
  const int t = static_cast<int>(T);
  const bool vec = ldx % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
#define FH1_GEMV(TB)                                                                       \
  (vec ? gemv_bf16_kernel<TB, true><<<blocks, 256, 0, s>>>(W, N, K, x, ldx, t, bias, y)  \
       : gemv_bf16_kernel<TB, false><<<blocks, 256, 0, s>>>(W, N, K, x, ldx, t, bias, y))
  if (T <= 1) FH1_GEMV(1);
  else if (T <= 2) FH1_GEMV(2);
  else if (T <= 4) FH1_GEMV(4);
  else if (T <= 8) FH1_GEMV(8);
#undef FH1_GEMV
  else throw Error("gemv_bf16: more than 8 rows");
  check_launch("gemv_bf16");
}

void f16_to_f32(const uint16_t* x, size_t n, float* out, cudaStream_t s) {
  f16_to_f32_kernel<<<blocks_for(n), kThreads, 0, s>>>(reinterpret_cast<const __half*>(x), n, out);
  check_launch("f16_to_f32");
}

void add_bias(float* y, int64_t T, int64_t N, const float* bias, cudaStream_t s) {
  add_bias_kernel<<<blocks_for(T * N), kThreads, 0, s>>>(y, T, N, bias);
  check_launch("add_bias");
}

void embed(const int32_t* ids, int64_t T, DType dt, const void* table, int64_t d, float scale, float* out,
           cudaStream_t s) {
  if (T == 0) return;
  if (dt == DType::BF16)
    embed_kernel<<<blocks_for(T * d), kThreads, 0, s>>>(ids, T, ReadBf16{static_cast<const uint16_t*>(table)}, d,
                                                         scale, out);
  else if (dt == DType::F32)
    embed_kernel<<<blocks_for(T * d), kThreads, 0, s>>>(ids, T, ReadF32{static_cast<const float*>(table)}, d, scale,
                                                         out);
  else
    throw Error("CUDA embed: the table was not bound by this backend");
  check_launch("embed");
}

void rmsnorm(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out, cudaStream_t s) {
  if (T == 0) return;
  rmsnorm_kernel<<<static_cast<unsigned>(T), d >= 1024 ? 512 : 128, 0, s>>>(x, d, w, eps, out);
  check_launch("rmsnorm");
}

void scale(const float* x, size_t n, float a, float* out, cudaStream_t s) {
  if (n == 0) return;
  scale_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, n, a, out);
  check_launch("scale");
}

void mul_columns(float* x, int64_t T, int64_t d, const float* v, cudaStream_t s) {
  if (T * d == 0) return;
  mul_columns_kernel<<<blocks_for(T * d), kThreads, 0, s>>>(x, T, d, v);
  check_launch("mul_columns");
}

void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n, cudaStream_t s) {
  if (n == 0) return;
  residual_add2_kernel<<<blocks_for(n), kThreads, 0, s>>>(h, a, sa, b, sb, n);
  check_launch("residual_add2");
}

void silu_mul(const float* gate, const float* up, float gs, size_t n, float* out, cudaStream_t s) {
  if (n == 0) return;
  silu_mul_kernel<<<blocks_for(n), kThreads, 0, s>>>(gate, up, gs, n, out);
  check_launch("silu_mul");
}

void gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, cudaStream_t s) {
  if (T * d == 0) return;
  gate_silu_kernel<<<blocks_for(T * d), kThreads, 0, s>>>(y, z, ldz, T, d);
  check_launch("gate_silu");
}

void gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups, const float* w,
                   float eps, bool norm_before_gate, cudaStream_t s) {
  if (T == 0) return;
  gated_rmsnorm_kernel<<<static_cast<unsigned>(T * groups), d / groups >= 1024 ? 512 : 128, 0, s>>>(
      y, z, ldz, d, groups, w, eps, norm_before_gate);
  check_launch("gated_rmsnorm");
}

void rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* pos, const float* inv_freq,
          cudaStream_t s) {
  const int half = hd / 2;
  if (T == 0 || half == 0) return;
  rope_kernel<<<blocks_for(T * heads * half), kThreads, 0, s>>>(x, ld, T, heads, hd, pos, inv_freq);
  check_launch("rope");
}

void fill_random_bf16(uint16_t* w, size_t n, float amp, uint64_t seed, cudaStream_t s) {
  fill_random_bf16_kernel<<<blocks_for(n), kThreads, 0, s>>>(reinterpret_cast<__nv_bfloat16*>(w), n, amp, seed);
  check_launch("fill_random_bf16");
}

void fill_random_f32(float* w, size_t n, float amp, uint64_t seed, cudaStream_t s) {
  fill_random_f32_kernel<<<blocks_for(n), kThreads, 0, s>>>(w, n, amp, seed);
  check_launch("fill_random_f32");
}

void conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w, const float* bias,
                 float* conv_state, float* out, cudaStream_t s) {
  if (T == 0 || C == 0) return;
  conv_out_kernel<<<blocks_for(T * C), kThreads, 0, s>>>(in, ld_in, T, C, K, w, bias, conv_state, out);
  check_launch("conv1d_silu");
  conv_state_kernel<<<blocks_for(C), kThreads, 0, s>>>(in, ld_in, T, C, K, conv_state);
  check_launch("conv1d_silu (state)");
}

}  // namespace fh1::cuda
