// The k best logits of each row, on the device (cuda_ops.h: top_k_rows): greedy decoding and
// top-k sampling then copy k (id, value) pairs per row to the host instead of the vocabulary.
// Also each row's softmax sum and draw (softmax_rows) and the penalties (lower_entries).
#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_ops.h"
#include "util/error.h"

namespace fh1::cuda {
namespace {

constexpr int kThreadsTop = 512;

// Floats as unsigned keys in the same order (larger float, larger key), -0 and +0 one key: they
// compare equal, so the lower index comes first, as on the host.
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = f == 0.0f ? 0u : __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// (key, index) a before b: larger key first, then the lower index.
__device__ __forceinline__ bool before(uint32_t ka, int32_t ia, uint32_t kb, int32_t ib) {
  return ka > kb || (ka == kb && ia < ib);
}

// k = 1: the first largest value of each row (as torch.argmax). A row is split over gridDim.x
// blocks of kArgmaxPerBlock values (one block could not keep enough loads in flight: a 7B row of
// 130K logits took it ~30 us); each block's best goes to part[] as one 64-bit key (value's order
// key above, ~index below: the larger value, then the lower index, is the larger key), and the
// block that finishes last (a per-row counter, left at zero again) reduces them.
constexpr int kThreadsArgmax = 256, kArgmaxLoads = 8, kArgmaxPerBlock = kThreadsArgmax * kArgmaxLoads;

__device__ __forceinline__ unsigned long long argmax_key(uint32_t key, int32_t i) {
  return (static_cast<unsigned long long>(key) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(i));
}

__device__ __forceinline__ unsigned long long block_max(unsigned long long v, unsigned long long* shared) {
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = shared[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) v = shared[w] > v ? shared[w] : v;
  return v;
}

__global__ void __launch_bounds__(kThreadsArgmax)
    argmax_rows_kernel(const float* x, int64_t n, int32_t* ids, float* vals, unsigned long long* part,
                       unsigned* count) {
  FH1_PDL_ENTER();
  __shared__ unsigned long long wbest[kThreadsArgmax / 32];
  __shared__ bool last;
  const int64_t r = blockIdx.y;
  const float* row = x + r * n;
  const int64_t base = int64_t(blockIdx.x) * kArgmaxPerBlock + threadIdx.x;
  float v[kArgmaxLoads];
#pragma unroll
  for (int j = 0; j < kArgmaxLoads; ++j) {  // all loads in flight before the first compare
    const int64_t i = base + j * kThreadsArgmax;
    v[j] = i < n ? row[i] : 0.0f;
  }
  unsigned long long best = 0;  // below every real key (the key of index i has ~i, never all ones)
#pragma unroll
  for (int j = 0; j < kArgmaxLoads; ++j) {
    const int64_t i = base + j * kThreadsArgmax;
    const unsigned long long k = argmax_key(order_key(v[j]), static_cast<int32_t>(i));
    if (i < n && k > best) best = k;
  }
  best = block_max(best, wbest);
  if (threadIdx.x == 0) {
    part[r * gridDim.x + blockIdx.x] = best;
    __threadfence();
    last = atomicAdd(&count[r], 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  best = 0;
  for (unsigned b = threadIdx.x; b < gridDim.x; b += blockDim.x) {
    const unsigned long long k = __ldcg(&part[r * gridDim.x + b]);
    best = k > best ? k : best;
  }
  __syncthreads();  // wbest is reused
  best = block_max(best, wbest);
  if (threadIdx.x == 0) {
    const int32_t i = static_cast<int32_t>(~static_cast<uint32_t>(best));
    ids[r] = i;
    vals[r] = row[i];
    count[r] = 0;
  }
}

// k = 2..kTopKMax: one block per row. The k-th largest key by a radix select (four passes of 8
// bits, a histogram of the keys that match the digits chosen so far), then every key above it
// and the first (lowest-index) keys equal to it as many as are missing, then a bitonic sort of
// those k by (key, index).
__global__ void __launch_bounds__(kThreadsTop) top_k_rows_kernel(const float* x, int64_t n, int k, int32_t* ids,
                                                                  float* vals) {
  FH1_PDL_ENTER();
  __shared__ uint32_t hist[256];
  __shared__ uint32_t ck[kTopKMax];
  __shared__ int32_t ci[kTopKMax];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining, s_above, s_base;
  __shared__ int warp_count[kThreadsTop / 32];
  const float* row = x + int64_t(blockIdx.x) * n;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  uint32_t prefix = 0, mask = 0;
  int remaining = k;  // how many of the keys matching prefix (on mask) are still to take
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int64_t i = tid; i < n; i += blockDim.x) {
      // Logits share their top bits: the lanes of a warp with the same digit add once together.
      const uint32_t key = order_key(row[i]);
      const bool match = (key & mask) == prefix;
      const uint32_t bin = match ? (key >> shift) & 255u : 0xffffffffu;
      const unsigned group = __match_any_sync(__activemask(), bin);
      if (match && lane == __ffs(group) - 1) atomicAdd(&hist[bin], static_cast<uint32_t>(__popc(group)));
    }
    __syncthreads();
    if (tid == 0) {
      int acc = 0, d = 255;
      for (; d > 0; --d) {
        if (acc + static_cast<int>(hist[d]) >= remaining) break;
        acc += static_cast<int>(hist[d]);
      }
      s_prefix = prefix | (uint32_t(d) << shift);
      s_remaining = remaining - acc;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
  }
  // prefix is now the k-th largest key: k - remaining keys are above it; take `remaining` of the
  // keys equal to it, the lowest indices first.
  const uint32_t thr = prefix;
  if (tid == 0) {
    s_above = 0;
    s_base = 0;
  }
  __syncthreads();
  for (int64_t i = tid; i < n; i += blockDim.x) {
    const uint32_t key = order_key(row[i]);
    if (key > thr) {
      const int at = atomicAdd(&s_above, 1);
      ck[at] = key;
      ci[at] = static_cast<int32_t>(i);
    }
  }
  __syncthreads();
  const int above = k - remaining;
  for (int64_t start = 0; start < n; start += blockDim.x) {
    const int64_t i = start + tid;
    const bool eq = i < n && order_key(row[i]) == thr;
    const unsigned ballot = __ballot_sync(0xffffffffu, eq);
    if (lane == 0) warp_count[warp] = __popc(ballot);
    __syncthreads();
    int before_me = s_base + __popc(ballot & ((1u << lane) - 1u));
    for (int w = 0; w < warp; ++w) before_me += warp_count[w];
    if (eq && before_me < remaining) {
      ck[above + before_me] = thr;
      ci[above + before_me] = static_cast<int32_t>(i);
    }
    __syncthreads();
    if (tid == 0)
      for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) s_base += warp_count[w];
    __syncthreads();
    if (s_base >= remaining) break;
  }
  // Bitonic sort of the k candidates (padded to a power of two), best first.
  int P = 1;
  while (P < k) P <<= 1;
  for (int i = k + tid; i < P; i += blockDim.x) {
    ck[i] = 0;
    ci[i] = INT32_MAX;
  }
  __syncthreads();
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = tid; t < P / 2; t += blockDim.x) {
        const int a = 2 * t - (t & (stride - 1)), b = a + stride;
        const bool first_half_desc = ((a & size) == 0);  // this run sorts best first
        const bool a_first = before(ck[a], ci[a], ck[b], ci[b]);
        if (a_first != first_half_desc) {
          const uint32_t tk = ck[a];
          ck[a] = ck[b];
          ck[b] = tk;
          const int32_t ti = ci[a];
          ci[a] = ci[b];
          ci[b] = ti;
        }
      }
      __syncthreads();
    }
  }
  for (int j = tid; j < k; j += blockDim.x) {
    ids[int64_t(blockIdx.x) * k + j] = ci[j];
    vals[int64_t(blockIdx.x) * k + j] = row[ci[j]];
  }
}

