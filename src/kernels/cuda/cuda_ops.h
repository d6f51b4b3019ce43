// Launchers of the CUDA backend's device kernels (internal to src/kernels/cuda). Every pointer
// is device memory; every launcher queues work on `s` and checks the launch.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/kernels.h"

namespace fh1::cuda {

// Throws fh1::Error with the call's text and CUDA's message.
void check(cudaError_t e, const char* what);
#define FH1_CUDA(call) ::fh1::cuda::check((call), #call)
void check_launch(const char* what);

// Conversions and dense element-wise ops.
void f32_to_bf16(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* out, cudaStream_t s);
// Activations as two bf16 parts (hi + lo) for the split matmul; y = first T rows + last T rows.
void f32_to_bf16_split(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* hi, uint16_t* lo, cudaStream_t s);
void sum_halves(const float* y2, int64_t T, int64_t N, const float* bias, float* y, cudaStream_t s);
// y[T, N] = x[T, K] @ W^T (+ bias) for T <= kGemvRows, W bf16 [N, K], all else float32.
constexpr int64_t kGemvRows = 8;
void gemv_bf16(const uint16_t* W, int64_t N, int64_t K, const float* x, int64_t ldx, int64_t T, const float* bias,
               float* y, cudaStream_t s);
void f16_to_f32(const uint16_t* x, size_t n, float* out, cudaStream_t s);
void add_bias(float* y, int64_t T, int64_t N, const float* bias, cudaStream_t s);
void embed(const int32_t* ids, int64_t T, DType dt, const void* table, int64_t d, float scale, float* out,
           cudaStream_t s);
void rmsnorm(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out, cudaStream_t s);
void scale(const float* x, size_t n, float a, float* out, cudaStream_t s);
void mul_columns(float* x, int64_t T, int64_t d, const float* v, cudaStream_t s);
void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n, cudaStream_t s);
void silu_mul(const float* gate, const float* up, float gs, size_t n, float* out, cudaStream_t s);
void gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, cudaStream_t s);
void gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups, const float* w,
                   float eps, bool norm_before_gate, cudaStream_t s);
void rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* pos, const float* inv_freq,
          cudaStream_t s);
void fill_random_bf16(uint16_t* w, size_t n, float amplitude, uint64_t seed, cudaStream_t s);
void fill_random_f32(float* w, size_t n, float amplitude, uint64_t seed, cudaStream_t s);

// Mamba-2.
void conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w, const float* bias,
                 float* conv_state, float* out, cudaStream_t s);
void ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
              int64_t T, const SsmParams& p, float* state, float* y, cudaStream_t s);

// Attention. `scratch` must hold attention_scratch_floats(...) floats.
size_t attention_scratch_floats(int64_t T, int64_t n_past, int H, int hd);
void attention(const float* q, int64_t ldq, int64_t T, const float* k, const float* v, int64_t n_past, int H,
               int Hkv, int hd, float scale, float* out, float* scratch, cudaStream_t s);

}  // namespace fh1::cuda
