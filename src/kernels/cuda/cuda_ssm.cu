// The Mamba-2 scan on the GPU. One warp per (head h, row p of the head's P x N state): each lane
// keeps N / 32 state entries in registers (runs of 4, state_entry()) and walks the tokens in order,
//   S[p, n] = exp(dt A) S[p, n] + dt x[p] B[n];   y[p] = sum_n S[p, n] C[n] + D x[p]
// with the sum over n reduced across the warp. For T == 1 this is the decode recurrence.
//
// For T > 1 one pass over all tokens has only heads * P / 8 blocks, each walking all T tokens in
// order: on a long prompt most of the GPU waits (latency bound). The recurrence is linear in S,
// so the T tokens split into nc chunks that run at the same time, in three launches:
//   1. each chunk c runs the recurrence from a zero state over its tokens (no y) and writes its
//      end state E[c] and its decay a[c, h] = prod_t exp(dt_t A) to the scratch;
//   2. the chunks' start states, in order (one thread per state entry):
//        start[0] = S,  start[c + 1] = a[c] start[c] + E[c],  new S = a[nc-1] start[nc-1] + E[nc-1];
//   3. each chunk reruns the recurrence from start[c] over its tokens and writes y.
// Passes 1 and 3 are the kernel of the single pass with a chunk per blockIdx.y; nc = 1 is that
// single pass (state read, y written, state written in one launch). The chunked form differs
// from the sequential order only by the rounding at chunk boundaries; scan_plan() picks nc. (The
// CPU reference runs the chunked SSD form of the same recurrence; the tests compare the two.)
// All float32; the state is read once and written once per call.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_ops.h"
#include "util/error.h"

namespace fh1::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;    // warps of one block: consecutive rows p of one head
constexpr int kMinChunkTokens = 64;  // shorter chunks: the extra pass and the start states cost more than they save
constexpr int64_t kMaxChunks = 65535;  // gridDim.y

template <int NPL>
constexpr int kTileTokens = NPL <= 4 ? 32 : 16;  // at most 32 KB of B and C tiles

// The state entry n that lane holds in its i-th register: runs of 4 consecutive entries (2 or 1
// when NPL < 4), so that B and C are read from shared memory 16 bytes at a time and each
// quarter-warp's 16-byte reads cover 128 contiguous bytes (no bank conflicts). (Entries lane +
// 32 i took four times the shared-memory instructions: the scan of a 7B 8K-token prefill took
// 320 ms, 249 ms with runs of 4; FH1_CUDA_PROFILE on an H200.)
template <int NPL>
__device__ __forceinline__ int state_entry(int lane, int i) {
  constexpr int V = NPL >= 4 ? 4 : NPL;
  return V * lane + 32 * V * (i / V) + i % V;
}

