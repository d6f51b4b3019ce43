// The chunks' start states of the Mamba-2 scan (internal to cuda_ssm.cu): the recurrence over
// chunks, start[0] = S, start[c + 1] = a[c] start[c] + E[c], of pass 2 of the parallel chunks and
// of the chunked SSD; float32, and the chunked SSD's fp16 chunk states (cuda_ssd_wgmma.cuh).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "kernels/cuda/cuda_f16_scale.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_rows.cuh"

namespace fh1::cuda {
namespace {

// The recurrence over the chunks for one thread's entries s (float or float4) of head h:
// load_end(c) reads chunk c's end state as it lies in memory (Raw), widen() makes it a Vec,
// store_start(c, s) writes chunk c's start state over it, and loaded() runs after each group of
// loads; returns the state after the last chunk. The end states and the decays are read in groups
// of A chunks, the next group issued before the current one is used, so that up to 2A chunks'
// loads are in flight while the chunks before them are done (a store to the same array between
// the loads kept the compiler from issuing them early, so every chunk once waited for one load:
// 7B, 64 chunks, 636 us a layer; and with one group at a time each group waited for its loads).
template <int A, class Vec, class Raw, class LoadEnd, class Widen, class StoreStart, class Loaded>
__device__ __forceinline__ Vec chunk_starts(Vec s, int chunks, int H, int h, const float* __restrict__ decay,
                                            LoadEnd load_end, Widen widen, StoreStart store_start, Loaded loaded) {
  Raw end[A], next_end[A]{};
  float a[A], next_a[A]{};
  const auto fetch = [&](int c0, Raw(&e)[A], float(&f)[A]) {
#pragma unroll
    for (int j = 0; j < A; ++j) {
      const bool in = c0 + j < chunks;
      e[j] = in ? load_end(c0 + j) : Raw{};
      f[j] = in ? decay[int64_t(c0 + j) * H + h] : 0.0f;
    }
  };
  fetch(0, end, a);
  for (int c0 = 0; c0 < chunks; c0 += A) {
    if (c0 + A < chunks) fetch(c0 + A, next_end, next_a);
    loaded();
#pragma unroll
    for (int j = 0; j < A; ++j) {
      if (c0 + j >= chunks) break;
      store_start(c0 + j, s);
      const Vec e = widen(end[j]);
      if constexpr (std::is_same_v<Vec, float4>) {
        const float aj = a[j];
        s = map4(s, e, [aj](float x, float y) { return aj * x + y; });
      } else {
        s = a[j] * s + e;
      }
    }
#pragma unroll
    for (int j = 0; j < A; ++j) end[j] = next_end[j], a[j] = next_a[j];
  }
  return s;
}

// Chunks a group of chunk_starts (A): 8 where the grid is at most two blocks an SM (a small
// state: few warps, so more loads in flight each), else 4, in registers for three blocks an SM.
constexpr int kStartsGroupSmallGrid = 8, kStartsGroupLargeGrid = 4;
constexpr int starts_min_blocks(int A) { return A == kStartsGroupSmallGrid ? 2 : 3; }

// The group set by set_chunk_starts_group (cuda_ops.h; FH1_CUDA_STARTS_GROUP=4|8), 0: by the grid.
inline std::atomic<int>& chunk_starts_group_setting() {
  static std::atomic<int> g{[] {
    const char* e = std::getenv("FH1_CUDA_STARTS_GROUP");
    const int v = e ? std::atoi(e) : 0;
    return v == kStartsGroupSmallGrid || v == kStartsGroupLargeGrid ? v : 0;
  }()};
  return g;
}

// chunk_starts' group for a grid of `blocks` (host side): f is called with it as an integral
// constant.
template <class F>
void with_starts_group(int64_t blocks, F f) {
  static const int64_t sms = [] {
    int dev = 0, n = 132;
    if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return int64_t(n);
  }();
  const int forced = chunk_starts_group_setting().load();
  const bool small_grid = forced == kStartsGroupSmallGrid || (forced != kStartsGroupLargeGrid && blocks <= 2 * sms);
  if (small_grid) f(std::integral_constant<int, kStartsGroupSmallGrid>{});
  else f(std::integral_constant<int, kStartsGroupLargeGrid>{});
}

// Pass 2: the chunks' start states, chunks in order, one thread per state entry, or per 4 (V:
// 16-byte accesses, head_entries % 4 == 0, so that the 4 are of one head h; a 1.5B-Deep layer's
// 393K entries then fit one wave of blocks, where one entry a thread left the second half empty).
// chunk_states[c] holds chunk c's end state from zero and is overwritten by its start state;
// `state` (the state before the call) becomes the state after the last chunk.
template <bool V, int A>
__global__ void __launch_bounds__(kThreads, starts_min_blocks(A))
    ssm_chunk_starts_kernel(float* __restrict__ chunk_states, const float* __restrict__ decay, int chunks, int H,
                            int64_t head_entries, float* __restrict__ state) {
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
  const Vec s = chunk_starts<A, Vec, Vec>(
      load(state), chunks, H, h, decay, [&](int c) { return load(chunk_states + int64_t(c) * entries); },
      [](Vec v) { return v; }, [&](int c, Vec v) { store(chunk_states + int64_t(c) * entries, v); }, [] {});
  store(state, s);
}

// ssm_chunk_starts_kernel<true> over states stored as fp16 with a power of two a run of 128
// entries (FH1_CUDA_SSD_STATES16; cuda_ssd_wgmma.cuh says how): a warp's 32 x 4 entries are one
// such run, so the warp finds each start state's largest |value| and lane 0 writes its factor
// over the end state's (read one group ahead, before). The recurrence and `state` stay float32;
// the loads are held as they came (4 fp16 and the factor) until used.
struct Starts16Raw {
  uint2 v;
  float f;
};
template <int A>
__global__ void __launch_bounds__(kThreads, starts_min_blocks(A))
    ssm_chunk_starts16_kernel(__half* __restrict__ chunk_states, float* __restrict__ factors,
                              const float* __restrict__ decay, int chunks, int H, int64_t head_entries,
                              float* __restrict__ state) {
  FH1_PDL_ENTER();
  const int64_t entries = int64_t(H) * head_entries, units = entries / 4, runs = entries / 128;
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= units) return;  // whole warps: entries is a multiple of 128
  const int h = static_cast<int>(4 * e / head_entries);
  const int64_t run = e / 32;
  const auto load = [&](int c) {
    return Starts16Raw{reinterpret_cast<const uint2*>(chunk_states + int64_t(c) * entries)[e],
                       factors[int64_t(c) * runs + run]};
  };
  const auto widen = [](const Starts16Raw& r) {
    const float f = r.f;
    return map4(f16x4_to_float4(r.v), [f](float x) { return x * f; });
  };
  const auto store = [&](int c, float4 v) {
    store_f16_run(v, reinterpret_cast<uint2*>(chunk_states + int64_t(c) * entries) + (e & ~int64_t(31)),
                  factors + int64_t(c) * runs + run);
  };
  // Every lane's factors read before lane 0 overwrites them: a __syncwarp after each group of loads
  // (a group's loads come one group before its stores).
  st4(state, e, chunk_starts<A, float4, Starts16Raw>(ld4(state, e), chunks, H, h, decay, load, widen, store,
                                                     [] { __syncwarp(); }));
}

}  // namespace
}  // namespace fh1::cuda