// softmax_draw() of each row (kernels.h), one block of kThreadsSoftmax per row: the maximum;
// then each warp sums the terms of its contiguous 1/32 of the row in double (lanes interleaved);
// the sum is those 32 partial sums in order; with u >= 0 the warp whose part holds u * sum walks it
// 32 terms at a time with a prefix sum. The terms are the host's; only the order of the sums
// differs (a draw can differ from the host's only when u * sum falls within rounding of a boundary).
constexpr int kThreadsSoftmax = 1024;
__global__ void __launch_bounds__(kThreadsSoftmax)
    softmax_rows_kernel(const float* x, int64_t n, const double* inv_ts, const double* us, double* sums,
                        int32_t* drawn) {
  FH1_PDL_ENTER();
  constexpr int kWarps = kThreadsSoftmax / 32;
  __shared__ float wmax[kWarps];
  __shared__ double wsum[kWarps];
  const int64_t r = blockIdx.x;
  const double inv_t = inv_ts[r], u = us[r];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (!(inv_t > 0.0)) {
    if (threadIdx.x == 0) {
      sums[r] = 0.0;
      drawn[r] = -1;
    }
    return;
  }
  const float* row = x + r * n;
  float mx = row[0];
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) mx = row[i] > mx ? row[i] : mx;
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, mx, o);
    mx = v > mx ? v : mx;
  }
  if (lane == 0) wmax[warp] = mx;
  __syncthreads();
  mx = wmax[0];
  for (int w = 1; w < kWarps; ++w) mx = wmax[w] > mx ? wmax[w] : mx;
  const double top = double(mx) * inv_t;
  const int64_t part = (n + kWarps - 1) / kWarps, lo = warp * part, hi = lo + part < n ? lo + part : n;
  double acc = 0.0;
  for (int64_t i = lo + lane; i < hi; i += 32) acc += exp(double(row[i]) * inv_t - top);
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) wsum[warp] = acc;
  __syncthreads();
  double sum = 0.0;
  for (int w = 0; w < kWarps; ++w) sum += wsum[w];
  if (threadIdx.x == 0) sums[r] = sum;
  if (!(u >= 0.0)) {
    if (threadIdx.x == 0) drawn[r] = -1;
    return;
  }
  // The warp whose part holds the target: the first whose running total passes it.
  const double target = u * sum;
  double before = 0.0;
  int hit = kWarps;
  for (int w = 0; w < kWarps; ++w) {
    if (before + wsum[w] > target) {
      hit = w;
      break;
    }
    before += wsum[w];
  }
  if (hit == kWarps) {  // rounding left no term: the last one, as the host
    if (threadIdx.x == 0) drawn[r] = static_cast<int32_t>(n - 1);
    return;
  }
  if (warp != hit) return;
  const int64_t hlo = hit * part, hhi = hlo + part < n ? hlo + part : n;
  double carry = before;
  for (int64_t i0 = hlo; i0 < hhi; i0 += 32) {
    const int64_t i = i0 + lane;
    const double e = i < hhi ? exp(double(row[i]) * inv_t - top) : 0.0;
    double incl = e;
    for (int o = 1; o < 32; o <<= 1) {
      const double v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const unsigned pass = __ballot_sync(0xffffffffu, i < hhi && carry + incl > target);
    if (pass) {
      if (lane == 0) drawn[r] = static_cast<int32_t>(i0 + __ffs(pass) - 1);
      return;
    }
    carry += __shfl_sync(0xffffffffu, incl, 31);
  }
  if (lane == 0) drawn[r] = static_cast<int32_t>(hhi - 1);  // rounding: the part's last term
}