__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// Chunk c = blockIdx.y: tokens [c * chunk_len, min(T, (c + 1) * chunk_len)), from the state at
// state_in + c * state_stride (zeros when state_in is null); the end state goes to state_out +
// c * state_stride when state_out is not null (state_in == state_out: in place). kWriteY: the
// chunk's y; else (pass 1) its decay prod_t exp(dt_t A) goes to decay_out[c * H + h] when
// decay_out is not null.
// Tokens pass through shared memory TS at a time: B (and C for y) of the head's group, dt after
// softplus and clamp, and x of the block's rows, loaded once for all warps of the block.
template <int NPL, int TS, bool kWriteY>  // state entries per lane: N <= 32 * NPL; TS tokens per tile
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    ssm_scan_kernel(const float* __restrict__ x, const float* __restrict__ B, const float* __restrict__ C,
                    int64_t ld_xbc, const float* __restrict__ dt_raw, int64_t ld_dt, int64_t T, int64_t chunk_len,
                    int H, int P, int N, int heads_per_group, const float* __restrict__ A_,
                    const float* __restrict__ D_, const float* __restrict__ dt_bias, float dt_min, float dt_max,
                    const float* state_in, float* state_out, int64_t state_stride, float* __restrict__ decay_out,
                    float* __restrict__ y) {
  FH1_PDL_ENTER();
  // Without y, the C tile and the staged y are not used (one float each).
  __shared__ __align__(16) float Bs[TS * 32 * NPL];
  __shared__ __align__(16) float Cs[kWriteY ? TS * 32 * NPL : 4];
  __shared__ float dts[TS], xs[TS * kWarpsPerBlock], ys[kWriteY ? TS * kWarpsPerBlock : 1];
  const int blocks_per_head = (P + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int h = blockIdx.x / blocks_per_head;
  const int p0 = (blockIdx.x % blocks_per_head) * kWarpsPerBlock;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int p = p0 + warp;
  const bool row_ok = p < P;
  const int64_t g_off = int64_t(h / heads_per_group) * N;
  const float A = A_[h], Dh = D_[h], bias = dt_bias[h];
  const int64_t ldy = int64_t(H) * P;
  const int64_t chunk = blockIdx.y;
  const int64_t t_begin = chunk * chunk_len, t_end = T - t_begin < chunk_len ? T : t_begin + chunk_len;
  const int64_t row_at = chunk * state_stride + (int64_t(h) * P + (row_ok ? p : 0)) * N;

  float s[NPL];
#pragma unroll
  for (int i = 0; i < NPL; ++i) {
    const int n = state_entry<NPL>(lane, i);
    s[i] = (state_in != nullptr && row_ok && n < N) ? state_in[row_at + n] : 0.0f;
  }
  float decay = 1.0f;  // pass 1: prod of exp(dt A) over the chunk's tokens
  constexpr int NP = 32 * NPL;  // padded row of Bs / Cs
  for (int64_t t0 = t_begin; t0 < t_end; t0 += TS) {
    const int L = static_cast<int>(t_end - t0 < TS ? t_end - t0 : TS);
    __syncthreads();
    for (int e = threadIdx.x; e < TS * NP; e += blockDim.x) {
      const int r = e / NP, n = e - r * NP;
      const bool ok = r < L && n < N;
      const int64_t at = (t0 + r) * ld_xbc + g_off + n;
      Bs[e] = ok ? B[at] : 0.0f;
      if constexpr (kWriteY) Cs[e] = ok ? C[at] : 0.0f;
    }
    for (int e = threadIdx.x; e < TS * kWarpsPerBlock; e += blockDim.x) {
      const int r = e / kWarpsPerBlock, w = e - r * kWarpsPerBlock;
      xs[e] = (r < L && p0 + w < P) ? x[(t0 + r) * ld_xbc + int64_t(h) * P + p0 + w] : 0.0f;
    }
    for (int r = threadIdx.x; r < TS; r += blockDim.x)
      dts[r] = r < L ? fminf(fmaxf(softplus(dt_raw[(t0 + r) * ld_dt + h] + bias), dt_min), dt_max) : 0.0f;
    __syncthreads();
    if constexpr (kWriteY) {
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
            s[i] = s[i] * dA + Bs[(r + u) * NP + state_entry<NPL>(lane, i)] * dx;
            acc[u] += s[i] * Cs[(r + u) * NP + state_entry<NPL>(lane, i)];
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
          s[i] = s[i] * dA + Bs[r * NP + state_entry<NPL>(lane, i)] * dx;
          acc += s[i] * Cs[r * NP + state_entry<NPL>(lane, i)];
        }
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) ys[r * kWarpsPerBlock + warp] = acc + Dh * xv;
      }
      __syncthreads();
      for (int e = threadIdx.x; e < L * kWarpsPerBlock; e += blockDim.x) {
        const int r = e / kWarpsPerBlock, w = e - r * kWarpsPerBlock;
        if (p0 + w < P) y[(t0 + r) * ldy + int64_t(h) * P + p0 + w] = ys[e];
      }
    } else {
      // The state alone (the same update as above) and the chunk's decay.
#pragma unroll 4
      for (int r = 0; r < L; ++r) {
        const float dt = dts[r];
        const float dA = expf(dt * A), dx = dt * xs[r * kWarpsPerBlock + warp];
        decay *= dA;
#pragma unroll
        for (int i = 0; i < NPL; ++i) s[i] = s[i] * dA + Bs[r * NP + state_entry<NPL>(lane, i)] * dx;
      }
    }
  }
  if (state_out != nullptr && row_ok) {
#pragma unroll
    for (int i = 0; i < NPL; ++i) {
      const int n = state_entry<NPL>(lane, i);
      if (n < N) state_out[row_at + n] = s[i];
    }
  }
  if (!kWriteY && decay_out != nullptr && p0 == 0 && threadIdx.x == 0) decay_out[chunk * H + h] = decay;
}

