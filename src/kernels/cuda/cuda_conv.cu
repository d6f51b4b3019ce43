// The Mamba-2 causal conv1d + SiLU of the CUDA backend: a prompt's rows (conv1d_silu) and one row
// per sequence of a decode step (conv1d_silu_rows). Each computes what the CPU reference computes
// (src/kernels/cpu/reference_kernels.cpp), in float32, the taps summed in the same order.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_rows.cuh"

namespace fh1::cuda {
namespace {

// One thread per (row i, channel c): out from the K-1 state rows and the new input, then the
// state shifted by one row (reads precede writes). The weights and the state rows (the previous
// step's, not the kernel before's output) are read before the wait when K <= kConvHeld; only
// the new input after it.
constexpr int kConvHeld = 8;

__global__ void conv_rows_kernel(const float* in, int64_t ld_in, int64_t C, int K, const float* w, const float* bias,
                                 float* const* states, float* out) {
  const int64_t i = blockIdx.y;
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int S = K - 1;
  const bool held = K <= kConvHeld && c < C;
  float wv[kConvHeld], sv[kConvHeld];
  float acc = 0.0f;
  float* st = nullptr;
  if (held) {
    st = states[i];
    acc = bias ? bias[c] : 0.0f;
#pragma unroll
    for (int k = 0; k < kConvHeld; ++k) {
      wv[k] = k < K ? w[c * K + k] : 0.0f;
      sv[k] = k < S ? st[int64_t(k) * C + c] : 0.0f;
    }
  }
  FH1_PDL_ENTER();
  if (c >= C) return;
  const float xin = in[i * ld_in + c];
  if (held) {
#pragma unroll
    for (int k = 0; k < kConvHeld; ++k)
      if (k < K) acc += wv[k] * (k < S ? sv[k] : xin);
    out[i * C + c] = silu(acc);
#pragma unroll
    for (int k = 0; k < kConvHeld; ++k)
      if (k < S) st[int64_t(k) * C + c] = k + 1 < S ? sv[k + 1] : xin;
    return;
  }
  st = states[i];
  acc = bias ? bias[c] : 0.0f;
  for (int k = 0; k < K; ++k) acc += w[c * K + k] * (k < S ? st[int64_t(k) * C + c] : xin);
  out[i * C + c] = silu(acc);
  for (int k = 0; k < S; ++k) st[int64_t(k) * C + c] = k + 1 < S ? st[int64_t(k + 1) * C + c] : xin;
}


// One thread per (t, c): out[t, c] = silu(bias + sum_k w[c, k] * hist[t + k]), where hist is the
// K-1 state rows followed by the T new rows.
// (A rows kernel: V = 4 channels at a time.)
template <bool V>
__global__ void conv_out_kernel(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w,
                                const float* bias, const float* conv_state, float* out) {
  FH1_PDL_ENTER();
  const int S = K - 1;
  FH1_FOR_ROWS(t, T) FH1_FOR_UNITS(u, V ? C / 4 : C) {
    if constexpr (V) {
      const int64_t c = 4 * u;
      float acc[4];
      for (int j = 0; j < 4; ++j) acc[j] = bias ? bias[c + j] : 0.0f;
      for (int k = 0; k < K; ++k) {
        const int64_t r = t + k;  // row of hist
        const float4 v = r < S ? ld4(conv_state + r * C, u) : ld4(in + (r - S) * ld_in, u);
        acc[0] += w[(c + 0) * K + k] * v.x;
        acc[1] += w[(c + 1) * K + k] * v.y;
        acc[2] += w[(c + 2) * K + k] * v.z;
        acc[3] += w[(c + 3) * K + k] * v.w;
      }
      st4(out + t * C, u, make_float4(silu(acc[0]), silu(acc[1]), silu(acc[2]), silu(acc[3])));
    } else {
      const int64_t c = u;
      float acc = bias ? bias[c] : 0.0f;
      for (int k = 0; k < K; ++k) {
        const int64_t r = t + k;  // row of hist
        const float v = r < S ? conv_state[r * C + c] : in[(r - S) * ld_in + c];
        acc += w[c * K + k] * v;
      }
      out[t * C + c] = silu(acc);
    }
  }
}

// One thread per channel, rows in increasing order: new[s] = hist[T + s] (reads precede writes).
__global__ void conv_state_kernel(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, float* conv_state) {
  FH1_PDL_ENTER();
  const int S = K - 1;
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  for (int s = 0; s < S; ++s) {
    const int64_t r = T + s;
    conv_state[int64_t(s) * C + c] = r < S ? conv_state[r * C + c] : in[(r - S) * ld_in + c];
  }
}

// A prompt's conv with K taps: each thread 4 channels over a run of R rows, the K-1 rows before
// the run held in registers as it slides, so each input row and the weights are read once (the
// kernel above reads each row K times and the weights for every row: 158 us for 8K x 2048 on an
// H200, 0.85 TB/s). The taps are summed in the same order.
template <int K, int R>
__global__ void conv_window_kernel(const float* in, int64_t ld_in, int64_t T, int64_t C, const float* w,
                                   const float* bias, const float* conv_state, float* out) {
  FH1_PDL_ENTER();
  static_assert(K >= 2, "a window kernel needs state rows");
  constexpr int S = K - 1;
  const int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (u >= C / 4) return;
  const int64_t c = 4 * u;
  float wk[4][K], b[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    b[j] = bias ? bias[c + j] : 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) wk[j][k] = w[(c + j) * K + k];
  }
  for (int64_t t0 = int64_t(blockIdx.y) * R; t0 < T; t0 += int64_t(gridDim.y) * R) {
    float4 h[S];  // rows t0 .. t0 + S - 1 of hist (the state rows, then the input rows)
#pragma unroll
    for (int i = 0; i < S; ++i) {
      const int64_t r = t0 + i;
      h[i] = r < S ? ld4(conv_state + r * C, u) : ld4(in + (r - S) * ld_in, u);
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int64_t t = t0 + i;
      if (t >= T) break;
      const float4 v = ld4(in + t * ld_in, u);  // hist row t + S
      float a[4] = {b[0], b[1], b[2], b[3]};
#pragma unroll
      for (int k = 0; k < S; ++k) {
        a[0] += wk[0][k] * h[k].x;
        a[1] += wk[1][k] * h[k].y;
        a[2] += wk[2][k] * h[k].z;
        a[3] += wk[3][k] * h[k].w;
      }
      a[0] += wk[0][S] * v.x;
      a[1] += wk[1][S] * v.y;
      a[2] += wk[2][S] * v.z;
      a[3] += wk[3][S] * v.w;
#pragma unroll
      for (int k = 0; k + 1 < S; ++k) h[k] = h[k + 1];
      h[S - 1] = v;
      st4(out + t * C, u, make_float4(silu(a[0]), silu(a[1]), silu(a[2]), silu(a[3])));
    }
  }
}

// Every Falcon-H1 size has mamba_d_conv 4; other widths take conv_out_kernel.
constexpr int kWindowTaps = 4;

}  // namespace

