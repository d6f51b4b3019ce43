// Internal to the CUDA attention kernels (cuda_attention.cu: decode and dispatch;
// cuda_attention_prefill.cu: prefill): shared constants, loads of KV cache values in either type,
// and the bf16 tensor-core building blocks (mma.sync m16n8k16, ldmatrix, cp.async).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fh1::cuda {

using bf16 = __nv_bfloat16;

// Prefill of one sequence (T > 8 queries, the decode kernels take fewer): the flash kernels on
// the tensor cores when `tensor_cores` (bf16 over bf16 caches with hd % 8 == 0 and hd <= 128,
// else TF32), or the float32 SIMT kernel.
void attention_prefill(const float* q, int64_t ldq, int64_t T, const float* k, const float* v, int64_t n_past, int H,
                       int Hkv, int hd, float scale, bool tensor_cores, float* out, cudaStream_t s);
void attention_prefill(const float* q, int64_t ldq, int64_t T, const bf16* k, const bf16* v, int64_t n_past, int H,
                       int Hkv, int hd, float scale, bool tensor_cores, float* out, cudaStream_t s);

namespace {

constexpr int kMaxDecodeT = 8;  // at most this many queries: the decode (split-KV) kernels

// Loads of cache values as float32: one value, or 4 consecutive ones (16-byte aligned for
// float, 8-byte for bf16); the _cs forms stream (evict-first: each key is read once).
__device__ __forceinline__ float kv_ld(const float* p) { return *p; }
__device__ __forceinline__ float kv_ld(const bf16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float4 bf16x4_to_float4(uint2 u) {
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}
__device__ __forceinline__ float4 kv_ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 kv_ld4(const bf16* p) { return bf16x4_to_float4(*reinterpret_cast<const uint2*>(p)); }
__device__ __forceinline__ float4 kv_ld4_cs(const float* p) { return __ldcs(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ float4 kv_ld4_cs(const bf16* p) {
  return bf16x4_to_float4(__ldcs(reinterpret_cast<const uint2*>(p)));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16 bytes global -> shared, asynchronously; zeros when !valid (nothing is read then).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(addr), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

}  // namespace
}  // namespace fh1::cuda