// Pass 2: the chunks' start states, one thread per state entry e (of head h), chunks in order.
// chunk_states[c] holds chunk c's end state from zero and is overwritten by its start state;
// `state` (the state before the call) becomes the state after the last chunk.
__global__ void ssm_chunk_starts_kernel(float* __restrict__ chunk_states, const float* __restrict__ decay,
                                        int chunks, int H, int64_t head_entries, float* __restrict__ state) {
  FH1_PDL_ENTER();
  const int64_t entries = int64_t(H) * head_entries;
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= entries) return;
  const int h = static_cast<int>(e / head_entries);
  float s = state[e];
  for (int c = 0; c < chunks; ++c) {
    float* at = chunk_states + c * entries + e;
    const float end = *at;
    *at = s;
    s = decay[int64_t(c) * H + h] * s + end;
  }
  state[e] = s;
}

// How many chunks (0: choose from the device). FH1_CUDA_SCAN_CHUNKS sets it at start.
std::atomic<int>& forced_scan_chunks() {
  static std::atomic<int> n{[] {
    const char* e = std::getenv("FH1_CUDA_SCAN_CHUNKS");
    return e ? std::max(0, std::atoi(e)) : 0;
  }()};
  return n;
}

// Blocks of the y pass (the larger kernel of the two) the current device holds at once: its SMs
// times the blocks one SM holds. Queried once per device (host-side calls only, no stream work).
template <int NPL>
int64_t resident_scan_blocks() {
  static std::mutex mu;
  static std::map<int, int64_t> by_device;
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  auto it = by_device.find(dev);
  if (it != by_device.end()) return it->second;
  int sms = 0, per_sm = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, ssm_scan_kernel<NPL, kTileTokens<NPL>, true>,
                                                      kWarpsPerBlock * 32, 0),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return by_device[dev] = int64_t(std::max(sms, 1)) * std::max(per_sm, 1);
}

struct ScanPlan {
  int chunks = 1;
  int64_t chunk_len = 0;  // tokens per chunk; the last chunk may have fewer
};

// nc: chunking adds a pass, so it pays only where the single pass leaves most of the device
// idle: when the single pass's heads * P / 8 blocks fill at most a quarter of what the device
// holds at once, nc is the most chunks that still run together in one wave (a second wave would
// not pay); otherwise nc = 1. At most T / 64 chunks. Measured on an H200 (132 SMs, 6 blocks per
// SM), 8K-token prefill: 0.5B (192 blocks) 199 -> 177 ms with 4 chunks; 7B (384 blocks) 768 ms
// with 1 chunk, 818 ms with 2, 783 ms with 16; so 7B, 3B and 34B keep the single pass.
template <int NPL>
ScanPlan scan_plan(int64_t T, const SsmParams& p) {
  const int forced = forced_scan_chunks().load();
  int64_t nc = forced;
  if (forced == 0) {
    const int64_t head_blocks =
        std::max<int64_t>(1, int64_t(p.heads) * ((p.head_dim + kWarpsPerBlock - 1) / kWarpsPerBlock));
    const int64_t resident = resident_scan_blocks<NPL>();
    nc = head_blocks * 4 <= resident ? std::min(resident / head_blocks, T / kMinChunkTokens) : 1;
  }
  nc = std::clamp<int64_t>(nc, 1, std::clamp<int64_t>(T, 1, kMaxChunks));
  ScanPlan plan;
  plan.chunk_len = (T + nc - 1) / nc;
  plan.chunks = static_cast<int>((T + plan.chunk_len - 1) / plan.chunk_len);  // no empty chunk
  return plan;
}

