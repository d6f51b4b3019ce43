// The Mamba-2 scan on the GPU. One warp per (head h, row p of the head's P x N state): lane l
// keeps state entries n = l, l + 32, ... in registers and walks the tokens in order,
//   S[p, n] = exp(dt A) S[p, n] + dt x[p] B[n];   y[p] = sum_n S[p, n] C[n] + D x[p]
// with the sum over n reduced across the warp. For T == 1 this is the decode recurrence; for
// T > 1 it is the same recurrence over all tokens (the exact form the chunked SSD algorithm
// reorganizes; the CPU reference runs the chunked form and the tests compare the two). All
// float32; the state is read once and written once per call.
#include "kernels/cuda/cuda_ops.h"
#include "util/error.h"

namespace fh1::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;  // warps of one block: consecutive rows p of one head

__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// Tokens pass through shared memory TS at a time: B and C of the head's group, dt after
// softplus and clamp, and x of the block's rows, loaded once for all warps of the block.
template <int NPL, int TS>  // state entries per lane: N <= 32 * NPL; TS tokens per tile
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    ssm_scan_kernel(const float* __restrict__ x, const float* __restrict__ B, const float* __restrict__ C,
                    int64_t ld_xbc, const float* __restrict__ dt_raw, int64_t ld_dt, int64_t T, int H, int P, int N,
                    int heads_per_group, const float* __restrict__ A_, const float* __restrict__ D_,
                    const float* __restrict__ dt_bias, float dt_min, float dt_max, float* __restrict__ state,
                    float* __restrict__ y) {
  FH1_PDL_ENTER();
  __shared__ float Bs[TS * 32 * NPL], Cs[TS * 32 * NPL], dts[TS], xs[TS * kWarpsPerBlock],
      ys[TS * kWarpsPerBlock];
  const int blocks_per_head = (P + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int h = blockIdx.x / blocks_per_head;
  const int p0 = (blockIdx.x % blocks_per_head) * kWarpsPerBlock;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int p = p0 + warp;
  const bool row_ok = p < P;
  const int64_t g_off = int64_t(h / heads_per_group) * N;
  const float A = A_[h], Dh = D_[h], bias = dt_bias[h];
  const int64_t ldy = int64_t(H) * P;
  float* S = state + (int64_t(h) * P + (row_ok ? p : 0)) * N;

  float s[NPL];
#pragma unroll
  for (int i = 0; i < NPL; ++i) {
    const int n = lane + 32 * i;
    s[i] = (row_ok && n < N) ? S[n] : 0.0f;
  }
  const int NP = 32 * NPL;  // padded row of Bs / Cs
  for (int64_t t0 = 0; t0 < T; t0 += TS) {
    const int L = static_cast<int>(T - t0 < TS ? T - t0 : TS);
    __syncthreads();
    for (int e = threadIdx.x; e < TS * NP; e += blockDim.x) {
      const int r = e / NP, n = e - r * NP;
      const bool ok = r < L && n < N;
      const int64_t at = (t0 + r) * ld_xbc + g_off + n;
      Bs[e] = ok ? B[at] : 0.0f;
      Cs[e] = ok ? C[at] : 0.0f;
    }
    for (int e = threadIdx.x; e < TS * kWarpsPerBlock; e += blockDim.x) {
      const int r = e / kWarpsPerBlock, w = e - r * kWarpsPerBlock;
      xs[e] = (r < L && p0 + w < P) ? x[(t0 + r) * ld_xbc + int64_t(h) * P + p0 + w] : 0.0f;
    }
    for (int r = threadIdx.x; r < TS; r += blockDim.x)
      dts[r] = r < L ? fminf(fmaxf(softplus(dt_raw[(t0 + r) * ld_dt + h] + bias), dt_min), dt_max) : 0.0f;
    __syncthreads();
    // Four tokens at a time: the state updates stay in order, the four reductions over n
    // interleave (the same arithmetic per token as the loop below).
    int r = 0;
    for (; r + 4 <= L; r += 4) {
      float acc[4], xv[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const float dt = dts[r + u];
        xv[u] = xs[(r + u) * kWarpsPerBlock + warp];
        const float dA = expf(dt * A), dx = dt * xv[u];
        acc[u] = 0.0f;
#pragma unroll
        for (int i = 0; i < NPL; ++i) {
          s[i] = s[i] * dA + Bs[(r + u) * NP + lane + 32 * i] * dx;
          acc[u] += s[i] * Cs[(r + u) * NP + lane + 32 * i];
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int u = 0; u < 4; ++u) acc[u] += __shfl_xor_sync(0xffffffffu, acc[u], o);
      if (lane == 0)
#pragma unroll
        for (int u = 0; u < 4; ++u) ys[(r + u) * kWarpsPerBlock + warp] = acc[u] + Dh * xv[u];
    }
    for (; r < L; ++r) {
      const float dt = dts[r], xv = xs[r * kWarpsPerBlock + warp];
      const float dA = expf(dt * A), dx = dt * xv;
      float acc = 0.0f;
#pragma unroll
      for (int i = 0; i < NPL; ++i) {
        s[i] = s[i] * dA + Bs[r * NP + lane + 32 * i] * dx;
        acc += s[i] * Cs[r * NP + lane + 32 * i];
      }
      for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
      if (lane == 0) ys[r * kWarpsPerBlock + warp] = acc + Dh * xv;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < L * kWarpsPerBlock; e += blockDim.x) {
      const int r = e / kWarpsPerBlock, w = e - r * kWarpsPerBlock;
      if (p0 + w < P) y[(t0 + r) * ldy + int64_t(h) * P + p0 + w] = ys[e];
    }
  }
  if (row_ok) {
#pragma unroll
    for (int i = 0; i < NPL; ++i) {
      const int n = lane + 32 * i;
      if (n < N) S[n] = s[i];
    }
  }
}

template <int NPL>
void launch_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
            int64_t T, const SsmParams& p, float* state, float* y, cudaStream_t s) {
  constexpr int TS = NPL <= 4 ? 32 : 16;  // at most 32 KB of B and C tiles
  const unsigned blocks =
      static_cast<unsigned>(p.heads * ((p.head_dim + kWarpsPerBlock - 1) / kWarpsPerBlock));
  launch(ssm_scan_kernel<NPL, TS>, blocks, kWarpsPerBlock * 32, 0, s, 
      x, B, C, ld_xbc, dt_raw, ld_dt, T, p.heads, p.head_dim, p.d_state, p.heads / p.groups, p.A, p.D, p.dt_bias,
      p.dt_min, p.dt_max, state, y);
  check_launch("ssm_scan");
}

// Decode rows: sequence i = blockIdx.y has one token, row i of x / B / C / dt, state states[i].
// The same arithmetic as the kernel above for one token.
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    ssm_rows_kernel(const float* __restrict__ x, const float* __restrict__ B, const float* __restrict__ C,
                    int64_t ld_xbc, const float* __restrict__ dt_raw, int64_t ld_dt, int H, int P, int N,
                    int heads_per_group, const float* __restrict__ A_, const float* __restrict__ D_,
                    const float* __restrict__ dt_bias, float dt_min, float dt_max, float* const* states,
                    const float* __restrict__ z, int64_t ldz, float* __restrict__ y) {
  FH1_PDL_ENTER();
  const int64_t i = blockIdx.y;
  const int64_t row = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= int64_t(H) * P) return;
  const int h = static_cast<int>(row / P);
  const int64_t g_off = int64_t(h / heads_per_group) * N;
  const float dt = fminf(fmaxf(softplus(dt_raw[i * ld_dt + h] + dt_bias[h]), dt_min), dt_max);
  const float xv = x[i * ld_xbc + row];
  const float dA = expf(dt * A_[h]), dx = dt * xv;
  const float* Bi = B + i * ld_xbc + g_off;
  const float* Ci = C + i * ld_xbc + g_off;
  float* S = states[i] + row * N;
  float acc = 0.0f;
  for (int n = lane; n < N; n += 32) {
    const float v = S[n] * dA + Bi[n] * dx;
    S[n] = v;
    acc += v * Ci[n];
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) {
    const float v = acc + D_[h] * xv;
    y[i * int64_t(H) * P + row] = z ? v * silu(z[i * ldz + row]) : v;
  }
}

}  // namespace

