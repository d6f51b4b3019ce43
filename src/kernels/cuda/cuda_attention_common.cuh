// Internal to the CUDA attention kernels (cuda_attention.cu: decode and dispatch;
// cuda_attention_prefill.cu: prefill; cuda_attention_wgmma.cu: the fp16 prefill on Hopper's
// wgmma): shared constants, loads of KV cache values in either type and the flash kernels'
// softmax steps (the tensor-core building blocks are in cuda_mma.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/cuda_f16_scale.cuh"
#include "kernels/cuda/cuda_mma.cuh"

namespace fh1::cuda {

using bf16 = __nv_bfloat16;

// Prefill of one sequence (T > 8 queries, the decode kernels take fewer): the flash kernels on
// the tensor cores when `tensor_cores` (bf16 over bf16 caches with hd % 8 == 0 and hd <= 128,
// else TF32), or the float32 SIMT kernel.
void attention_prefill(const float* q, int64_t ldq, int64_t T, const float* k, const float* v, int64_t n_past, int H,
                       int Hkv, int hd, float scale, bool tensor_cores, float* out, cudaStream_t s);
// `scratch`: attention_prefill_scratch_bytes() bytes (the fp16 form of the caches), or null.
void attention_prefill(const float* q, int64_t ldq, int64_t T, const bf16* k, const bf16* v, int64_t n_past, int H,
                       int Hkv, int hd, float scale, bool tensor_cores, float* out, void* scratch, cudaStream_t s);
size_t attention_prefill_scratch_bytes(int64_t T, int64_t n_past, int Hkv, int hd);
// The fp16 prefill (attn_flash16_kernel's operands: the caches in fp16 scaled by 2^-shift of
// kv_max[0] / [1]) on Hopper's warpgroup MMA, where this device and build have it (sm_90a),
// the head size fits (32 < hd <= 128) and set_flash_wgmma() allows; false: nothing launched.
bool attention_prefill_wgmma(const float* q, int64_t ldq, int64_t T, const uint16_t* k16, const uint16_t* v16,
                             const uint32_t* kv_max, int64_t n_past, int H, int Hkv, int hd, float scale, float* out,
                             cudaStream_t s);

namespace {

constexpr int kMaxDecodeT = 8;  // at most this many queries: the decode (split-KV) kernels

// Loads of cache values as float32: one value, or 4 consecutive ones (16-byte aligned for
// float, 8-byte for bf16); the _cs forms stream (evict-first: each key is read once).
__device__ __forceinline__ float kv_ld(const float* p) { return *p; }
__device__ __forceinline__ float kv_ld(const bf16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float4 bf16x4_to_float4(uint2 u) {
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}
__device__ __forceinline__ float4 kv_ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 kv_ld4(const bf16* p) { return bf16x4_to_float4(*reinterpret_cast<const uint2*>(p)); }
__device__ __forceinline__ float4 kv_ld4_cs(const float* p) { return __ldcs(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ float4 kv_ld4_cs(const bf16* p) {
  return bf16x4_to_float4(__ldcs(reinterpret_cast<const uint2*>(p)));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace
// Causal mask of a tile of scores in the m16n8 accumulator layout (s[nt][0..1]: keys
// k0 + 8 nt + 2 c4 + {0, 1} for the row of one query, s[nt][2..3] for the row 8 further down):
// keys after a row's last visible key (last_lo, last_hi) get -inf.
template <int NT>
__device__ __forceinline__ void mask_keys_after(float (&s)[NT][4], int64_t k0, int c4, int64_t last_lo,
                                                int64_t last_hi) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int64_t key = k0 + nt * 8 + 2 * c4;
    if (key > last_lo) s[nt][0] = -INFINITY;
    if (key + 1 > last_lo) s[nt][1] = -INFINITY;
    if (key > last_hi) s[nt][2] = -INFINITY;
    if (key + 1 > last_hi) s[nt][3] = -INFINITY;
  }
}

// The two rows' maxima over a tile of scores and the running maxima m, across the 4 lanes that
// share the rows.
template <int NT>
__device__ __forceinline__ void tile_row_max(const float (&s)[NT][4], const float (&m)[2], float (&mx)[2]) {
  mx[0] = m[0];
  mx[1] = m[1];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
    mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
  }
}

// The output accumulator's two rows times corr[0] / corr[1].
template <int NO>
__device__ __forceinline__ void rescale_rows(float (&o)[NO][4], const float (&corr)[2]) {
#pragma unroll
  for (int i = 0; i < NO; ++i) {
    o[i][0] *= corr[0];
    o[i][1] *= corr[0];
    o[i][2] *= corr[1];
    o[i][3] *= corr[1];
  }
}

// One online-softmax step over such a tile (scores already in log2 units): the two rows' running
// maxima (mrow) and sums (lrow) and the output accumulator o rescaled to the new maxima; mx gets
// the maxima to subtract before exp2 (0 for a row with no key yet, so -inf scores give 0, not NaN).
template <int NT, int NO>
__device__ __forceinline__ void online_softmax_step(const float (&s)[NT][4], float (&mrow)[2], float (&lrow)[2],
                                                    float (&o)[NO][4], float (&mx)[2]) {
  tile_row_max(s, mrow, mx);
  float corr[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float mu = mx[r] == -INFINITY ? 0.0f : mx[r];
    corr[r] = exp2f(mrow[r] - mu);
    mrow[r] = mx[r];
    mx[r] = mu;
    lrow[r] *= corr[r];
  }
  rescale_rows(o, corr);
}

// The end of a split-KV decode warp (attn_decode_mma_kernel, attn_decode_q8_kernel; one warp a
// block): each row's sum over its quad's lanes, then the partial result attn_merge_kernel
// combines: (max in natural-log units, sum) into ml and the unnormalized accumulators into pacc.
// Tile row gq + 8 r is query head row % G of the KV group for query row / G (in rows mode,
// sequence z's one query); rows from nrows on pad the tile and write nothing.
template <int HDP>
__device__ __forceinline__ void store_decode_partial(const float (&o)[HDP / 8][4], const float (&mrow)[2],
                                                     float (&lrow)[2], int nrows, bool rows, int64_t z, int H, int G,
                                                     int kvh, int nsplit, int split, int hd, float* __restrict__ ml,
                                                     float* __restrict__ pacc) {
  const int lane = threadIdx.x & 31, gq = lane >> 2, c4 = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
  }
  constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = gq + 8 * r;
    if (row >= nrows) continue;
    const int64_t qrow = rows ? z : row / G;
    const int64_t idx = (qrow * H + kvh * G + row % G) * nsplit + split;
    if (c4 == 0) {
      ml[2 * idx] = mrow[r] == -INFINITY ? -FLT_MAX : mrow[r] * kLn2;
      ml[2 * idx + 1] = lrow[r];
    }
    float* pr = pacc + idx * hd;
#pragma unroll
    for (int i = 0; i < HDP / 8; ++i) {
      const int d = i * 8 + 2 * c4;
      if (d < hd) pr[d] = o[i][2 * r];
      if (d + 1 < hd) pr[d + 1] = o[i][2 * r + 1];
    }
  }
}

// The probabilities of 16 keys (the score tiles s0, s1 of one k16 step) as the A operand of a
// bf16 MMA: exp2(s - mx), added to the rows' sums; pa their bf16 values, pl (LO) what bf16
// rounding left out (p = pa + pl to ~16 bits).
template <bool LO>
__device__ __forceinline__ void probs_bf16(const float (&s0)[4], const float (&s1)[4], const float (&mx)[2],
                                           float (&lrow)[2], uint32_t (&pa)[4], uint32_t (&pl)[4]) {
  const float p00 = exp2f(s0[0] - mx[0]), p01 = exp2f(s0[1] - mx[0]);
  const float p02 = exp2f(s0[2] - mx[1]), p03 = exp2f(s0[3] - mx[1]);
  const float p10 = exp2f(s1[0] - mx[0]), p11 = exp2f(s1[1] - mx[0]);
  const float p12 = exp2f(s1[2] - mx[1]), p13 = exp2f(s1[3] - mx[1]);
  lrow[0] += p00 + p01 + p10 + p11;
  lrow[1] += p02 + p03 + p12 + p13;
  pa[0] = pack_bf16x2(p00, p01);
  pa[1] = pack_bf16x2(p02, p03);
  pa[2] = pack_bf16x2(p10, p11);
  pa[3] = pack_bf16x2(p12, p13);
  if constexpr (LO) {
    auto lo = [](uint32_t hi, float a, float b) {
      return pack_bf16x2(a - __uint_as_float(hi << 16), b - __uint_as_float(hi & 0xffff0000u));
    };
    pl[0] = lo(pa[0], p00, p01);
    pl[1] = lo(pa[1], p02, p03);
    pl[2] = lo(pa[2], p10, p11);
    pl[3] = lo(pa[3], p12, p13);
  }
}

// The end of a flash kernel's warp: the rows' sums over the 4 lanes that share them, and the
// rows t_lo and t_hi (when < T) of the output head h divided by them.
template <int NO>
__device__ __forceinline__ void store_rows(const float (&o)[NO][4], float (&lrow)[2], float* out, int64_t ldo,
                                           int h, int hd, int64_t t_lo, int64_t t_hi, int64_t T, int c4) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t t = r == 0 ? t_lo : t_hi;
    if (t >= T) continue;
    const float inv = 1.0f / lrow[r];
    float* orow = out + t * ldo + int64_t(h) * hd;
#pragma unroll
    for (int i = 0; i < NO; ++i) {
      const int d = i * 8 + 2 * c4;
      if (d < hd) orow[d] = o[i][2 * r] * inv;
      if (d + 1 < hd) orow[d + 1] = o[i][2 * r + 1] * inv;
    }
  }
}