size_t scan_scratch_floats(const ScanPlan& plan, const SsmParams& p) {
  if (plan.chunks <= 1) return 0;
  // Per chunk: its state [H, P, N], then its decay per head.
  return size_t(plan.chunks) * (size_t(p.heads) * p.head_dim * p.d_state + size_t(p.heads));
}

// f(std::integral_constant<int, NPL>{}) with the state entries per lane that d_state N needs.
template <class F>
auto with_entries_per_lane(int N, F&& f) {
  if (N <= 32) return f(std::integral_constant<int, 1>{});
  if (N <= 64) return f(std::integral_constant<int, 2>{});
  if (N <= 128) return f(std::integral_constant<int, 4>{});
  if (N <= 256) return f(std::integral_constant<int, 8>{});
  throw Error("CUDA ssm_scan: d_state " + std::to_string(N) + " > 256 is not supported");
}

template <int NPL>
void launch_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
                 int64_t T, const SsmParams& p, float* state, float* y, float* scratch, size_t scratch_floats,
                 cudaStream_t s) {
  constexpr int TS = kTileTokens<NPL>;
  const ScanPlan plan = scan_plan<NPL>(T, p);
  const dim3 grid(static_cast<unsigned>(p.heads * ((p.head_dim + kWarpsPerBlock - 1) / kWarpsPerBlock)),
                  static_cast<unsigned>(plan.chunks));
  const auto pass = [&](auto kernel, const float* state_in, float* state_out, int64_t state_stride,
                        float* decay_out, float* y_out) {
    launch(kernel, grid, kWarpsPerBlock * 32, 0, s, x, B, C, ld_xbc, dt_raw, ld_dt, T, plan.chunk_len, p.heads,
           p.head_dim, p.d_state, p.heads / p.groups, p.A, p.D, p.dt_bias, p.dt_min, p.dt_max, state_in, state_out,
           state_stride, decay_out, y_out);
  };
  if (plan.chunks == 1) {
    pass(ssm_scan_kernel<NPL, TS, true>, state, state, 0, nullptr, y);
    check_launch("ssm_scan");
    return;
  }
  if (scratch == nullptr || scratch_floats < scan_scratch_floats(plan, p))
    throw Error("CUDA ssm_scan: " + std::to_string(plan.chunks) + " chunks need ssm_scan_scratch_floats() of scratch");
  const int64_t head_entries = int64_t(p.head_dim) * p.d_state, entries = p.heads * head_entries;
  float* chunk_states = scratch;                     // [nc, H, P, N]
  float* decay = scratch + plan.chunks * entries;  // [nc, H]
  pass(ssm_scan_kernel<NPL, TS, false>, nullptr, chunk_states, entries, decay, nullptr);
  constexpr int kThreads = 256;
  launch(ssm_chunk_starts_kernel, static_cast<unsigned>((entries + kThreads - 1) / kThreads), kThreads, 0, s,
         chunk_states, decay, plan.chunks, p.heads, head_entries, state);
  pass(ssm_scan_kernel<NPL, TS, true>, chunk_states, nullptr, entries, nullptr, y);
  check_launch("ssm_scan (chunks)");
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

size_t ssm_scan_scratch_floats(int64_t T, const SsmParams& p) {
  if (T <= 1 || p.heads == 0 || p.head_dim == 0) return 0;
  return with_entries_per_lane(p.d_state, [&](auto npl) {
    return scan_scratch_floats(scan_plan<decltype(npl)::value>(T, p), p);
  });
}

void set_scan_chunks(int chunks) { forced_scan_chunks().store(std::max(0, chunks)); }

void ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
              int64_t T, const SsmParams& p, float* state, float* y, float* scratch, size_t scratch_floats,
              cudaStream_t s) {
  if (T == 0 || p.heads == 0 || p.head_dim == 0) return;
  if (p.groups <= 0 || p.heads % p.groups != 0) throw Error("CUDA ssm_scan: heads must be a multiple of groups");
  with_entries_per_lane(p.d_state, [&](auto npl) {
    launch_scan<decltype(npl)::value>(x, B, C, ld_xbc, dt_raw, ld_dt, T, p, state, y, scratch, scratch_floats, s);
  });
}

}  // namespace fh1::cuda
