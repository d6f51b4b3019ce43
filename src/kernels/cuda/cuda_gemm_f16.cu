// The prefill matmul in fp16: y = x W^T with x float32 and W bf16, as one fp16 tensor-core GEMM
// (float32 accumulate) instead of the two bf16 GEMMs of the hi + lo split.
//
// Why fp16 and not bf16: an activation rounded to fp16 keeps 11 bits (bf16 keeps 8), and a bf16
// weight is exact in fp16 once it is scaled into fp16's range. Both operands are scaled by powers
// of two, so the scaling itself is exact:
//   W: its largest |w| is brought into [2^14, 2^15) (the shift is computed once, at upload);
//   x: the same for the largest |x| of the call, found on the device (no host round trip);
//   y: alpha = 2^-(shift_x + shift_w), read by cuBLAS from device memory.
// A value more than 2^29 times smaller than its tensor's largest falls into fp16's subnormals and
// loses bits, which changes a dot product by at most ~2^-40 of the largest term.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/cuda_ops.h"

namespace fh1::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTopExponent = 14;  // the largest |value| is scaled into [2^14, 2^15): fp16's max is 65504
constexpr int kMaxWeightShift = 100;  // |w shift| <= 100; x's shift then keeps 2^shift and alpha normal floats

inline unsigned blocks_for(size_t n) {
  const size_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65536 ? 65536 : b));
}

// The shift for a tensor whose largest |value| has float32 bits `bits` (0 when all are zero),
// within [lo, hi]. Inf or NaN: no scaling (they propagate as they would in float32).
__host__ __device__ inline int shift_for(uint32_t bits, int lo, int hi) {
  if (bits == 0 || bits >= 0x7f800000u) return 0;
  const int e = static_cast<int>(bits >> 23) - 127;  // floor(log2 |max|); subnormals count as -127
  const int s = kTopExponent - e;
  return s < lo ? lo : (s > hi ? hi : s);
}
// x's shift given W's: 2^sx and alpha = 2^-(sx + sw) both normal float32 numbers.
__device__ inline int x_shift_for(uint32_t bits, int sw) {
  return shift_for(bits, max(-126, -126 - sw), min(127, 126 - sw));
}

__device__ inline float pow2(int s) { return __uint_as_float(static_cast<uint32_t>(127 + s) << 23); }

// Block-wide max, then one atomic per block into *out (the grids of the reductions are kept to
// kReduceBlocks, so that few atomics meet at one address).
constexpr unsigned kReduceBlocks = 1024;
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

// *out = max(*out, bits of the largest |x|) over a T x K block with row stride ldx.
__global__ void absmax_f32_kernel(const float* x, int64_t ldx, int64_t T, int64_t K, uint32_t* out) {
  FH1_PDL_ENTER();
  uint32_t m = 0;
  const int64_t n = T * K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    m = max(m, __float_as_uint(x[ldx == K ? i : i / K * ldx + i % K]) & 0x7fffffffu);
  }
  block_max_into(m, out);
}

__global__ void absmax_bf16_kernel(const uint16_t* w, size_t n, uint32_t* out) {
  FH1_PDL_ENTER();
  uint32_t m = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    m = max(m, (static_cast<uint32_t>(w[i]) << 16) & 0x7fffffffu);
  block_max_into(m, out);
}

// out = fp16(x * 2^shift_x), densely [T, K]; block 0 writes alpha = 2^-(shift_x + w_shift).
__global__ void f32_to_f16_scaled_kernel(const float* x, int64_t ldx, int64_t T, int64_t K, const uint32_t* max_bits,
                                         int w_shift, __half* out, float* alpha) {
  FH1_PDL_ENTER();
  const int sx = x_shift_for(*max_bits, w_shift);
  if (blockIdx.x == 0 && threadIdx.x == 0) *alpha = pow2(-(sx + w_shift));
  const float scale = pow2(sx);
  const int64_t n = T * K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = __float2half_rn(x[ldx == K ? i : i / K * ldx + i % K] * scale);
  }
}