// x[index[i]] -= amount[i], the value before into original[i] (the indices are distinct).
__global__ void lower_entries_kernel(float* x, int64_t count, const int64_t* index, const float* amount,
                                     float* original) {
  FH1_PDL_ENTER();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[index[i]];
    original[i] = v;
    x[index[i]] = v - amount[i];
  }
}

}  // namespace

int64_t top_k_partials(int64_t rows, int64_t n, int k) {
  return k == 1 ? rows * ((n + kArgmaxPerBlock - 1) / kArgmaxPerBlock) : 0;
}

void top_k_rows(const float* x, int64_t rows, int64_t n, int k, int32_t* ids, float* vals, TopKScratch scratch,
                cudaStream_t s) {
  if (rows == 0) return;
  if (k < 1 || k > kTopKMax || k > n || n > INT32_MAX)
    throw Error("CUDA top_k_rows: k = " + std::to_string(k) + " for rows of " + std::to_string(n) +
                " (1 <= k <= min(n, " + std::to_string(kTopKMax) + "))");
  if (k == 1) {
    const unsigned blocks = static_cast<unsigned>((n + kArgmaxPerBlock - 1) / kArgmaxPerBlock);
    for (int64_t r0 = 0; r0 < rows; r0 += 65535) {  // rows on the grid's y (at most 65535)
      const auto nr = static_cast<unsigned>(std::min<int64_t>(rows - r0, 65535));
      launch(argmax_rows_kernel, dim3(blocks, nr), kThreadsArgmax, 0, s, x + r0 * n, n, ids + r0, vals + r0,
             scratch.partials + r0 * blocks, scratch.counters + r0);
    }
  } else {
    launch(top_k_rows_kernel, static_cast<unsigned>(rows), kThreadsTop, 0, s, x, n, k, ids, vals);
  }
  check_launch("top_k_rows");
}

void lower_entries(float* x, int64_t count, const int64_t* index, const float* amount, float* original,
                   cudaStream_t s) {
  if (count <= 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((count + 255) / 256, 1024));
  launch(lower_entries_kernel, blocks, 256, 0, s, x, count, index, amount, original);
  check_launch("lower_entries");
}

void softmax_rows(const float* x, int64_t rows, int64_t n, const double* inv_t, const double* u, double* sums,
                  int32_t* drawn, cudaStream_t s) {
  if (rows == 0 || n <= 0) return;
  if (n > INT32_MAX) throw Error("CUDA softmax_rows: rows of " + std::to_string(n) + " values");
  launch(softmax_rows_kernel, static_cast<unsigned>(rows), kThreadsSoftmax, 0, s, x, n, inv_t, u, sums, drawn);
  check_launch("softmax_rows");
}

}  // namespace fh1::cuda
