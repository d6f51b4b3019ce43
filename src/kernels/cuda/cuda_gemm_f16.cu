// The prefill matmul in fp16: y = x W^T with x float32 and W bf16, as one fp16 tensor-core GEMM
// (float32 accumulate) instead of the two bf16 GEMMs of the hi + lo split.
//
// Why fp16 and not bf16: an activation rounded to fp16 keeps 11 bits (bf16 keeps 8), and a bf16
// weight is exact in fp16 once it is scaled into fp16's range. Both operands are scaled by powers
// of two, so the scaling itself is exact:
//   W: its largest |w| is brought into [2^14, 2^15) (the shift is computed once, at upload; the
//      backend keeps the fp16 copy where memory allows, else converts it for each call);
//   x: the same for the largest |x| of the call, found on the device (no host round trip);
//   y: alpha = 2^-(shift_x + shift_w), read by cuBLAS from device memory.
// A value more than 2^29 times smaller than its tensor's largest falls into fp16's subnormals and
// loses bits, which changes a dot product by at most ~2^-40 of the largest term. The shifts stay
// within +-63 (so that alpha is a normal float): tensors whose largest |value| lies outside
// [2^-49, 2^77] are scaled less than that and lose bits (or overflow) accordingly.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/cuda_f16_scale.cuh"
#include "kernels/cuda/cuda_gemm_lt.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_rows.cuh"
#include "util/error.h"