// out = fp16(w * 2^shift), 8 values a thread (16-byte loads and stores) when n8 > 0, then the
// rest one by one.
__global__ void bf16_to_f16_scaled_kernel(const uint16_t* w, size_t n, size_t n8, int shift, __half* out) {
  FH1_PDL_ENTER();
  const float scale = pow2(shift);
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n8; i += stride) {
    const uint4 v = reinterpret_cast<const uint4*>(w)[i];
    const uint32_t in[4] = {v.x, v.y, v.z, v.w};
    uint32_t res[4];
    for (int j = 0; j < 4; ++j) {
      const float a = __uint_as_float(in[j] << 16) * scale, b = __uint_as_float(in[j] & 0xffff0000u) * scale;
      const __half2 h = __floats2half2_rn(a, b);
      res[j] = *reinterpret_cast<const uint32_t*>(&h);
    }
    reinterpret_cast<uint4*>(out)[i] = make_uint4(res[0], res[1], res[2], res[3]);
  }
  for (size_t i = n8 * 8 + blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += stride)
    out[i] = __float2half_rn(__uint_as_float(static_cast<uint32_t>(w[i]) << 16) * scale);
}

}  // namespace

int f16_shift_of_bf16(const uint16_t* w, size_t n, uint32_t* scratch, cudaStream_t s) {
  check(cudaMemsetAsync(scratch, 0, sizeof(uint32_t), s), "f16 shift (memset)");
  if (n > 0) {
    launch(absmax_bf16_kernel, std::min(blocks_for(n), kReduceBlocks), kThreads, 0, s, w, n, scratch);
    check_launch("absmax_bf16");
  }
  uint32_t bits = 0;
  check(cudaMemcpyAsync(&bits, scratch, sizeof bits, cudaMemcpyDeviceToHost, s), "f16 shift (copy)");
  check(cudaStreamSynchronize(s), "f16 shift");
  return shift_for(bits, -kMaxWeightShift, kMaxWeightShift);
}

void gemm_f16(cublasHandle_t blas, const uint16_t* w, int64_t N, int64_t K, int w_shift, const float* x, int64_t ldx,
              int64_t T, float* y, const F16Scratch& sc, cudaStream_t s) {
  const size_t nw = static_cast<size_t>(N * K);
  const bool vec = reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(sc.w16) % 16 == 0;
  const size_t n8 = vec ? nw / 8 : 0;
  launch(bf16_to_f16_scaled_kernel, blocks_for(n8 > 0 ? n8 : nw), kThreads, 0, s, w, nw, n8, w_shift,
         reinterpret_cast<__half*>(sc.w16));
  check_launch("bf16_to_f16_scaled");
  check(cudaMemsetAsync(sc.consts, 0, 3 * sizeof(float), s), "f16 gemm (memset)");
  launch(absmax_f32_kernel, std::min(blocks_for(static_cast<size_t>(T * K)), kReduceBlocks), kThreads, 0, s, x, ldx, T, K,
         reinterpret_cast<uint32_t*>(sc.consts));
  check_launch("absmax_f32");
  launch(f32_to_f16_scaled_kernel, blocks_for(static_cast<size_t>(T * K)), kThreads, 0, s, x, ldx, T, K,
         reinterpret_cast<const uint32_t*>(sc.consts), w_shift, reinterpret_cast<__half*>(sc.x16), sc.consts + 1);
  check_launch("f32_to_f16_scaled");
  // alpha (consts[1]) and beta (consts[2], zero) are read from device memory.
  check_blas(cublasSetPointerMode(blas, CUBLAS_POINTER_MODE_DEVICE), "cublasSetPointerMode");
  const cublasStatus_t st =
      cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(T), static_cast<int>(K),
                   sc.consts + 1, sc.w16, CUDA_R_16F, static_cast<int>(K), sc.x16, CUDA_R_16F, static_cast<int>(K),
                   sc.consts + 2, y, CUDA_R_32F, static_cast<int>(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  check_blas(cublasSetPointerMode(blas, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode");
  check_blas(st, "cublasGemmEx (f16)");
}

}  // namespace fh1::cuda