void conv1d_silu_rows(const float* in, int64_t ld_in, int64_t n, int64_t C, int K, const float* w, const float* bias,
                      float* const* conv_states, float* out, cudaStream_t s) {
  if (n == 0 || C == 0) return;
  const dim3 grid(blocks_for(static_cast<size_t>(C)), static_cast<unsigned>(n));
  launch(conv_rows_kernel, grid, kThreads, 0, s, in, ld_in, C, K, w, bias, conv_states, out);
  check_launch("conv1d_silu_rows");
}

void conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w, const float* bias,
                 float* conv_state, float* out, cudaStream_t s) {
  if (T == 0 || C == 0) return;
  const bool vec = rows_vec4(in, C, ld_in) && rows_vec4(conv_state, C, C) && rows_vec4(out, C, C);
  if (vec && K == kWindowTaps) {
    constexpr int kRun = 16, kBlock = 128;
    const int64_t units = C / 4, runs = (T + kRun - 1) / kRun;
    const dim3 grid(static_cast<unsigned>((units + kBlock - 1) / kBlock), static_cast<unsigned>(std::min<int64_t>(runs, 65535)));
    launch(conv_window_kernel<kWindowTaps, kRun>, grid, kBlock, 0, s, in, ld_in, T, C, w, bias, conv_state, out);
  } else if (vec)
    launch_rows(conv_out_kernel<true>, T, C / 4, s, in, ld_in, T, C, K, w, bias, conv_state, out);
  else
    launch_rows(conv_out_kernel<false>, T, C, s, in, ld_in, T, C, K, w, bias, conv_state, out);
  check_launch("conv1d_silu");
  launch(conv_state_kernel, blocks_for(C), kThreads, 0, s, in, ld_in, T, C, K, conv_state);
  check_launch("conv1d_silu (state)");
}

}  // namespace fh1::cuda