void ssm_scan_rows(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
                   int64_t n, const SsmParams& p, float* const* states, float* y, cudaStream_t s) {
  ssm_scan_rows_gated(x, B, C, ld_xbc, dt_raw, ld_dt, n, p, states, nullptr, 0, y, s);
}

void ssm_scan_rows_gated(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw,
                         int64_t ld_dt, int64_t n, const SsmParams& p, float* const* states, const float* z,
                         int64_t ldz, float* y, cudaStream_t s) {
  if (n == 0 || p.heads == 0 || p.head_dim == 0) return;
  if (p.groups <= 0 || p.heads % p.groups != 0) throw Error("CUDA ssm_scan: heads must be a multiple of groups");
  const int64_t rows = int64_t(p.heads) * p.head_dim;
  const dim3 grid(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock), static_cast<unsigned>(n));
  launch(ssm_rows_kernel, grid, kWarpsPerBlock * 32, 0, s, x, B, C, ld_xbc, dt_raw, ld_dt, p.heads, p.head_dim, p.d_state,
                                                       p.heads / p.groups, p.A, p.D, p.dt_bias, p.dt_min, p.dt_max,
                                                       states, z, ldz, y);
  check_launch("ssm_scan_rows");
}

void ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
              int64_t T, const SsmParams& p, float* state, float* y, cudaStream_t s) {
  if (T == 0 || p.heads == 0 || p.head_dim == 0) return;
  if (p.groups <= 0 || p.heads % p.groups != 0) throw Error("CUDA ssm_scan: heads must be a multiple of groups");
  const int N = p.d_state;
  if (N <= 32) launch_scan<1>(x, B, C, ld_xbc, dt_raw, ld_dt, T, p, state, y, s);
  else if (N <= 64) launch_scan<2>(x, B, C, ld_xbc, dt_raw, ld_dt, T, p, state, y, s);
  else if (N <= 128) launch_scan<4>(x, B, C, ld_xbc, dt_raw, ld_dt, T, p, state, y, s);
  else if (N <= 256) launch_scan<8>(x, B, C, ld_xbc, dt_raw, ld_dt, T, p, state, y, s);
  else throw Error("CUDA ssm_scan: d_state " + std::to_string(N) + " > 256 is not supported");
}

}  // namespace fh1::cuda
