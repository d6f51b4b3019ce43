// RoPE kernels of the CUDA backend: the rotation alone (decode steps, short prompts), a prompt's
// rotation once a row for all heads, and the rope + KV-cache write of a step or prompt (with
// the key multiplier folded in). Each computes what the CPU reference
// (src/kernels/cpu/reference_kernels.cpp) computes, in float32.
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_kv.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_rows.cuh"
#include "util/error.h"

namespace fh1::cuda {
namespace {

// One thread per (row, head, i < hd/2); the angle is a float32 product as in the reference, its
// cosine and sine taken in double and rounded.
__global__ void rope_kernel(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* pos,
                            const float* inv_freq) {
  FH1_PDL_ENTER();
  const int half = hd / 2;
  const int64_t n = T * heads * half;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(i % half);
    const int64_t th = i / half;
    const int h = static_cast<int>(th % heads);
    const int64_t t = th / heads;
    const float angle = static_cast<float>(pos[t]) * inv_freq[j];
    double sd, cd;
    sincos(static_cast<double>(angle), &sd, &cd);
    const float c = static_cast<float>(cd), s = static_cast<float>(sd);
    float* v = x + t * ld + int64_t(h) * hd;
    const float a = v[j], b = v[j + half];
    v[j] = a * c - b * s;
    v[j + half] = b * c + a * s;
  }
}

// A prompt's rope: one thread per (row, i < hd/2) for all of the row's heads, so each angle's
// cosine and sine (double, the slow part) are taken once a row instead of once a head; the
// arithmetic is rope_kernel's.
__global__ void rope_rows_kernel(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* pos,
                                 const float* inv_freq) {
  FH1_PDL_ENTER();
  const int half = hd / 2;
  const int64_t n = T * half;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(i % half);
    const int64_t t = i / half;
    const float angle = static_cast<float>(pos[t]) * inv_freq[j];
    double sd, cd;
    sincos(static_cast<double>(angle), &sd, &cd);
    const float c = static_cast<float>(cd), s = static_cast<float>(sd);
    float* v = x + t * ld + j;
#pragma unroll 4
    for (int h = 0; h < heads; ++h, v += hd) {
      const float a = v[0], b = v[half];
      v[0] = a * c - b * s;
      v[half] = b * c + a * s;
    }
  }
}

struct Q8Tag {};  // rope_kv_kernel's KV for 8-bit caches (hd % 64 == 0, width % 32 == 0: blocks of 32)

// Up to two tensors rotated at the same positions, each first multiplied by its `pre` (the key
// multiplier folded in): the arithmetic of scale_kernel then rope_kernel. Then, when kv_nparts >
// 0, the KV cache writes of kv_write_rows_kernel: a part whose rows are a rope part's (from_rope)
// stores each rotated value as it is computed, the others are copied after.
template <typename KV>
__global__ void rope_kv_kernel(RopeParts rp, int64_t T, int hd, const int64_t* pos, const float* inv_freq,
                               KvRowsParts kp, int kv_nparts, int64_t width) {
  const int half = hd / 2;
  const int64_t n0 = T * rp.part[0].heads * half;
  const int64_t n = n0 + (rp.nparts > 1 ? T * rp.part[1].heads * half : 0);
  // The thread's first angle (positions and frequencies: the step's arrays, not the kernel
  // before's output) before the wait: at a decode step that is its only one.
  const int64_t e_first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  float c_first = 1.0f, s_first = 0.0f;
  if (e_first < n) {
    const int64_t i = e_first >= n0 ? e_first - n0 : e_first;
    const int64_t t = (i / half) / rp.part[e_first >= n0 ? 1 : 0].heads;
    const float angle = static_cast<float>(pos[t]) * inv_freq[i % half];
    double sd, cd;
    sincos(static_cast<double>(angle), &sd, &cd);
    c_first = static_cast<float>(cd);
    s_first = static_cast<float>(sd);
  }
  FH1_PDL_ENTER();
  int64_t ncopy = 0;
  for (int p = 0; p < kv_nparts; ++p) ncopy += kp.part[p].from_rope < 0 ? T * width : 0;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n + ncopy;
       e += int64_t(gridDim.x) * blockDim.x) {
    if (e >= n) {  // a plain copy into the cache
      int64_t i = e - n;
      int p = 0;
      while (kp.part[p].from_rope >= 0 || i >= T * width) {
        if (kp.part[p].from_rope < 0) i -= T * width;
        ++p;
      }
      const KvRowsPart& K = kp.part[p];
      const int64_t t = i / width, c = i - t * width;
      if constexpr (std::is_same_v<KV, Q8Tag>)
        kv_q8_store(static_cast<uint8_t*>(K.caches[t]) + K.rows[t] * kv_q8_row_bytes_of(width), width, c,
                    K.src[t * width + c], true, 32);
      else
        kv_store(static_cast<KV*>(K.caches[t]) + K.rows[t] * width + c, K.src[t * width + c]);
      continue;
    }
    const int pi = e >= n0 ? 1 : 0;
    const RopePart& P = rp.part[pi];
    const int64_t i = pi ? e - n0 : e;
    const int j = static_cast<int>(i % half);
    const int64_t th = i / half;
    const int h = static_cast<int>(th % P.heads);
    const int64_t t = th / P.heads;
    float c = c_first, sn = s_first;
    if (e != e_first) {
      const float angle = static_cast<float>(pos[t]) * inv_freq[j];
      double sd, cd;
      sincos(static_cast<double>(angle), &sd, &cd);
      c = static_cast<float>(cd);
      sn = static_cast<float>(sd);
    }
    float* v = P.x + t * P.ld + int64_t(h) * hd;
    float a = v[j], b = v[j + half];
    if (P.scaled) {
      a = a * P.pre;
      b = b * P.pre;
    }
    const float ra = a * c - b * sn, rb = b * c + a * sn;
    v[j] = ra;
    v[j + half] = rb;
    for (int p = 0; p < kv_nparts; ++p)
      if (kp.part[p].from_rope == pi) {
        if constexpr (std::is_same_v<KV, Q8Tag>) {  // lanes: 32 consecutive j of one head
          uint8_t* row = static_cast<uint8_t*>(kp.part[p].caches[t]) + kp.part[p].rows[t] * kv_q8_row_bytes_of(width);
          kv_q8_store(row, width, int64_t(h) * hd + j, ra, true, 32);
          kv_q8_store(row, width, int64_t(h) * hd + j + half, rb, true, 32);
        } else {
          KV* dst = static_cast<KV*>(kp.part[p].caches[t]) + kp.part[p].rows[t] * width + int64_t(h) * hd;
          kv_store(dst + j, ra);
          kv_store(dst + j + half, rb);
        }
      }
  }
}

}  // namespace

void rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* pos, const float* inv_freq,
          cudaStream_t s) {
  const int half = hd / 2;
  if (T == 0 || half == 0) return;
  // Rows enough to fill the GPU one thread a (row, i): the angle once for all heads.
  if (T >= 256 && heads > 1)
    launch(rope_rows_kernel, blocks_for(T * half), kThreads, 0, s, x, ld, T, heads, hd, pos, inv_freq);
  else
    launch(rope_kernel, blocks_for(T * heads * half), kThreads, 0, s, x, ld, T, heads, hd, pos, inv_freq);
  check_launch("rope");
}

void rope_parts(const RopeParts& rp, int64_t T, int hd, const int64_t* pos, const float* inv_freq, cudaStream_t s) {
  rope_kv_parts(rp, T, hd, pos, inv_freq, KvRowsParts{}, 0, 0, KvType::F32, s);
}

void rope_kv_parts(const RopeParts& rp, int64_t T, int hd, const int64_t* pos, const float* inv_freq,
                   const KvRowsParts& kp, int kv_nparts, int64_t width, KvType kv, cudaStream_t s) {
  const int half = hd / 2;
  int64_t n = 0;
  for (int i = 0; i < rp.nparts; ++i) n += T * rp.part[i].heads * half;
  for (int p = 0; p < kv_nparts; ++p) {
    const int r = kp.part[p].from_rope;
    if (r >= rp.nparts || (r >= 0 && (rp.part[r].ld != width || int64_t(rp.part[r].heads) * hd != width)))
      throw Error("rope_kv_parts: a KV part's rows are not those of its rope part");
    if (r < 0) n += T * width;
  }
  if (n == 0) return;
  if (kv_nparts > 0 && kv == KvType::Q8 && !rope_kv_q8_ok(hd, width))
    throw Error("rope_kv_parts: 8-bit KV rows need a head size that is a multiple of 64");
  const unsigned blocks = blocks_for(static_cast<size_t>(n));
  if (kv_nparts > 0 && kv == KvType::Q8)
    launch(rope_kv_kernel<Q8Tag>, blocks, kThreads, 0, s, rp, T, hd, pos, inv_freq, kp, kv_nparts, width);
  else if (kv == KvType::BF16)
    launch(rope_kv_kernel<__nv_bfloat16>, blocks, kThreads, 0, s, rp, T, hd, pos, inv_freq, kp, kv_nparts, width);
  else
    launch(rope_kv_kernel<float>, blocks, kThreads, 0, s, rp, T, hd, pos, inv_freq, kp, kv_nparts, width);
  check_launch("rope (parts)");
}

}  // namespace fh1::cuda
