// KV cache writes: rows appended to one cache (kv_write) and a decode step's row per sequence
// (kv_write_rows, in parts: K and V in one launch), in every cache type (cuda_kv.cuh stores).
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/cuda_kv.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_rows.cuh"

namespace fh1::cuda {
namespace {


template <typename KV>
__global__ void kv_write_kernel(KV* cache, int64_t row, const int64_t* row_dev, const float* src, int64_t n,
                                int64_t width) {
  FH1_PDL_ENTER();
  KV* dst = cache + (row_dev ? *row_dev : row) * width;
  // 4 values a thread (16-byte loads) where n and the addresses allow: a prompt's rows.
  if (n % 4 == 0 && reinterpret_cast<uintptr_t>(dst) % (4 * sizeof(KV)) == 0 &&
      reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n / 4; i += int64_t(gridDim.x) * blockDim.x) {
      const float4 v = reinterpret_cast<const float4*>(src)[i];
      if constexpr (sizeof(KV) == 4) {
        reinterpret_cast<float4*>(dst)[i] = v;
      } else {
        __align__(8) KV out[4];
        kv_store(out + 0, v.x);
        kv_store(out + 1, v.y);
        kv_store(out + 2, v.z);
        kv_store(out + 3, v.w);
        reinterpret_cast<uint2*>(dst)[i] = *reinterpret_cast<const uint2*>(out);
      }
    }
    return;
  }
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    kv_store(dst + i, src[i]);
}

// 8-bit caches: a thread per value, whole warps (kv_q8_store finds each block's largest value).
__global__ void kv_write_q8_kernel(uint8_t* cache, int64_t row, const int64_t* row_dev, const float* src, int64_t n,
                                   int64_t width) {
  FH1_PDL_ENTER();
  const int B = kv_q8_block_of(width);
  const int64_t rb = kv_q8_row_bytes_of(width);
  uint8_t* dst = cache + (row_dev ? *row_dev : row) * rb;
  const int64_t n32 = (n + 31) / 32 * 32;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n32; e += int64_t(gridDim.x) * blockDim.x) {
    const bool active = e < n;
    const int64_t r = active ? e / width : 0, c = active ? e - r * width : 0;
    kv_q8_store(dst + r * rb, width, c, active ? src[e] : 0.0f, active, B);
  }
}

__global__ void kv_write_rows_q8_kernel(KvRowsParts kp, int64_t width) {
  FH1_PDL_ENTER();
  const int64_t i = blockIdx.y;
  const KvRowsPart& P = kp.part[blockIdx.z];
  const int B = kv_q8_block_of(width);
  uint8_t* dst = static_cast<uint8_t*>(P.caches[i]) + P.rows[i] * kv_q8_row_bytes_of(width);
  const float* sr = P.src + i * width;
  const int64_t w32 = (width + 31) / 32 * 32;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < w32; j += int64_t(gridDim.x) * blockDim.x)
    kv_q8_store(dst, width, j, j < width ? sr[j] : 0.0f, j < width, B);
}

template <typename KV>
__global__ void kv_write_rows_kernel(KvRowsParts kp, int64_t width) {
  FH1_PDL_ENTER();
  const int64_t i = blockIdx.y;
  const KvRowsPart& P = kp.part[blockIdx.z];
  KV* dst = static_cast<KV*>(P.caches[i]) + P.rows[i] * width;
  const float* sr = P.src + i * width;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < width; j += int64_t(gridDim.x) * blockDim.x)
    kv_store(dst + j, sr[j]);
}

}  // namespace

void kv_write(void* cache, int64_t row, const int64_t* row_dev, const float* src, int64_t rows, int64_t width,
              KvType kv, cudaStream_t s) {
  const int64_t n = rows * width;
  if (n == 0) return;
  if (kv == KvType::Q8)
    launch(kv_write_q8_kernel, blocks_for(static_cast<size_t>(n)), kThreads, 0, s, static_cast<uint8_t*>(cache), row,
           row_dev, src, n, width);
  else if (kv == KvType::BF16)
    launch(kv_write_kernel<__nv_bfloat16>, blocks_for(static_cast<size_t>(n % 4 == 0 ? n / 4 : n)), kThreads, 0, s,
           static_cast<__nv_bfloat16*>(cache), row, row_dev, src, n, width);
  else
    launch(kv_write_kernel<float>, blocks_for(static_cast<size_t>(n % 4 == 0 ? n / 4 : n)), kThreads, 0, s,
           static_cast<float*>(cache), row, row_dev, src, n, width);
  check_launch("kv_write");
}

void kv_write_rows(void* const* caches, const int64_t* rows, const float* src, int64_t n, int64_t width,
                   KvType kv, cudaStream_t s) {
  if (n == 0 || width == 0) return;
  KvRowsParts kp;
  kp.part[0] = KvRowsPart{caches, rows, src};
  kv_write_rows_parts(kp, 1, n, width, kv, s);
}

void kv_write_rows_parts(const KvRowsParts& kp, int nparts, int64_t n, int64_t width, KvType kv, cudaStream_t s) {
  if (n == 0 || width == 0) return;
  const dim3 grid(blocks_for(static_cast<size_t>(width)), static_cast<unsigned>(n), static_cast<unsigned>(nparts));
  if (kv == KvType::Q8) launch(kv_write_rows_q8_kernel, grid, kThreads, 0, s, kp, width);
  else if (kv == KvType::BF16) launch(kv_write_rows_kernel<__nv_bfloat16>, grid, kThreads, 0, s, kp, width);
  else launch(kv_write_rows_kernel<float>, grid, kThreads, 0, s, kp, width);
  check_launch("kv_write_rows");
}

}  // namespace fh1::cuda
