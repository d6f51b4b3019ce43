// Device-side stores into the KV caches: float32, bf16, and the 8-bit rows (layout and rounding:
// quant/kv_q8.h, which the CPU backend computes the same way, bit for bit).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace fh1::cuda {

// KV cache stores: float32 as it is, bf16 rounded to nearest even.
__device__ __forceinline__ void kv_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void kv_store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// The layout's sizes (quant/kv_q8.h's, for device code).
__host__ __device__ __forceinline__ int kv_q8_block_of(int64_t width) {
  int b = 32;
  while (b > 1 && width % b != 0) b /= 2;
  return b;
}
__host__ __device__ __forceinline__ int64_t kv_q8_scales_at_of(int64_t width) { return (width + 3) / 4 * 4; }
__host__ __device__ __forceinline__ int64_t kv_q8_row_bytes_of(int64_t width) {
  return (kv_q8_scales_at_of(width) + 4 * (width / kv_q8_block_of(width)) + 15) / 16 * 16;
}

// Stores v as value c of an 8-bit row (`row`: its first byte; `width` values, blocks of B).
// Each aligned group of B lanes must hold one block's B values (c % B == lane % B, B a power of
// two <= 32), and every lane of the warp must call it, active or not: the block's largest |v|
// is found across its lanes.
__device__ __forceinline__ void kv_q8_store(uint8_t* row, int64_t width, int64_t c, float v, bool active, int B) {
  float m = active ? fabsf(v) : 0.0f;
  for (int o = 1; o < B; o <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (!active) return;
  const float d = __fdiv_rn(m, 127.0f);
  float q = 0.0f;
  if (d > 0.0f) q = fminf(fmaxf(rintf(__fdiv_rn(v, d)), -127.0f), 127.0f);
  reinterpret_cast<int8_t*>(row)[c] = static_cast<int8_t>(q);
  if (c % B == 0) reinterpret_cast<float*>(row + kv_q8_scales_at_of(width))[c / B] = d;
}


}  // namespace fh1::cuda
