// Element-wise, normalization and embedding kernels of the CUDA backend (the conv is in
// cuda_conv.cu, RoPE in cuda_rope.cu). Each one computes what the CPU reference
// (src/kernels/cpu/reference_kernels.cpp) computes, in float32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_f16_scale.cuh"
#include "kernels/cuda/cuda_kv.cuh"
#include "kernels/cuda/cuda_rows.cuh"
#include "util/error.h"

namespace fh1::cuda {
namespace {

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

// Rows kernels (cuda_rows.cuh): V = 4 values at a time.
template <bool V>
__global__ void f32_to_bf16_kernel(const float* x, int64_t ldx, int64_t T, int64_t K, __nv_bfloat16* out) {
  FH1_PDL_ENTER();
  const int64_t units = V ? K / 4 : K;
  FH1_FOR_ROWS(t, T) FH1_FOR_UNITS(c, units) {
    if constexpr (V) {
      const float4 v = ld4(x + t * ldx, c);
      __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(out + t * K) + 2 * c;
      o[0] = __floats2bfloat162_rn(v.x, v.y);
      o[1] = __floats2bfloat162_rn(v.z, v.w);
    } else {
      out[t * K + c] = __float2bfloat16_rn(x[t * ldx + c]);
    }
  }
}

// hi = bf16(x), lo = bf16(x - hi): hi + lo carries about 16 bits of x's 24-bit mantissa.
__device__ __forceinline__ void split_bf16(float v, __nv_bfloat16& hi, __nv_bfloat16& lo) {
  hi = __float2bfloat16_rn(v);
  lo = __float2bfloat16_rn(v - __bfloat162float(hi));
}
template <bool V>
__global__ void f32_to_bf16_split_kernel(const float* x, int64_t ldx, int64_t T, int64_t K, __nv_bfloat16* hi,
                                         __nv_bfloat16* lo) {
  FH1_PDL_ENTER();
  const int64_t units = V ? K / 4 : K;
  FH1_FOR_ROWS(t, T) FH1_FOR_UNITS(c, units) {
    if constexpr (V) {
      const float4 v = ld4(x + t * ldx, c);
      __nv_bfloat16 h[4], l[4];
      split_bf16(v.x, h[0], l[0]);
      split_bf16(v.y, h[1], l[1]);
      split_bf16(v.z, h[2], l[2]);
      split_bf16(v.w, h[3], l[3]);
      reinterpret_cast<uint2*>(hi + t * K)[c] = *reinterpret_cast<const uint2*>(h);
      reinterpret_cast<uint2*>(lo + t * K)[c] = *reinterpret_cast<const uint2*>(l);
    } else {
      split_bf16(x[t * ldx + c], hi[t * K + c], lo[t * K + c]);
    }
  }
}

// y[t, :] = y2[t, :] + y2[T + t, :] (+ bias)
__global__ void sum_halves_kernel(const float* y2, int64_t T, int64_t N, const float* bias, float* y) {
  FH1_PDL_ENTER();
  const int64_t n = T * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = y2[i] + y2[n + i] + (bias ? bias[i % N] : 0.0f);
}

__global__ void f16_to_f32_kernel(const __half* x, size_t n, float* out) {
  FH1_PDL_ENTER();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = __half2float(x[i]);
}

template <bool V>
__global__ void add_bias_kernel(float* y, int64_t T, int64_t N, const float* bias) {
  FH1_PDL_ENTER();
  const int64_t units = V ? N / 4 : N;
  FH1_FOR_ROWS(t, T) FH1_FOR_UNITS(c, units) {
    if constexpr (V) st4(y + t * N, c, map4(ld4(y + t * N, c), ld4(bias, c), [](float a, float b) { return a + b; }));
    else y[t * N + c] += bias[c];
  }
}

template <typename Read>
__global__ void embed_kernel(const int32_t* ids, int64_t T, Read read, int64_t d, float scale, float* out) {
  FH1_PDL_ENTER();
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
// The norms read their row's weights before the wait (they do not depend on the kernel before)
// and keep each thread's elements in registers from the sum to the scaling: one round trip to
// memory after the wait instead of two (a norm sits between two GEMVs twice a layer in a decode
// step). Rows longer than kNormHeld elements a thread read twice, as before. The sums are the
// same either way: each thread's elements in order, then block_sum.
constexpr int kNormHeld = 12;

__global__ void rmsnorm_kernel(const float* x, int64_t d, const float* w, float eps, float* out, uint32_t* absmax) {
  const bool held = d <= int64_t(blockDim.x) * kNormHeld;
  float wv[kNormHeld], v[kNormHeld];
  if (held)
#pragma unroll
    for (int j = 0; j < kNormHeld; ++j) {
      const int64_t k = threadIdx.x + int64_t(j) * blockDim.x;
      wv[j] = k < d ? w[k] : 0.0f;
    }
  FH1_PDL_ENTER();
  const float* xr = x + blockIdx.x * d;
  float* o = out + blockIdx.x * d;
  float ss = 0.0f;
  if (held) {
#pragma unroll
    for (int j = 0; j < kNormHeld; ++j) {
      const int64_t k = threadIdx.x + int64_t(j) * blockDim.x;
      v[j] = k < d ? xr[k] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kNormHeld; ++j) ss += v[j] * v[j];
  } else {
    for (int64_t k = threadIdx.x; k < d; k += blockDim.x) ss += xr[k] * xr[k];
  }
  ss = block_sum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  uint32_t m = 0;
  if (held) {
#pragma unroll
    for (int j = 0; j < kNormHeld; ++j) {
      const int64_t k = threadIdx.x + int64_t(j) * blockDim.x;
      if (k < d) {
        const float r = wv[j] * (v[j] * inv);
        o[k] = r;
        m = max(m, abs_bits(r));
      }
    }
  } else {
    for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
      const float r = w[k] * (xr[k] * inv);
      o[k] = r;
      m = max(m, abs_bits(r));
    }
  }
  if (absmax) block_max_into(m, absmax);
}

// h += a * sa (+ b * sb), then the RMSNorm of the new h: residual_add2_kernel and rmsnorm_kernel
// in one launch. Each thread norms the elements it updated (the same ones and the same sums as
// rmsnorm_kernel's), so the values are those of the two ops one by one.
__global__ void residual_rmsnorm_kernel(float* h, const float* a, float sa, const float* b, float sb, int64_t d,
                                        const float* w, float eps, float* out) {
  const bool held = d <= int64_t(blockDim.x) * kNormHeld;
  float wv[kNormHeld], v[kNormHeld];
  if (held)
#pragma unroll
    for (int j = 0; j < kNormHeld; ++j) {
      const int64_t k = threadIdx.x + int64_t(j) * blockDim.x;
      wv[j] = k < d ? w[k] : 0.0f;
    }
  FH1_PDL_ENTER();
  const int64_t row = int64_t(blockIdx.x) * d;
  float* hr = h + row;
  float ss = 0.0f;
  if (held) {
#pragma unroll
    for (int j = 0; j < kNormHeld; ++j) {
      const int64_t k = threadIdx.x + int64_t(j) * blockDim.x;
      if (k < d) {
        v[j] = hr[k] + (b ? a[row + k] * sa + b[row + k] * sb : a[row + k] * sa);
        hr[k] = v[j];
      } else {
        v[j] = 0.0f;
      }
    }
#pragma unroll
    for (int j = 0; j < kNormHeld; ++j) ss += v[j] * v[j];
  } else {
    for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
      const float u = hr[k] + (b ? a[row + k] * sa + b[row + k] * sb : a[row + k] * sa);
      hr[k] = u;
      ss += u * u;
    }
  }
  ss = block_sum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  float* o = out + row;
  if (held) {
#pragma unroll
    for (int j = 0; j < kNormHeld; ++j) {
      const int64_t k = threadIdx.x + int64_t(j) * blockDim.x;
      if (k < d) o[k] = wv[j] * (v[j] * inv);
    }
  } else {
    for (int64_t k = threadIdx.x; k < d; k += blockDim.x) o[k] = w[k] * (hr[k] * inv);
  }
}

// A prompt's norm: one warp a row, its float4s held in registers, a warp sum instead of a block's
// two barriers (a block a row left the SMs mostly waiting: 8K rows of 1280 in 71 us on an H200,
// 1.2 TB/s). NV float4s a lane: rows of up to 128 NV floats. absmax: as scale_kernel's.
// out16 (not null): the fp16 GEMM's input as well, fp16(out * 2^shift), so that the matmuls after
// the norm need no conversion of their own. The shift cannot wait for the output's max; it comes
// from a bound every warp computes alike: |out| <= sqrt(d) max|w| (|x_k| / rms(x) <= sqrt(d)),
// and *absmax gets that bound's bits instead of the max (the GEMM's alpha: cuda_gemm_f16.cu).
// RES: the residual add before the norm, res.h += res.a * sa (+ res.b * sb), x being res.h: the
// lane that adds an element norms it, so h is read once for both (the values of the two ops).
// out null (with out16 only): the float32 output is not written.
template <int NV, bool RES>
__global__ void rmsnorm_warp_kernel(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out,
                                    uint32_t* absmax, __half* out16, NormResidual res) {
  FH1_PDL_ENTER();
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5), n4 = d / 4;
  uint32_t m = 0;
  if (row < T) {
    float4 v[NV];
    float ss = 0.0f;
    uint32_t wm = 0;
    // (x * 1 is x: rows without a pending scale take the same expressions.)
    const float ra = RES && res.a_rows ? res.a_rows[row] : 1.0f, rb = RES && res.b_rows ? res.b_rows[row] : 1.0f;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int64_t i = lane + 32 * j;
      if constexpr (RES) {
        if (i < n4) {
          const float sa = res.sa, sb = res.sb;
          const auto times = [](float r) { return [r](float x) { return x * r; }; };
          const float4 h = ld4(res.h + row * d, i), a = map4(ld4(res.a + row * d, i), times(ra));
          // The expressions of residual_add2_kernel's, so that the sums are the same.
          v[j] = res.b ? map4(h, a, map4(ld4(res.b + row * d, i), times(rb)),
                              [=](float hk, float ak, float bk) { return hk + (ak * sa + bk * sb); })
                       : map4(h, a, [=](float hk, float ak) { return hk + ak * sa; });
        } else {
          v[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
      } else {
        v[j] = i < n4 ? ld4(x + row * d, i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
      ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
      if (out16 && i < n4) wm = max(wm, abs_bits(ld4(w, i)));
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
    float s16 = 1.0f;
    if (out16) {
      for (int o = 16; o > 0; o >>= 1) wm = max(wm, __shfl_xor_sync(0xffffffffu, wm, o));
      // 2^-10 above the bound: the rounding of x * inv and of w * (x * inv) stays below it.
      const uint32_t bound = __float_as_uint(sqrtf(static_cast<float>(d)) * __uint_as_float(wm) * (1.0f + 0x1p-10f));
      s16 = pow2(shift_for(bound));
      if (row == 0 && lane == 0) *absmax = bound;
    }
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int64_t i = lane + 32 * j;
      if (i >= n4) break;
      // h written here, after every load of the row: a store between them would keep the
      // compiler from issuing the loads together (h, a and b might alias).
      if constexpr (RES) st4(res.h + row * d, i, v[j]);
      const float4 o = map4(ld4(w, i), v[j], [inv](float wk, float xk) { return wk * (xk * inv); });
      if (out) st4(out + row * d, i, o);
      if (out16) {
        const __half2 a = __floats2half2_rn(o.x * s16, o.y * s16), b = __floats2half2_rn(o.z * s16, o.w * s16);
        reinterpret_cast<uint2*>(out16 + row * d)[i] =
            make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
      } else {
        m = max(m, abs_bits(o));
      }
    }
  }
  if (absmax && !out16) block_max_into(m, absmax);
}

// Flat kernels over n values: one row of n / 4 float4s when V. absmax (not null): the largest
// |output|'s bits, atomicMax'd (block_max_into).
template <bool V>
__global__ void scale_kernel(const float* x, size_t n, float a, float* out, uint32_t* absmax) {
  FH1_PDL_ENTER();
  const auto f = [a](float v) { return v * a; };
  uint32_t m = 0;
  FH1_FOR_UNITS(i, int64_t(V ? n / 4 : n)) {
    if constexpr (V) {
      const float4 o = map4(ld4(x, i), f);
      st4(out, i, o);
      m = max(m, abs_bits(o));
    } else {
      out[i] = f(x[i]);
      m = max(m, abs_bits(out[i]));
    }
  }
  if (absmax) block_max_into(m, absmax);
}

template <bool V>
__global__ void mul_columns_kernel(float* x, int64_t T, int64_t d, const float* v) {
  FH1_PDL_ENTER();
  const auto f = [](float a, float b) { return a * b; };
  FH1_FOR_ROWS(t, T) FH1_FOR_UNITS(c, V ? d / 4 : d) {
    float* xr = x + t * d;
    if constexpr (V) st4(xr, c, map4(ld4(xr, c), ld4(v, c), f));
    else xr[c] = f(xr[c], v[c]);
  }
}

template <bool V>
__global__ void residual_add2_kernel(float* h, const float* a, float sa, const float* b, float sb, size_t n) {
  FH1_PDL_ENTER();
  FH1_FOR_UNITS(i, int64_t(V ? n / 4 : n)) {
    if constexpr (V) {
      if (b) st4(h, i, map4(ld4(h, i), ld4(a, i), ld4(b, i), [=](float x, float y, float z) { return x + (y * sa + z * sb); }));
      else st4(h, i, map4(ld4(h, i), ld4(a, i), [=](float x, float y) { return x + y * sa; }));
    } else {
      h[i] += b ? a[i] * sa + b[i] * sb : a[i] * sa;
    }
  }
}

template <bool V>
__global__ void silu_mul_kernel(const float* gate, const float* up, float gs, size_t n, float* out, uint32_t* absmax) {
  FH1_PDL_ENTER();
  const auto f = [gs](float g, float u) { return u * silu(g * gs); };
  uint32_t m = 0;
  FH1_FOR_UNITS(i, int64_t(V ? n / 4 : n)) {
    if constexpr (V) {
      const float4 o = map4(ld4(gate, i), ld4(up, i), f);
      st4(out, i, o);
      m = max(m, abs_bits(o));
    } else {
      out[i] = f(gate[i], up[i]);
      m = max(m, abs_bits(out[i]));
    }
  }
  if (absmax) block_max_into(m, absmax);
}

template <bool V>
__global__ void gate_silu_kernel(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, uint32_t* absmax) {
  FH1_PDL_ENTER();
  const auto f = [](float a, float g) { return a * silu(g); };
  uint32_t m = 0;
  FH1_FOR_ROWS(t, T) FH1_FOR_UNITS(c, V ? d / 4 : d) {
    float* yr = y + t * d;
    const float* zr = z + t * ldz;
    if constexpr (V) {
      const float4 o = map4(ld4(yr, c), ld4(zr, c), f);
      st4(yr, c, o);
      m = max(m, abs_bits(o));
    } else {
      const float o = f(yr[c], zr[c]);
      yr[c] = o;
      m = max(m, abs_bits(o));
    }
  }
  if (absmax) block_max_into(m, absmax);
}

// One block per (row, group).
__global__ void gated_rmsnorm_kernel(float* y, const float* z, int64_t ldz, int64_t d, int groups, const float* w,
                                     float eps, bool norm_before_gate) {
  FH1_PDL_ENTER();
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

__device__ __forceinline__ float random_uniform(uint64_t seed, size_t i) {  // splitmix64 -> [-1, 1)
  uint64_t z = seed + (static_cast<uint64_t>(i) + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void fill_random_bf16_kernel(__nv_bfloat16* w, size_t n, float amp, uint64_t seed) {
  FH1_PDL_ENTER();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    w[i] = __float2bfloat16_rn(amp * random_uniform(seed, i));
}

__global__ void fill_random_kv_q8_kernel(uint8_t* cache, int64_t rows, int64_t width, float amp, uint64_t seed) {
  const int B = kv_q8_block_of(width);
  const int64_t rb = kv_q8_row_bytes_of(width);
  const int64_t n = rows * width;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / width, c = e - r * width;
    uint8_t* row = cache + r * rb;
    reinterpret_cast<int8_t*>(row)[c] = static_cast<int8_t>(rintf(random_uniform(seed, static_cast<size_t>(e)) * 127.0f));
    if (c % B == 0) reinterpret_cast<float*>(row + kv_q8_scales_at_of(width))[c / B] = amp / 127.0f;
  }
}

__global__ void fill_random_f32_kernel(float* w, size_t n, float amp, uint64_t seed) {
  FH1_PDL_ENTER();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    w[i] = amp * random_uniform(seed, i);
}

}  // namespace

bool pdl_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("FH1_CUDA_PDL");
    return e == nullptr || std::string(e) != "0";
  }();
  return on;
}

namespace {
thread_local int pdl_off_depth = 0;
}  // namespace

PdlOff::PdlOff(bool on) : on_(on) {
  if (on_) ++pdl_off_depth;
}
PdlOff::~PdlOff() {
  if (on_) --pdl_off_depth;
}
bool pdl_now() { return pdl_off_depth == 0 && pdl_enabled(); }

void f32_to_bf16(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* out, cudaStream_t s) {
  auto* o = reinterpret_cast<__nv_bfloat16*>(out);
  if (rows_vec4(x, K, ldx) && reinterpret_cast<uintptr_t>(out) % 8 == 0)
    launch_rows(f32_to_bf16_kernel<true>, T, K / 4, s, x, ldx, T, K, o);
  else
    launch_rows(f32_to_bf16_kernel<false>, T, K, s, x, ldx, T, K, o);
  check_launch("f32_to_bf16");
}

void f32_to_bf16_split(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* hi, uint16_t* lo, cudaStream_t s) {
  auto* h = reinterpret_cast<__nv_bfloat16*>(hi);
  auto* l = reinterpret_cast<__nv_bfloat16*>(lo);
  if (rows_vec4(x, K, ldx) && reinterpret_cast<uintptr_t>(hi) % 8 == 0 && reinterpret_cast<uintptr_t>(lo) % 8 == 0)
    launch_rows(f32_to_bf16_split_kernel<true>, T, K / 4, s, x, ldx, T, K, h, l);
  else
    launch_rows(f32_to_bf16_split_kernel<false>, T, K, s, x, ldx, T, K, h, l);
  check_launch("f32_to_bf16_split");
}

void sum_halves(const float* y2, int64_t T, int64_t N, const float* bias, float* y, cudaStream_t s) {
  launch(sum_halves_kernel, blocks_for(T * N), kThreads, 0, s, y2, T, N, bias, y);
  check_launch("sum_halves");
}

void f16_to_f32(const uint16_t* x, size_t n, float* out, cudaStream_t s) {
  launch(f16_to_f32_kernel, blocks_for(n), kThreads, 0, s, reinterpret_cast<const __half*>(x), n, out);
  check_launch("f16_to_f32");
}

void add_bias(float* y, int64_t T, int64_t N, const float* bias, cudaStream_t s) {
  if (rows_vec4(y, N, N) && aligned16(bias))
    launch_rows(add_bias_kernel<true>, T, N / 4, s, y, T, N, bias);
  else
    launch_rows(add_bias_kernel<false>, T, N, s, y, T, N, bias);
  check_launch("add_bias");
}

void embed(const int32_t* ids, int64_t T, DType dt, const void* table, int64_t d, float scale, float* out,
           cudaStream_t s) {
  if (T == 0) return;
  if (dt == DType::BF16)
    launch(embed_kernel<ReadBf16>, blocks_for(T * d), kThreads, 0, s, ids, T, ReadBf16{static_cast<const uint16_t*>(table)}, d,
                                                         scale, out);
  else if (dt == DType::F32)
    launch(embed_kernel<ReadF32>, blocks_for(T * d), kThreads, 0, s, ids, T, ReadF32{static_cast<const float*>(table)}, d, scale,
                                                         out);
  else
    throw Error("CUDA embed: the table was not bound by this backend");
  check_launch("embed");
}

namespace {
// Many rows (a prompt): a warp a row where a lane's share fits its registers. A few rows (a
// decode step): a block a row, which reads the weights before the wait (the step's latency).
constexpr int kWarpRowsMin = 256, kWarpRowsWarps = 8;
int rmsnorm_warp_nv(const float* x, int64_t T, int64_t d, const float* w, const float* out) {
  const bool fits = T >= kWarpRowsMin && d % 4 == 0 && aligned16(x) && aligned16(w) && aligned16(out) &&
                    (T + kWarpRowsWarps - 1) / kWarpRowsWarps <= int64_t(1) << 30;
  if (!fits || d > 128 * 24) return 0;
  return d <= 128 * 4 ? 4 : d <= 128 * 8 ? 8 : d <= 128 * 16 ? 16 : 24;
}
}  // namespace

bool rmsnorm_takes_f16(const float* x, int64_t T, int64_t d, const float* w, const float* out, const void* out16) {
  return rmsnorm_warp_nv(x, T, d, w, out) > 0 && reinterpret_cast<uintptr_t>(out16) % 8 == 0;
}

bool rmsnorm_takes_residual(int64_t T, int64_t d, const float* w, const float* out, const NormResidual& res) {
  return rmsnorm_warp_nv(res.h, T, d, w, out) > 0 && aligned16(res.a) && (!res.b || aligned16(res.b));
}

void rmsnorm(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out, cudaStream_t s,
             uint32_t* absmax, uint16_t* out16, const NormResidual* res) {
  if (T == 0) return;
  if (out16 && (!absmax || !rmsnorm_takes_f16(x, T, d, w, out, out16)))
    throw Error("CUDA rmsnorm: an fp16 output needs the warp kernel (rmsnorm_takes_f16) and the max slot");
  if (!out && !out16) throw Error("CUDA rmsnorm: no output");
  if (res && (res->h != x || !rmsnorm_takes_residual(T, d, w, out, *res)))
    throw Error("CUDA rmsnorm: a residual add before it needs the warp kernel (rmsnorm_takes_residual), x being h");
  const unsigned warp_blocks = static_cast<unsigned>((T + kWarpRowsWarps - 1) / kWarpRowsWarps);
  auto* o16 = reinterpret_cast<__half*>(out16);
  const NormResidual r = res ? *res : NormResidual{};
  const auto by_warps = [&](auto kernel, auto kernel_res) {
    if (res) launch(kernel_res, warp_blocks, 32 * kWarpRowsWarps, 0, s, x, T, d, w, eps, out, absmax, o16, r);
    else launch(kernel, warp_blocks, 32 * kWarpRowsWarps, 0, s, x, T, d, w, eps, out, absmax, o16, r);
  };
  switch (rmsnorm_warp_nv(x, T, d, w, out)) {
    case 4: by_warps(rmsnorm_warp_kernel<4, false>, rmsnorm_warp_kernel<4, true>); break;
    case 8: by_warps(rmsnorm_warp_kernel<8, false>, rmsnorm_warp_kernel<8, true>); break;
    case 16: by_warps(rmsnorm_warp_kernel<16, false>, rmsnorm_warp_kernel<16, true>); break;
    case 24: by_warps(rmsnorm_warp_kernel<24, false>, rmsnorm_warp_kernel<24, true>); break;
    default: launch(rmsnorm_kernel, static_cast<unsigned>(T), d >= 1024 ? 512 : 128, 0, s, x, d, w, eps, out, absmax);
  }
  check_launch("rmsnorm");
}

void residual_rmsnorm(float* h, const float* a, float sa, const float* b, float sb, int64_t T, int64_t d,
                      const float* w, float eps, float* out, cudaStream_t s) {
  if (T == 0) return;
  launch(residual_rmsnorm_kernel, static_cast<unsigned>(T), d >= 1024 ? 512 : 128, 0, s, h, a, sa, b, sb, d, w, eps,
         out);
  check_launch("residual_rmsnorm");
}

void scale(const float* x, size_t n, float a, float* out, cudaStream_t s, uint32_t* absmax) {
  if (n == 0) return;
  if (n % 4 == 0 && aligned16(x) && aligned16(out))
    launch(scale_kernel<true>, rows_grid(1, int64_t(n / 4)), kRowThreads, 0, s, x, n, a, out, absmax);
  else
    launch(scale_kernel<false>, rows_grid(1, int64_t(n)), kRowThreads, 0, s, x, n, a, out, absmax);
  check_launch("scale");
}

void mul_columns(float* x, int64_t T, int64_t d, const float* v, cudaStream_t s) {
  if (T * d == 0) return;
  if (rows_vec4(x, d, d) && aligned16(v))
    launch_rows(mul_columns_kernel<true>, T, d / 4, s, x, T, d, v);
  else
    launch_rows(mul_columns_kernel<false>, T, d, s, x, T, d, v);
  check_launch("mul_columns");
}

void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n, cudaStream_t s) {
  if (n == 0) return;
  if (n % 4 == 0 && aligned16(h) && aligned16(a) && (b == nullptr || aligned16(b)))
    launch(residual_add2_kernel<true>, rows_grid(1, int64_t(n / 4)), kRowThreads, 0, s, h, a, sa, b, sb, n);
  else
    launch(residual_add2_kernel<false>, rows_grid(1, int64_t(n)), kRowThreads, 0, s, h, a, sa, b, sb, n);
  check_launch("residual_add2");
}

void silu_mul(const float* gate, const float* up, float gs, size_t n, float* out, cudaStream_t s, uint32_t* absmax) {
  if (n == 0) return;
  if (n % 4 == 0 && aligned16(gate) && aligned16(up) && aligned16(out))
    launch(silu_mul_kernel<true>, rows_grid(1, int64_t(n / 4)), kRowThreads, 0, s, gate, up, gs, n, out, absmax);
  else
    launch(silu_mul_kernel<false>, rows_grid(1, int64_t(n)), kRowThreads, 0, s, gate, up, gs, n, out, absmax);
  check_launch("silu_mul");
}

void gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, cudaStream_t s, uint32_t* absmax) {
  if (T * d == 0) return;
  if (rows_vec4(y, d, d) && rows_vec4(z, d, ldz))
    launch_rows(gate_silu_kernel<true>, T, d / 4, s, y, z, ldz, T, d, absmax);
  else
    launch_rows(gate_silu_kernel<false>, T, d, s, y, z, ldz, T, d, absmax);
  check_launch("gate_silu");
}

void gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups, const float* w,
                   float eps, bool norm_before_gate, cudaStream_t s) {
  if (T == 0) return;
  launch(gated_rmsnorm_kernel, static_cast<unsigned>(T * groups), d / groups >= 1024 ? 512 : 128, 0, s, 
      y, z, ldz, d, groups, w, eps, norm_before_gate);
  check_launch("gated_rmsnorm");
}

void fill_random_bf16(uint16_t* w, size_t n, float amp, uint64_t seed, cudaStream_t s) {
  launch(fill_random_bf16_kernel, blocks_for(n), kThreads, 0, s, reinterpret_cast<__nv_bfloat16*>(w), n, amp, seed);
  check_launch("fill_random_bf16");
}

void fill_random_kv_q8(void* cache, int64_t rows, int64_t width, float amp, uint64_t seed, cudaStream_t s) {
  if (rows * width == 0) return;
  launch(fill_random_kv_q8_kernel, blocks_for(static_cast<size_t>(rows * width)), kThreads, 0, s,
         static_cast<uint8_t*>(cache), rows, width, amp, seed);
  check_launch("fill_random_kv_q8");
}

void fill_random_f32(float* w, size_t n, float amp, uint64_t seed, cudaStream_t s) {
  launch(fill_random_f32_kernel, blocks_for(n), kThreads, 0, s, w, n, amp, seed);
  check_launch("fill_random_f32");
}

}  // namespace fh1::cuda