namespace fh1::cuda {
namespace {

// The reductions' grids are kept to kReduceBlocks blocks, so that few atomics meet at one address.
constexpr unsigned kReduceBlocks = 1024;

// *out = max(*out, bits of the largest |x|) over a T x K block with row stride ldx (a rows
// kernel, cuda_rows.cuh; V: 4 values at a time).
template <bool V>
__global__ void absmax_f32_kernel(const float* x, int64_t ldx, int64_t T, int64_t K, uint32_t* out) {
  FH1_PDL_ENTER();
  uint32_t m = 0;
  FH1_FOR_ROWS(t, T) FH1_FOR_UNITS(c, V ? K / 4 : K) {
    if constexpr (V) {
      m = max(m, abs_bits(ld4(x + t * ldx, c)));
    } else {
      m = max(m, abs_bits(x[t * ldx + c]));
    }
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

// out = fp16(x * 2^shift_x), densely [T, K] (a rows kernel; V: 4 values at a time).
template <bool V>
__global__ void f32_to_f16_scaled_kernel(const float* x, int64_t ldx, int64_t T, int64_t K, const uint32_t* max_bits,
                                         __half* out) {
  FH1_PDL_ENTER();
  const float scale = pow2(shift_for(*max_bits));
  FH1_FOR_ROWS(t, T) FH1_FOR_UNITS(c, V ? K / 4 : K) {
    if constexpr (V) {
      const float4 v = ld4(x + t * ldx, c);
      const __half2 a = __floats2half2_rn(v.x * scale, v.y * scale), b = __floats2half2_rn(v.z * scale, v.w * scale);
      reinterpret_cast<uint2*>(out + t * K)[c] =
          make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
    } else {
      out[t * K + c] = __float2half_rn(x[t * ldx + c] * scale);
    }
  }
}

// *alpha = x_scale * 2^-(shift_x + w_shift): the GEMM's output scale, read by cuBLAS from device
// memory (x_scale: the caller's multiplier of x, taken here instead of by a pass over x).
__global__ void f16_alpha_kernel(const uint32_t* max_bits, int w_shift, float x_scale, float* alpha) {
  FH1_PDL_ENTER();
  *alpha = x_scale * pow2(-(shift_for(*max_bits) + w_shift));
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

// The same two over W [N, K] with each row i multiplied by v[i] (one pass each, once a matrix:
// the division by K per element does not matter).
__global__ void absmax_bf16_rows_scaled_kernel(const uint16_t* w, int64_t N, int64_t K, const float* v, uint32_t* out) {
  FH1_PDL_ENTER();
  uint32_t m = 0;
  const size_t n = static_cast<size_t>(N * K);
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    m = max(m, abs_bits(__uint_as_float(static_cast<uint32_t>(w[i]) << 16) * v[i / K]));
  block_max_into(m, out);
}

__global__ void bf16_to_f16_rows_scaled_kernel(const uint16_t* w, int64_t N, int64_t K, const float* v, int shift,
                                               __half* out) {
  FH1_PDL_ENTER();
  const float scale = pow2(shift);
  const size_t n = static_cast<size_t>(N * K);
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    out[i] = __float2half_rn(__uint_as_float(static_cast<uint32_t>(w[i]) << 16) * v[i / K] * scale);
}

// The values of rows_to_f16's rows: float32 operands (RowsOp; BV: b's rows 16-byte aligned, else
// read a float at a time), 4 at a time.
template <RowsOp OP, bool BV>
struct F32Rows {
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float gs;
  __device__ __forceinline__ F32Rows bind() const { return *this; }
  __device__ __forceinline__ float4 operator()(int64_t t, int64_t i) const {
    if constexpr (OP == RowsOp::Copy) {
      return ld4(a + t * lda, i);
    } else {
      const float* br = b + t * ldb + 4 * i;
      const float4 bv = BV ? ld4(b + t * ldb, i) : make_float4(br[0], br[1], br[2], br[3]);
      // The expressions of silu_mul_kernel and gate_silu_kernel.
      if constexpr (OP == RowsOp::SiluMul)
        return map4(ld4(a + t * lda, i), bv, [g = gs](float g_, float u) { return u * silu(g_ * g); });
      else
        return map4(ld4(a + t * lda, i), bv, [](float y, float z) { return y * silu(z); });
    }
  }
};

// silu_mul's product of gate and up held in fp16 [T, K] (gemm_f16_out16's outputs): gate =
// gate16 * 2^(gate_exp - s), up = up16 * 2^(up_exp - s), s the shift of their input's max.
struct SiluMulF16Rows {
  const __half* gate16;
  const __half* up16;
  int64_t K;
  const uint32_t* max_bits;
  int gate_exp, up_exp;
  float gs;
  struct Bound {
    const __half* g;
    const __half* u;
    int64_t K;
    float fg, fu;
    __device__ __forceinline__ float4 operator()(int64_t t, int64_t i) const {
      const float4 gv = f16x4_to_float4(reinterpret_cast<const uint2*>(g + t * K)[i]),
                   uv = f16x4_to_float4(reinterpret_cast<const uint2*>(u + t * K)[i]);
      return map4(gv, uv, [this](float gg, float uu) { return (uu * fu) * silu(gg * fg); });
    }
  };
  __device__ __forceinline__ Bound bind() const {
    const int s = shift_for(*max_bits);
    return {gate16, up16, K, pow2(gate_exp - s) * gs, pow2(up_exp - s)};
  }
};

// The same 8 values a unit (16-byte loads of gate and up and stores of the product; K % 8 == 0
// and the rows 16-byte aligned): half the load instructions, the row's loads in flight twice
// the bytes (the MLP's product pass read ~2.1 TB/s with 8-byte loads, 1.5B-Deep 8K on an H100).
struct SiluMulF16Rows8 : SiluMulF16Rows {
  struct Bound : SiluMulF16Rows::Bound {
    static constexpr int kFloat4s = 2;
    __device__ __forceinline__ void operator()(int64_t t, int64_t i, float4 (&v)[2]) const {
      const uint4 gv = reinterpret_cast<const uint4*>(g + t * K)[i], uv = reinterpret_cast<const uint4*>(u + t * K)[i];
      const auto f = [this](float gg, float uu) { return (uu * fu) * silu(gg * fg); };
      v[0] = map4(f16x4_to_float4(make_uint2(gv.x, gv.y)), f16x4_to_float4(make_uint2(uv.x, uv.y)), f);
      v[1] = map4(f16x4_to_float4(make_uint2(gv.z, gv.w)), f16x4_to_float4(make_uint2(uv.z, uv.w)), f);
    }
  };
  __device__ __forceinline__ Bound bind() const { return {SiluMulF16Rows::bind()}; }
};

// SiluMulF16Rows8 where it fits, unless off (set_silu_mul_wide; FH1_CUDA_SILU_MUL_WIDE=0).
std::atomic<bool>& silu_mul_wide() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("FH1_CUDA_SILU_MUL_WIDE");
    return !(e && std::atoi(e) == 0);
  }()};
  return on;
}

// float4s a unit of a rows_to_f16 source: 1 (operator()(t, i) returns them) or kFloat4s.
template <class B, class = void>
struct RowsFloat4s : std::integral_constant<int, 1> {};
template <class B>
struct RowsFloat4s<B, std::void_t<decltype(B::kFloat4s)>> : std::integral_constant<int, B::kFloat4s> {};

// rows_to_f16 (cuda_ops.h): a block a row, its R units (of U float4s) a thread held in registers
// between the row's max and the fp16 stores, so the inputs are read once.
template <int R, class Src>
__global__ void rows_to_f16_kernel(Src src_, int64_t K, __half* x16, float* rows) {
  FH1_PDL_ENTER();
  const auto src = src_.bind();
  constexpr int U = RowsFloat4s<decltype(src)>::value;
  const int64_t t = blockIdx.x, nu = K / (4 * U);
  float4 v[R][U];
  uint32_t m = 0;
  // Predicated, not a loop exit: the row's loads issue together, not each after the last's max.
#pragma unroll
  for (int j = 0; j < R; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * blockDim.x;
    if constexpr (U == 1) {
      v[j][0] = i < nu ? src(t, i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    } else {
      if (i < nu) src(t, i, v[j]);
      else
#pragma unroll
        for (int k = 0; k < U; ++k) v[j][k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
#pragma unroll
  for (int j = 0; j < R; ++j)
#pragma unroll
    for (int k = 0; k < U; ++k) m = max(m, abs_bits(v[j][k]));
  __shared__ uint32_t part[32];
  for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = m;
  __syncthreads();
  m = 0;
  for (unsigned w = 0; w < (blockDim.x >> 5); ++w) m = max(m, part[w]);
  const int shift = shift_for(m);
  const float scale = pow2(shift);
  if (threadIdx.x == 0) rows[t] = pow2(-shift);
  const auto packed = [scale](float4 f) {
    const __half2 lo = __floats2half2_rn(f.x * scale, f.y * scale), hi = __floats2half2_rn(f.z * scale, f.w * scale);
    return make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
  };
#pragma unroll
  for (int j = 0; j < R; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * blockDim.x;
    if (i >= nu) break;
    if constexpr (U == 1) {
      reinterpret_cast<uint2*>(x16 + t * K)[i] = packed(v[j][0]);
    } else {
      const uint2 a = packed(v[j][0]), b = packed(v[j][1]);
      reinterpret_cast<uint4*>(x16 + t * K)[i] = make_uint4(a.x, a.y, b.x, b.y);
    }
  }
}

template <bool BIAS>
__global__ void scale_rows_kernel(float* y, int64_t T, int64_t N, const float* rows, const float* bias) {
  FH1_PDL_ENTER();
  FH1_FOR_ROWS(t, T) {
    const float r = rows[t];
    FH1_FOR_UNITS(c, N) y[t * N + c] = BIAS ? y[t * N + c] * r + bias[c] : y[t * N + c] * r;
  }
}

// rows_to_f16's launch: threads a block and float4s a thread for rows of K / 4 float4s (R = 0:
// too long a row).
struct RowsLaunch {
  unsigned threads;
  int R;
};
RowsLaunch rows_launch(int64_t K, int unit = 4) {
  const int64_t n = K / unit;
  unsigned threads = 128;
  while (threads < 512 && (n + threads - 1) / threads > 4) threads *= 2;
  const int64_t per = (n + threads - 1) / threads;
  int R = 1;
  while (R < per) R *= 2;
  return {threads, R <= 16 ? R : 0};
}

// Launches rows_to_f16_kernel over T rows of K values from src.
template <class Src>
void launch_rows_to_f16(const Src& src, int64_t T, int64_t K, uint16_t* x16, float* rows, cudaStream_t s,
                        int unit = 4) {
  const RowsLaunch l = rows_launch(K, unit);
  auto* out = reinterpret_cast<__half*>(x16);
  const auto go = [&](auto r) {
    launch(rows_to_f16_kernel<decltype(r)::value, Src>, static_cast<unsigned>(T), l.threads, 0, s, src, K, out, rows);
  };
  switch (l.R) {
    case 1: go(std::integral_constant<int, 1>{}); break;
    case 2: go(std::integral_constant<int, 2>{}); break;
    case 4: go(std::integral_constant<int, 4>{}); break;
    case 8: go(std::integral_constant<int, 8>{}); break;
    default: go(std::integral_constant<int, 16>{}); break;
  }
  check_launch("rows_to_f16");
}

}  // namespace

bool rows_to_f16_fits(RowsOp op, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K) {
  return K > 0 && rows_vec4(a, K, lda) && rows_launch(K).R > 0 && (op == RowsOp::Copy || (b && ldb >= K));
}

void rows_to_f16(RowsOp op, const float* a, int64_t lda, const float* b, int64_t ldb, float gs, int64_t T, int64_t K,
                 uint16_t* x16, float* rows, cudaStream_t s) {
  if (T == 0) return;
  if (!rows_to_f16_fits(op, a, lda, b, ldb, K) || reinterpret_cast<uintptr_t>(x16) % 8 != 0 ||
      T > (int64_t(1) << 31) - 1)
    throw Error("CUDA rows_to_f16: rows that do not fit (rows_to_f16_fits)");
  const bool bv = op == RowsOp::Copy || rows_vec4(b, K, ldb);
  if (op == RowsOp::Copy) launch_rows_to_f16(F32Rows<RowsOp::Copy, true>{a, lda, b, ldb, gs}, T, K, x16, rows, s);
  else if (op == RowsOp::SiluMul && bv)
    launch_rows_to_f16(F32Rows<RowsOp::SiluMul, true>{a, lda, b, ldb, gs}, T, K, x16, rows, s);
  else if (op == RowsOp::SiluMul)
    launch_rows_to_f16(F32Rows<RowsOp::SiluMul, false>{a, lda, b, ldb, gs}, T, K, x16, rows, s);
  else if (bv) launch_rows_to_f16(F32Rows<RowsOp::GateSilu, true>{a, lda, b, ldb, gs}, T, K, x16, rows, s);
  else launch_rows_to_f16(F32Rows<RowsOp::GateSilu, false>{a, lda, b, ldb, gs}, T, K, x16, rows, s);
}

bool silu_mul_f16_rows_fits(const uint16_t* gate16, const uint16_t* up16, int64_t K) {
  const auto at8 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 8 == 0; };
  return K > 0 && K % 4 == 0 && at8(gate16) && at8(up16) && rows_launch(K).R > 0;
}

void silu_mul_f16_rows(const uint16_t* gate16, const uint16_t* up16, int64_t T, int64_t K, const uint32_t* max_bits,
                       int gate_exp, int up_exp, float gs, uint16_t* x16, float* rows, cudaStream_t s) {
  if (T == 0) return;
  if (!silu_mul_f16_rows_fits(gate16, up16, K) || reinterpret_cast<uintptr_t>(x16) % 8 != 0 ||
      T > (int64_t(1) << 31) - 1)
    throw Error("CUDA silu_mul_f16_rows: rows that do not fit (silu_mul_f16_rows_fits)");
  const SiluMulF16Rows src{reinterpret_cast<const __half*>(gate16), reinterpret_cast<const __half*>(up16), K,
                           max_bits, gate_exp, up_exp, gs};
  const auto at16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (K % 8 == 0 && at16(gate16) && at16(up16) && at16(x16) && rows_launch(K, 8).R > 0 && silu_mul_wide().load())
    launch_rows_to_f16(SiluMulF16Rows8{src}, T, K, x16, rows, s, 8);
  else
    launch_rows_to_f16(src, T, K, x16, rows, s);
}

void scale_rows(float* y, int64_t T, int64_t N, const float* rows, const float* bias, cudaStream_t s) {
  if (T * N == 0) return;
  if (bias) launch_rows(scale_rows_kernel<true>, T, N, s, y, T, N, rows, bias);
  else launch_rows(scale_rows_kernel<false>, T, N, s, y, T, N, rows, bias);
  check_launch("scale_rows");
}

namespace {

// y[T, N] = alpha W x^T by cuBLAS's own choice of algorithm (W fp16 [N, K], x fp16 [T, K]; alpha
// and beta where the handle's pointer mode says; on the handle's stream, the caller's).
cublasStatus_t gemm_ex_f16(cublasHandle_t blas, const uint16_t* w16, int64_t N, int64_t K, const uint16_t* x16,
                           int64_t T, const float* alpha, const float* beta, void* y, cudaDataType_t y_type) {
  return cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(T), static_cast<int>(K),
                      alpha, w16, CUDA_R_16F, static_cast<int>(K), x16, CUDA_R_16F, static_cast<int>(K), beta, y,
                      y_type, static_cast<int>(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

// The GEMM on its shape's tuned cublasLt algorithm where tuning is on and has one
// (cuda_gemm_lt.h), else by_default (cublasGemmEx with cuBLAS's own choice).
template <class Default>
void tuned_or_default(const GemmRun& g, const uint16_t* w16, int64_t N, int64_t K, const uint16_t* x16, int64_t T,
                      void* y, bool y16, const float* alpha, bool alpha_on_device, cudaStream_t s,
                      const Default& by_default) {
  if (!g.algos || !g.algos->enabled() ||
      !g.algos->run(w16, N, K, x16, T, y, y16, alpha, alpha_on_device, g.ws, g.ws_bytes, s, by_default))
    by_default();
}

}  // namespace

void gemm_f16_rows(const GemmRun& g, const uint16_t* w16, int64_t N, int64_t K, int w_shift, const uint16_t* x16,
                   int64_t T, float* y, cudaStream_t s) {
  const float alpha = std::ldexp(1.0f, -w_shift), beta = 0.0f;
  const auto by_default = [&] {
    check_blas(gemm_ex_f16(g.blas, w16, N, K, x16, T, &alpha, &beta, y, CUDA_R_32F), "cublasGemmEx (f16 rows)");
  };
  tuned_or_default(g, w16, N, K, x16, T, y, false, &alpha, false, s, by_default);
}

void gemm_f16_out16(const GemmRun& g, const uint16_t* w16, int64_t N, int64_t K, int out_exp, const uint16_t* x16,
                    int64_t T, uint16_t* y16, cudaStream_t s) {
  const float alpha = std::ldexp(1.0f, -out_exp), beta = 0.0f;
  const auto by_default = [&] {
    check_blas(gemm_ex_f16(g.blas, w16, N, K, x16, T, &alpha, &beta, y16, CUDA_R_16F), "cublasGemmEx (f16 out)");
  };
  tuned_or_default(g, w16, N, K, x16, T, y16, true, &alpha, false, s, by_default);
}

// *out = max(*out, bits of max_n sum_k |W[n, k]|), a warp a row of the bf16 W [N, K] (the sums
// are not negative: their float bits order as they do).
__global__ void bf16_rows_l1_max_kernel(const uint16_t* w, int64_t N, int64_t K, uint32_t* out) {
  FH1_PDL_ENTER();
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
  for (int64_t n = blockIdx.x * int64_t(blockDim.x >> 5) + (threadIdx.x >> 5); n < N; n += warps) {
    float sum = 0.0f;
    for (int64_t k = lane; k < K; k += 32) sum += fabsf(__uint_as_float(static_cast<uint32_t>(w[n * K + k]) << 16));
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) atomicMax(out, __float_as_uint(sum));
  }
}

float bf16_rows_l1_max(const uint16_t* w, int64_t N, int64_t K, uint32_t* scratch, cudaStream_t s) {
  check(cudaMemsetAsync(scratch, 0, sizeof(uint32_t), s), "l1 max (memset)");
  if (N * K > 0) {
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((N + 7) / 8, 4096));
    launch(bf16_rows_l1_max_kernel, blocks, 256, 0, s, w, N, K, scratch);
    check_launch("bf16_rows_l1_max");
  }
  uint32_t bits = 0;
  check(cudaMemcpyAsync(&bits, scratch, sizeof bits, cudaMemcpyDeviceToHost, s), "l1 max (copy)");
  check(cudaStreamSynchronize(s), "l1 max");
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

int f16_shift_of_bf16_rows_scaled(const uint16_t* w, int64_t N, int64_t K, const float* v, uint32_t* scratch,
                                  cudaStream_t s) {
  check(cudaMemsetAsync(scratch, 0, sizeof(uint32_t), s), "f16 shift (memset)");
  const int64_t n = N * K;
  if (n > 0) {
    launch(absmax_bf16_rows_scaled_kernel, std::min(rows_grid(1, n).x, kReduceBlocks), kRowThreads, 0, s, w, N, K, v,
           scratch);
    check_launch("absmax_bf16_rows_scaled");
  }
  uint32_t bits = 0;
  check(cudaMemcpyAsync(&bits, scratch, sizeof bits, cudaMemcpyDeviceToHost, s), "f16 shift (copy)");
  check(cudaStreamSynchronize(s), "f16 shift");
  return shift_for(bits);
}

void bf16_to_f16_rows_scaled(const uint16_t* w, int64_t N, int64_t K, const float* v, int shift, uint16_t* out,
                             cudaStream_t s) {
  if (N * K == 0) return;
  launch(bf16_to_f16_rows_scaled_kernel, rows_grid(1, N * K), kRowThreads, 0, s, w, N, K, v, shift,
         reinterpret_cast<__half*>(out));
  check_launch("bf16_to_f16_rows_scaled");
}

int f16_shift_of_bf16(const uint16_t* w, size_t n, uint32_t* scratch, cudaStream_t s) {
  check(cudaMemsetAsync(scratch, 0, sizeof(uint32_t), s), "f16 shift (memset)");
  if (n > 0) {
    launch(absmax_bf16_kernel, std::min(rows_grid(1, static_cast<int64_t>(n)).x, kReduceBlocks), kRowThreads, 0, s, w,
           n, scratch);
    check_launch("absmax_bf16");
  }
  uint32_t bits = 0;
  check(cudaMemcpyAsync(&bits, scratch, sizeof bits, cudaMemcpyDeviceToHost, s), "f16 shift (copy)");
  check(cudaStreamSynchronize(s), "f16 shift");
  return shift_for(bits);
}

void bf16_to_f16_scaled(const uint16_t* w, size_t n, int shift, uint16_t* out, cudaStream_t s) {
  if (n == 0) return;
  const bool vec = reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const size_t n8 = vec ? n / 8 : 0;
  launch(bf16_to_f16_scaled_kernel, rows_grid(1, static_cast<int64_t>(n8 > 0 ? n8 : n)), kRowThreads, 0, s, w, n, n8,
         shift, reinterpret_cast<__half*>(out));
  check_launch("bf16_to_f16_scaled");
}

void gemm_f16(const GemmRun& g, const uint16_t* w16, int64_t N, int64_t K, int w_shift, const float* x, int64_t ldx,
              int64_t T, float x_scale, float* y, const F16Scratch& sc, bool x16_ready, bool max_ready,
              cudaStream_t s) {
  auto* bits = reinterpret_cast<uint32_t*>(sc.consts);
  if (!x16_ready) {
    const bool vec = rows_vec4(x, K, ldx) && reinterpret_cast<uintptr_t>(sc.x16) % 8 == 0;
    const int64_t units = vec ? K / 4 : K;
    if (!max_ready) {
      check(cudaMemsetAsync(sc.consts, 0, 3 * sizeof(float), s), "f16 gemm (memset)");
      dim3 g = rows_grid(T, units);  // the reduction's grid: at most kReduceBlocks blocks
      g.y = std::max(1u, std::min(g.y, kReduceBlocks / g.x));
      if (vec) launch(absmax_f32_kernel<true>, g, kRowThreads, 0, s, x, ldx, T, K, bits);
      else launch(absmax_f32_kernel<false>, g, kRowThreads, 0, s, x, ldx, T, K, bits);
      check_launch("absmax_f32");
    }
    auto* x16 = reinterpret_cast<__half*>(sc.x16);
    if (vec) launch_rows(f32_to_f16_scaled_kernel<true>, T, units, s, x, ldx, T, K, bits, x16);
    else launch_rows(f32_to_f16_scaled_kernel<false>, T, units, s, x, ldx, T, K, bits, x16);
    check_launch("f32_to_f16_scaled");
  }
  launch(f16_alpha_kernel, 1, 1, 0, s, bits, w_shift, x_scale, sc.consts + 1);
  check_launch("f16_alpha");
  // alpha (consts[1]) and beta (consts[2], zero) are read from device memory.
  const auto by_default = [&] {
    check_blas(cublasSetPointerMode(g.blas, CUBLAS_POINTER_MODE_DEVICE), "cublasSetPointerMode");
    const cublasStatus_t st = gemm_ex_f16(g.blas, w16, N, K, sc.x16, T, sc.consts + 1, sc.consts + 2, y, CUDA_R_32F);
    check_blas(cublasSetPointerMode(g.blas, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode");
    check_blas(st, "cublasGemmEx (f16)");
  };
  tuned_or_default(g, w16, N, K, sc.x16, T, y, false, sc.consts + 1, true, s, by_default);
}

void set_silu_mul_wide(bool on) { silu_mul_wide().store(on); }

}  // namespace fh1::cuda
