// SIMD building blocks of the fast CPU backend (fast_kernels.cpp). Each is written once with
// Google Highway and compiled for several instruction sets (SSE4, AVX2, AVX-512, ...); the best
// one the running CPU supports is picked at the first call (dynamic dispatch), so one binary runs
// everywhere. None of these start threads: the backend splits the work over its ThreadPool and
// calls them on pieces. Arithmetic is float32 (bf16/f16 weights are widened exactly).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"

namespace fh1::simd {

// The instruction set the dispatcher picked on this CPU, e.g. "AVX3" (AVX-512) or "AVX2".
const char* target_name();
// Floats per vector register on that target (16 for AVX-512).
size_t float_lanes();

// ---- matrix products ----
// y[t, r] = x[t, :] . W[r, :] (+ bias[r]) for tokens t in [t0, t1) and weight rows r in [r0, r1);
// y has row stride ldy and is indexed by the absolute t and r. With four tokens or more, the rows
// are packed once (widened to f32, transposed into panels) into `scratch`, which must hold
// (r1 - r0 + 64) * W.cols floats, and reused by every token; with one to three tokens (or no
// scratch) the rows are streamed and widened on the fly (decode GEMV). Quantized rows are
// dequantized exactly to f32 (packed, or one row at a time without scratch).
void matmul_block(const float* x, int64_t ldx, int64_t t0, int64_t t1, const WeightView& W, int64_t r0, int64_t r1,
                  const float* bias, float* y, int64_t ldy, float* scratch);

// Decode GEMV over a block-quantized W (Q8_0, Q4_0, Q4_K) for T tokens whose activations were
// quantized by quant::quantize_activations (xq [T, K] int8, xd and xd_sum [T, K / 32]): y[t, r]
// for rows r in [r0, r1), in int8 dot products (AVX512-VNNI where the CPU has it).
void quant_gemv(const int8_t* xq, const float* xd, const float* xd_sum, int64_t T, const WeightView& W, int64_t r0,
                int64_t r1, const float* bias, float* y, int64_t ldy);
// The instruction set quant_gemv runs on here: "AVX512-VNNI", "AVX2" or "scalar".
const char* quant_dot_name();

// y[m, n] = x[m, :] . w[n, :] over K (f32 rows with strides ldx, ldw): scores of attention.
void dot_rows(const float* x, int64_t ldx, int64_t M, const float* w, int64_t ldw, int64_t N, int64_t K, float* y,
              int64_t ldy);

// Small dense GEMM for the scan and attention: C[m, n] (+)= sum_k A(m, k) * B[k * ldb + n],
// A(m, k) = A[m * lda_m + k * lda_k] (so A may be read transposed). With lower_triangular, A(m, k)
// must be 0 for k > m and those terms are skipped.
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda_m, int64_t lda_k, const float* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate, bool lower_triangular);

// ---- rows ----
// out = w * x / sqrt(mean(x^2) + eps) over one row of d.
void rmsnorm_row(const float* x, int64_t d, const float* w, float eps, float* out);
// Mamba's gated RMSNorm on one row (groups of d / groups channels).
void gated_rmsnorm_row(float* y, const float* z, int64_t d, int groups, const float* w, float eps,
                       bool norm_before_gate);
void scale(const float* x, size_t n, float s, float* out);              // out = x * s
void mul(float* x, const float* v, size_t n);                           // x *= v
void residual_add(float* h, const float* a, float s, size_t n);         // h += a * s
void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n);
void silu_mul(const float* gate, const float* up, float gate_scale, size_t n, float* out);  // up * silu(gate * gs)
void gate_silu(float* y, const float* z, size_t n);                     // y *= silu(z)
float exp_shifted_sum(float* x, size_t n, float shift);                 // x = exp(x - shift); returns sum(x)
float max_of(const float* x, size_t n);                                 // max(x), n >= 1
float sum_of(const float* x, size_t n);                                 // sum(x)
void scale_add(float* y, float a, const float* x, size_t n);            // y += a * x

// ---- Mamba-2 ----
// Depthwise causal conv + SiLU for channels [c0, c1): row i of the history is conv_state row i
// (i < K-1) or input row i-(K-1). wt is the weight transposed to [K, C]. Writes out [T, C] and
// then the new conv_state (the last K-1 history rows) for those channels.
void conv1d_silu_channels(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* wt,
                          const float* bias, float* conv_state, float* out, int64_t c0, int64_t c1);
// One decode step of one head: S[p, :] = S[p, :] * dA + (dt * x[p]) * B; y[p] = S[p, :] . C + Dh * x[p].
void ssm_step_head(float* S, int P, int N, const float* x, const float* B, const float* C, float dt, float dA,
                   float Dh, float* y);

// ---- memory ----
// Sum of n floats streamed once (the read kernel of the bandwidth measurement).
double stream_sum(const float* p, size_t n);
// dst = bf16 values widened to float32 (exact): KV caches kept in bf16.
void widen_bf16(const uint16_t* src, size_t n, float* dst);
// dst = q * scale for n int8 values: a block of an 8-bit KV cache row (quant/kv_q8.h).
void widen_q8(const int8_t* q, size_t n, float scale, float* dst);

}  // namespace fh1::simd
