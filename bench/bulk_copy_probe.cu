// How fast one GPU streams memory into shared memory with cp.async.bulk (TMA, 1D) against plain
// 16-byte loads: the measurement behind docs/cuda.md's note on a bulk-copy decode GEMV. One block
// per SM; prints GB/s for
//   - one issuing thread per block, 16 KB slots filled by copies of 1..16 KB (the request rate
//     of the copy unit is the limit for small copies),
//   - each warp streaming its own range into its own ring (the shape a GEMV would use),
//   - plain __ldcs 16-byte loads over the same bytes.
// Build: part of the CUDA build (target bulk-copy-probe). Run: build-cuda/bulk-copy-probe
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

namespace {

__device__ __forceinline__ uint32_t smem(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void bar_init(uint64_t* b, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void bar_expect(uint64_t* b, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bar_arrive(uint64_t* b) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem(b)) : "memory");
}
__device__ __forceinline__ void bar_wait(uint64_t* b, unsigned parity) {
  asm volatile(
      "{\n\t.reg .pred P1;\nPROBE_WAIT:\n\tmbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n\t@!P1 bra "
      "PROBE_WAIT;\n}" ::"r"(smem(b)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void copy(void* dst, const void* src, unsigned bytes, uint64_t* b) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem(dst)),
               "l"(src), "r"(bytes), "r"(smem(b))
               : "memory");
}

constexpr int kSlot = 16384;

// Thread 0 of warp 8 fills `slots` slots of 16 KB with copies of `chunk` bytes; 8 warps read them.
__global__ void one_issuer(const unsigned char* src, size_t bytes, int chunk, int slots, float* sink) {
  extern __shared__ __align__(128) unsigned char ring[];
  __shared__ uint64_t full[8], empty[8];
  const size_t per = bytes / gridDim.x;
  const unsigned char* base = src + per * blockIdx.x;
  const long total = static_cast<long>(per / kSlot);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int i = 0; i < slots; ++i) bar_init(&full[i], 1), bar_init(&empty[i], 8);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (warp == 8) {
    if (lane != 0) return;
    for (long it = 0; it < total; ++it) {
      const int s = static_cast<int>(it % slots);
      if (it >= slots) bar_wait(&empty[s], static_cast<unsigned>((it / slots - 1) & 1));
      bar_expect(&full[s], kSlot);
      for (int c = 0; c < kSlot; c += chunk) copy(ring + s * kSlot + c, base + it * kSlot + c, chunk, &full[s]);
    }
    return;
  }
  float acc = 0.0f;
  for (long it = 0; it < total; ++it) {
    const int s = static_cast<int>(it % slots);
    bar_wait(&full[s], static_cast<unsigned>((it / slots) & 1));
    const uint4* p = reinterpret_cast<const uint4*>(ring + s * kSlot + warp * 2048);
    for (int u = lane; u < 128; u += 32) acc += __uint_as_float(p[u].x);
    __syncwarp();
    if (lane == 0) bar_arrive(&empty[s]);
  }
  if (acc == 1.2345f) *sink = acc;
}

// Every warp streams its own range into its own ring of `slots` pieces, refilling a slot after use.
__global__ void per_warp(const unsigned char* src, size_t bytes, int piece, int slots, float* sink) {
  extern __shared__ __align__(128) unsigned char ring[];
  __shared__ uint64_t full[16][8];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  const size_t per = bytes / gridDim.x / nw;
  const unsigned char* base = src + per * (size_t(blockIdx.x) * nw + warp);
  const long total = static_cast<long>(per / piece);
  unsigned char* mine = ring + size_t(warp) * slots * piece;
  if (lane == 0)
    for (int i = 0; i < slots; ++i) bar_init(&full[warp][i], 1);
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  __syncwarp();
  auto issue = [&](long q) {
    const int s = static_cast<int>(q % slots);
    bar_expect(&full[warp][s], piece);
    copy(mine + size_t(s) * piece, base + size_t(q) * piece, piece, &full[warp][s]);
  };
  if (lane == 0)
    for (long q = 0; q < slots && q < total; ++q) issue(q);
  float acc = 0.0f;
  for (long q = 0; q < total; ++q) {
    const int s = static_cast<int>(q % slots);
    bar_wait(&full[warp][s], static_cast<unsigned>((q / slots) & 1));
    const uint4* p = reinterpret_cast<const uint4*>(mine + size_t(s) * piece);
    for (int u = lane; u < piece / 16; u += 32) acc += __uint_as_float(p[u].x) * __uint_as_float(p[u].y);
    __syncwarp();
    if (lane == 0 && q + slots < total) {
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      issue(q + slots);
    }
  }
  if (acc == 1.2345f) *sink = acc;
}

__global__ void plain_loads(const uint4* src, size_t n, float* sink) {
  float acc = 0.0f;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    acc += __uint_as_float(__ldcs(src + i).x);
  if (acc == 1.2345f) *sink = acc;
}

template <typename Launch>
double best_gbs(size_t bytes, Launch&& run) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  float best = 1e30f;
  for (int r = 0; r < 5; ++r) {
    cudaEventRecord(a);
    run();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, a, b);
    best = ms < best ? ms : best;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) std::printf("  (error: %s)\n", cudaGetErrorString(e));
  return static_cast<double>(bytes) / best / 1e6;
}

}  // namespace

int main() {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess) {
    std::printf("bulk-copy-probe: no CUDA device\n");
    return 1;
  }
  const size_t bytes = size_t(sms) * 8 * kSlot * 64;
  unsigned char* d = nullptr;
  float* sink = nullptr;
  if (cudaMalloc(&d, bytes) != cudaSuccess || cudaMalloc(&sink, 4) != cudaSuccess) return 1;
  cudaMemset(d, 0, bytes);
  cudaFuncSetAttribute(one_issuer, cudaFuncAttributeMaxDynamicSharedMemorySize, 8 * kSlot);
  cudaFuncSetAttribute(per_warp, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
  std::printf("%.0f MB, one block per SM (%d SMs)\n", bytes / 1e6, sms);
  for (int slots : {4, 8})
    for (int chunk : {1024, 2048, 4096, 16384})
      std::printf("one issuer, %d slots of 16 KB, copies of %5d B: %5.0f GB/s\n", slots, chunk,
                  best_gbs(bytes, [&] { one_issuer<<<sms, 288, size_t(slots) * kSlot>>>(d, bytes, chunk, slots, sink); }));
  struct Case { int warps, piece, slots; };
  for (Case c : {Case{4, 8192, 3}, Case{4, 4096, 4}, Case{8, 8192, 3}, Case{2, 16384, 6}})
    std::printf("per-warp rings, %d warps x %d slots of %5d B: %5.0f GB/s\n", c.warps, c.slots, c.piece,
                best_gbs(bytes, [&] {
                  per_warp<<<sms, 32 * c.warps, size_t(c.warps) * c.slots * c.piece>>>(d, bytes, c.piece, c.slots, sink);
                }));
  for (int per_sm : {4, 8, 16})
    std::printf("plain 16-byte loads, %2d blocks of 256 per SM: %5.0f GB/s\n", per_sm,
                best_gbs(bytes, [&] { plain_loads<<<sms * per_sm, 256>>>(reinterpret_cast<const uint4*>(d), bytes / 16, sink); }));
  cudaFree(d);
  cudaFree(sink);
  return 0;
}