namespace {
// exp2 without the subnormal handling of exp2f (one MUFU.EX2): a result below 2^-126 is 0.
__device__ __forceinline__ float ex2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// 2^x on the FMA and integer pipes instead of the MUFU unit that ex2 runs on, which does 16 a
// cycle per SM, an eighth of the FMA pipe's rate (FlashAttention-4 moves some of its exponentials
// so): x = j + f with j an integer and f in [-0.5, 0.5], 2^f by a degree-4 polynomial (relative
// error 2.7e-6, fit to 2^f on that range), j added to the exponent. x below -125 gives 2^-125
// (ex2_ftz: 0 below -126); for the probabilities, whose fp16 holds neither, the two are the same.
__device__ __forceinline__ float ex2_fma(float x) {
  x = fmaxf(x, -125.0f);
  const float t = x + 12582912.0f;  // 1.5 * 2^23: x rounded to an integer, in t's low mantissa bits
  const float f = x - (t - 12582912.0f);
  float p = fmaf(f, 0.009570098f, 0.055917859f);
  p = fmaf(p, f, 0.24024744f);
  p = fmaf(p, f, 0.69312179f);
  p = fmaf(p, f, 0.99999928f);
  // t's bits are 0x4B400000 + j: shifted by 23 only j's low bits stay, j * 2^23 modulo 2^32.
  return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}

// The fp16 kernel's online-softmax step on raw scores: the rows' true log2 scores are s * mul
// (powers of two, so the products are exact), the running maxima stay raw, and off gets what
// exp2 of the probabilities adds to s * mul: 15 - max * mul (the probabilities times 2^15).
// o is rescaled only when a row's maximum moved (multiplying by 1 changes nothing). Against
// scaling the scores first, exp2f and rescaling every tile: 7B prefill 1.4 % faster at 8K, 3.3 %
// at 128K (H200, one call).
template <int NT, int NO>
__device__ __forceinline__ void online_softmax_step_scaled(const float (&s)[NT][4], const float (&mul)[2],
                                                           float (&mrow)[2], float (&lrow)[2], float (&o)[NO][4],
                                                           float (&off)[2]) {
  float mx[2];
  tile_row_max(s, mrow, mx);
  float corr[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float mu = mx[r] == -INFINITY ? 0.0f : mx[r];
    const float d = (mrow[r] - mu) * mul[r];
    corr[r] = ex2_ftz(d);
    mrow[r] = mx[r];
    off[r] = fmaf(-mu, mul[r], 15.0f);
    lrow[r] *= corr[r];
  }
  if (!__any_sync(0xffffffffu, corr[0] != 1.0f || corr[1] != 1.0f)) return;
  rescale_rows(o, corr);
}

// One probability's exp2: on the FMA pipe or the MUFU unit.
template <bool FMA>
__device__ __forceinline__ float exp2_prob(float x) {
  if constexpr (FMA) return ex2_fma(x);
  else return ex2_ftz(x);
}

// The probabilities of 16 keys for the fp16 MMA: exp2(s * mul + off) (see above); SOFT of the 8
// a thread takes by ex2_fma (alternating between its two rows), the rest by ex2_ftz.
template <int SOFT = 0>
__device__ __forceinline__ void probs_f16_scaled(const float (&s0)[4], const float (&s1)[4], const float (&mul)[2],
                                                 const float (&off)[2], float (&lrow)[2], uint32_t (&pa)[4]) {
  static_assert(SOFT >= 0 && SOFT <= 8, "8 exponentials a call");
  const float p00 = exp2_prob<(SOFT > 0)>(fmaf(s0[0], mul[0], off[0]));
  const float p01 = exp2_prob<(SOFT > 4)>(fmaf(s0[1], mul[0], off[0]));
  const float p02 = exp2_prob<(SOFT > 1)>(fmaf(s0[2], mul[1], off[1]));
  const float p03 = exp2_prob<(SOFT > 5)>(fmaf(s0[3], mul[1], off[1]));
  const float p10 = exp2_prob<(SOFT > 2)>(fmaf(s1[0], mul[0], off[0]));
  const float p11 = exp2_prob<(SOFT > 6)>(fmaf(s1[1], mul[0], off[0]));
  const float p12 = exp2_prob<(SOFT > 3)>(fmaf(s1[2], mul[1], off[1]));
  const float p13 = exp2_prob<(SOFT > 7)>(fmaf(s1[3], mul[1], off[1]));
  lrow[0] += p00 + p01 + p10 + p11;
  lrow[1] += p02 + p03 + p12 + p13;
  pa[0] = pack_f16x2(p00, p01);
  pa[1] = pack_f16x2(p02, p03);
  pa[2] = pack_f16x2(p10, p11);
  pa[3] = pack_f16x2(p12, p13);
}


// The fp16 prefill kernels' query rows: one warp's 16 rows from t0 (zeros past T and hd), times
// qscale and then the power of two that brings each row's largest |value| into [2^14, 2^15),
// handed to store(row 0..15, dim d (even, < HDP), the fp16 pair's bits). s_mul gets the factors
// that undo both scalings for rows gq and gq + 8, times 2^sk (the keys' own scale).
template <int HDP, typename Store>
__device__ __forceinline__ void stage_q_rows_f16(const float* q, int64_t ldq, int64_t t0, int64_t T, int h, int hd,
                                                 float qscale, int sk, int lane, int gq, float (&s_mul)[2],
                                                 Store store) {
  constexpr int QP = (HDP / 2 + 31) / 32;  // pairs of values per lane and row
  for (int r = 0; r < 16; ++r) {
    const int64_t t = t0 + r;
    const float* qr = q + t * ldq + int64_t(h) * hd;
    float2 v[QP];
    float m = 0.0f;
#pragma unroll
    for (int i = 0; i < QP; ++i) {
      const int d = 2 * (lane + 32 * i);
      const bool ok = t < T && d < hd;  // hd is even
      v[i] = ok ? make_float2(qr[d] * qscale, qr[d + 1] * qscale) : make_float2(0.0f, 0.0f);
      m = fmaxf(m, fmaxf(fabsf(v[i].x), fabsf(v[i].y)));
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    const int sq = -shift_for(__float_as_uint(m));
    const float mul = pow2(-sq);
#pragma unroll
    for (int i = 0; i < QP; ++i) {
      const int d = 2 * (lane + 32 * i);
      if (d < HDP) store(r, d, pack_f16x2(v[i].x * mul, v[i].y * mul));
    }
    if (r == gq) s_mul[0] = pow2(sq + sk);
    if (r == gq + 8) s_mul[1] = pow2(sq + sk);
  }
}
}  // namespace
}  // namespace fh1::cuda
