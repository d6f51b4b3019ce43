// The chunks' start states of the Mamba-2 scan (internal to cuda_ssm.cu): the recurrence over
// chunks, start[0] = S, start[c + 1] = a[c] start[c] + E[c], of pass 2 of the parallel chunks and
// of the chunked SSD; float32, and the chunked SSD's fp16 chunk states (cuda_ssd_wgmma.cuh).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_f16_scale.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_rows.cuh"

namespace fh1::cuda {
namespace {

// The recurrence over the chunks for one thread's entries s (float or float4) of head h:
// load_end(c) reads chunk c's end state, store_start(c, s) writes its start state over it, and
// loaded() runs after each group of loads; returns the state after the last chunk. The end states
// are read 8 chunks ahead of the writes: a store to the same array between the loads kept the
// compiler from issuing them early, so every chunk waited for one load (7B, 64 chunks: 636 us a
// layer).
template <class Vec, class LoadEnd, class StoreStart, class Loaded>
__device__ __forceinline__ Vec chunk_starts(Vec s, int chunks, int H, int h, const float* __restrict__ decay,
                                            LoadEnd load_end, StoreStart store_start, Loaded loaded) {
  constexpr int kAhead = 8;
  for (int c0 = 0; c0 < chunks; c0 += kAhead) {
    Vec end[kAhead];
#pragma unroll
    for (int j = 0; j < kAhead; ++j) end[j] = c0 + j < chunks ? load_end(c0 + j) : Vec{};
    loaded();
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      if (c0 + j >= chunks) break;
      store_start(c0 + j, s);
      const float a = decay[int64_t(c0 + j) * H + h];
      if constexpr (std::is_same_v<Vec, float4>) s = map4(s, end[j], [a](float x, float y) { return a * x + y; });
      else s = a * s + end[j];
    }
  }
  return s;
}

// Pass 2: the chunks' start states, chunks in order, one thread per state entry, or per 4 (V:
// 16-byte accesses, head_entries % 4 == 0, so that the 4 are of one head h; a 1.5B-Deep layer's
// 393K entries then fit one wave of blocks, where one entry a thread left the second half empty).
// chunk_states[c] holds chunk c's end state from zero and is overwritten by its start state;
// `state` (the state before the call) becomes the state after the last chunk.
template <bool V>
__global__ void ssm_chunk_starts_kernel(float* __restrict__ chunk_states, const float* __restrict__ decay,
                                        int chunks, int H, int64_t head_entries, float* __restrict__ state) {
  FH1_PDL_ENTER();
  using Vec = std::conditional_t<V, float4, float>;
  constexpr int kW = V ? 4 : 1;
  const int64_t entries = int64_t(H) * head_entries, units = entries / kW;
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= units) return;
  const int h = static_cast<int>(kW * e / head_entries);
  const auto load = [&](const float* p) -> Vec {
    if constexpr (V) return ld4(p, e);
    else return p[e];
  };
  const auto store = [&](float* p, Vec v) {
    if constexpr (V) st4(p, e, v);
    else p[e] = v;
  };
  const Vec s = chunk_starts(
      load(state), chunks, H, h, decay, [&](int c) { return load(chunk_states + int64_t(c) * entries); },
      [&](int c, Vec v) { store(chunk_states + int64_t(c) * entries, v); }, [] {});
  store(state, s);
}

// ssm_chunk_starts_kernel<true> over states stored as fp16 with a power of two a run of 128
// entries (FH1_CUDA_SSD_STATES16; cuda_ssd_wgmma.cuh says how): a warp's 32 x 4 entries are one
// such run, so the warp finds each start state's largest |value| and lane 0 writes its factor
// over the end state's (read 8 chunks ahead, before). The recurrence and `state` stay float32.
__global__ void ssm_chunk_starts16_kernel(__half* __restrict__ chunk_states, float* __restrict__ factors,
                                          const float* __restrict__ decay, int chunks, int H, int64_t head_entries,
                                          float* __restrict__ state) {
  FH1_PDL_ENTER();
  const int64_t entries = int64_t(H) * head_entries, units = entries / 4, runs = entries / 128;
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= units) return;  // whole warps: entries is a multiple of 128
  const int h = static_cast<int>(4 * e / head_entries);
  const int64_t run = e / 32;
  const auto load = [&](int c) {
    const uint2 raw = reinterpret_cast<const uint2*>(chunk_states + int64_t(c) * entries)[e];
    const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
    const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
    const float f = factors[int64_t(c) * runs + run];
    return make_float4(lo.x * f, lo.y * f, hi.x * f, hi.y * f);
  };
  const auto store = [&](int c, float4 v) {
    float m = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    const int sh = shift_for(__float_as_uint(m), -126, 126);  // any finite row; pow2(+-126) is normal
    const float f = pow2(sh);
    const __half2 lo = __floats2half2_rn(v.x * f, v.y * f), hi = __floats2half2_rn(v.z * f, v.w * f);
    uint2 raw;
    raw.x = *reinterpret_cast<const uint32_t*>(&lo);
    raw.y = *reinterpret_cast<const uint32_t*>(&hi);
    reinterpret_cast<uint2*>(chunk_states + int64_t(c) * entries)[e] = raw;
    if ((threadIdx.x & 31) == 0) factors[int64_t(c) * runs + run] = pow2(-sh);
  };
  // Every lane's factors read before lane 0 overwrites them: a __syncwarp after each group of loads.
  st4(state, e, chunk_starts(ld4(state, e), chunks, H, h, decay, load, store, [] { __syncwarp(); }));
}

}  // namespace
}  // namespace fh1::cuda
