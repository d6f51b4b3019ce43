// Internal to the CUDA backend: the launch shape of element-wise kernels (flat, and over the rows
// of a matrix, 4 floats at a time where the rows allow it) and their small device helpers.
// Element-wise ops are memory-bound; 16-byte accesses and no 64-bit division per element (the row
// comes from the grid) bring them from ~1.5-2.3 TB/s to near the copy bandwidth on an H200.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "kernels/cuda/cuda_ops.h"

namespace fh1::cuda {
namespace {

constexpr int kRowThreads = 256;

// A flat kernel's launch: blocks of kThreads covering n (at least 1, at most 2^30).
constexpr int kThreads = 256;
inline unsigned blocks_for(size_t n, int threads = kThreads) {
  const size_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 1u << 30 ? 1u << 30 : b));
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// True when p is 16-byte aligned (a float4 or 8 bf16 at a time).
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
// Rows of `cols` floats at p with row stride ld can be read as float4: cols, ld and p allow it.
inline bool rows_vec4(const void* p, int64_t cols, int64_t ld) { return cols % 4 == 0 && ld % 4 == 0 && aligned16(p); }

// grid.y walks the T rows (each block strides over them), grid.x covers a row's `units`
// (float4s or floats) with kRowThreads threads a block.
inline dim3 rows_grid(int64_t T, int64_t units) {
  const int64_t gx = std::clamp<int64_t>((units + kRowThreads - 1) / kRowThreads, 1, 4096);
  const int64_t gy = std::clamp<int64_t>(T, 1, std::max<int64_t>(1, std::min<int64_t>(65535, 65536 / gx)));
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
}

// The launch shape of a rows kernel over T > 1 rows: as few blocks a row as hold its units, each
// of the fewest whole warps that cover an equal share (a row of 320 float4s in blocks of 256
// threads left 3/8 of the threads of every second block idle). One row: rows_grid's.
struct RowsShape {
  dim3 grid;
  unsigned block = kRowThreads;
};
inline RowsShape rows_shape(int64_t T, int64_t units) {
  if (T <= 1) return {rows_grid(T, units), kRowThreads};
  const int64_t gx = std::max<int64_t>(1, (units + 1023) / 1024);
  const int64_t per = (units + gx - 1) / gx, block = std::max<int64_t>(32, (per + 31) / 32 * 32);
  const int64_t gy = std::clamp<int64_t>(T, 1, std::max<int64_t>(1, std::min<int64_t>(65535, 65536 / gx)));
  return {dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), static_cast<unsigned>(block)};
}

template <typename... KArgs, typename... Args>
void launch_rows(void (*kernel)(KArgs...), int64_t T, int64_t units, cudaStream_t s, Args&&... args) {
  const RowsShape r = rows_shape(T, units);
  launch(kernel, r.grid, dim3(r.block), 0, s, std::forward<Args>(args)...);
}

// Loops of a rows kernel: for (t, c) in rows x units.
#define FH1_FOR_ROWS(t, T) for (int64_t t = blockIdx.y; t < (T); t += gridDim.y)
#define FH1_FOR_UNITS(c, units) \
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < (units); c += int64_t(gridDim.x) * blockDim.x)

template <class F>
__device__ __forceinline__ float4 map4(float4 a, F f) {
  return make_float4(f(a.x), f(a.y), f(a.z), f(a.w));
}
template <class F>
__device__ __forceinline__ float4 map4(float4 a, float4 b, F f) {
  return make_float4(f(a.x, b.x), f(a.y, b.y), f(a.z, b.z), f(a.w, b.w));
}
template <class F>
__device__ __forceinline__ float4 map4(float4 a, float4 b, float4 c, F f) {
  return make_float4(f(a.x, b.x, c.x), f(a.y, b.y, c.y), f(a.z, b.z, c.z), f(a.w, b.w, c.w));
}
__device__ __forceinline__ float4 ld4(const float* p, int64_t i) { return reinterpret_cast<const float4*>(p)[i]; }
__device__ __forceinline__ void st4(float* p, int64_t i, float4 v) { reinterpret_cast<float4*>(p)[i] = v; }

// The bits of |v| as a float: ordered as the magnitudes are (NaN above infinity).
__device__ __forceinline__ uint32_t abs_bits(float v) { return __float_as_uint(v) & 0x7fffffffu; }
__device__ __forceinline__ uint32_t abs_bits(float4 v) {
  return max(max(abs_bits(v.x), abs_bits(v.y)), max(abs_bits(v.z), abs_bits(v.w)));
}

// Block-wide max of v, then one atomicMax per block into *out (all threads of the block call it).
__device__ inline void block_max_into(uint32_t v, uint32_t* out) {
  __shared__ uint32_t part[32];
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0u;
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0 && v != 0) atomicMax(out, v);
  }
}

}  // namespace
}  // namespace fh1::cuda
