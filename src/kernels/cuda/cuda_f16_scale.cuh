// Internal to the CUDA backend: the power of two that brings a tensor into fp16's range, shared
// by the fp16 prefill GEMM (cuda_gemm_f16.cu) and the fp16 flash attention
// (cuda_attention_prefill.cu). Scaling by a power of two is exact, so a bf16 value is exact in
// fp16 once scaled, unless it lies more than 2^29 below its tensor's largest.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fh1::cuda {
namespace {

constexpr int kTopExponent = 14;  // the largest |value| is scaled into [2^14, 2^15): fp16's max is 65504
constexpr int kMaxShift = 63;  // |shift| <= 63: 2^shift and 2^-(s1 + s2) are normal floats

// The shift (x * 2^shift) for a tensor whose largest |value| has float32 bits `bits` (0 when all
// are zero), within [lo, hi]. Inf or NaN: no scaling (they propagate as they would in float32).
__host__ __device__ inline int shift_for(uint32_t bits, int lo, int hi) {
  if (bits == 0 || bits >= 0x7f800000u) return 0;
  const int e = static_cast<int>(bits >> 23) - 127;  // floor(log2 |max|); subnormals count as -127
  const int s = kTopExponent - e;
  return s < lo ? lo : (s > hi ? hi : s);
}
__host__ __device__ inline int shift_for(uint32_t bits) { return shift_for(bits, -kMaxShift, kMaxShift); }

__device__ inline float pow2(int s) { return __uint_as_float(static_cast<uint32_t>(127 + s) << 23); }  // |s| <= 126

// 4 fp16 values packed in 8 bytes (as store_f16_run and the GEMMs' fp16 outputs lay them) as floats.
__device__ inline float4 f16x4_to_float4(uint2 packed) {
  const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&packed.x));
  const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&packed.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// A run of 128 values held by a warp (v: 4 a lane) stored as fp16 (8 bytes a lane, dst[lane])
// times the power of two that brings the run's largest |value| into [2^14, 2^15); lane 0 writes
// the factor that undoes it (2^-shift) to *factor. Any finite run: the shift stays within +-126,
// so both powers are normal floats. (The SSD's fp16 chunk states, cuda_ssd_wgmma.cuh.)
__device__ inline void store_f16_run(float4 v, uint2* dst, float* factor) {
  float m = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  const int sh = shift_for(__float_as_uint(m), -126, 126);
  const float f = pow2(sh);
  const __half2 lo = __floats2half2_rn(v.x * f, v.y * f), hi = __floats2half2_rn(v.z * f, v.w * f);
  const int lane = static_cast<int>(threadIdx.x & 31);
  dst[lane] = make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
  if (lane == 0) *factor = pow2(-sh);
}

}  // namespace
}  // namespace fh1::cuda
