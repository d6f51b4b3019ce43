// Causal attention of many queries (prefill) on the GPU; cuda_attention.cu dispatches here.
//  - bf16 KV caches (head size a multiple of 8, at most 128): FlashAttention-2's layout on the
//    tensor cores in 16 bits (below): by default fp16 over an fp16 copy of the caches, each
//    tensor and query row scaled by a power of two; bf16 with split operands on request.
//  - otherwise (float32 caches, larger heads): a flash-attention kernel on the tensor cores in
//    TF32 (mma.sync m16n8k8; Q, K, V and the probabilities rounded to TF32's 10-bit mantissa,
//    every sum in float32). One block of 4 warps per (64-query tile, head); each warp owns 16
//    queries; K and V tiles pass through shared memory.
//  - exact mode (set_attention_tf32(false) / FH1_CUDA_ATTN=f32): float32 SIMT, one block per
//    (32-query tile, head); 4 lanes share a query.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cstdlib>
#include <type_traits>

#include "kernels/cuda/cuda_attention_common.cuh"
#include "kernels/cuda/cuda_f16_scale.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_rows.cuh"
#include "util/error.h"

namespace fh1::cuda {
namespace {

constexpr int kTileQ = 32;  // queries per block of the float32 kernel
constexpr int kTileK = 32;  // keys per shared-memory tile of the float32 kernel

template <int MPL, typename KV>  // dims per lane: hd <= 4 * MPL; shared rows padded to 4 * MPL
__global__ void __launch_bounds__(kTileQ * 4)
    attn_tile_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const KV* __restrict__ kc,
                     const KV* __restrict__ vc, int64_t n_past, int H, int Hkv, int hd, float scale,
                     float* __restrict__ out) {
  FH1_PDL_ENTER();
  constexpr int HDP = 4 * MPL;
  extern __shared__ float sm[];
  float* Ks = sm;
  float* Vs = sm + kTileK * HDP;
  const int h = blockIdx.y, kvh = h / (H / Hkv);
  const int qi = threadIdx.x >> 2, j = threadIdx.x & 3;
  const int64_t t = int64_t(blockIdx.x) * kTileQ + qi;
  const bool active = t < T;
  const int64_t ldkv = int64_t(Hkv) * hd;

  float qr[MPL], acc[MPL];
#pragma unroll
  for (int i = 0; i < MPL; ++i) {
    const int d = i * 4 + j;
    qr[i] = (active && d < hd) ? q[t * ldq + int64_t(h) * hd + d] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -FLT_MAX, l = 0.0f;
  const int64_t last_t = min(T, int64_t(blockIdx.x) * kTileQ + kTileQ) - 1;
  const int64_t n_keys = n_past + last_t + 1;
  const int64_t my_last = active ? n_past + t : -1;

  for (int64_t k0 = 0; k0 < n_keys; k0 += kTileK) {
    __syncthreads();
    for (int e = threadIdx.x; e < kTileK * HDP; e += blockDim.x) {
      const int r = e / HDP, d = e - r * HDP;
      const int64_t key = k0 + r;
      const bool ok = key < n_keys && d < hd;
      Ks[e] = ok ? kv_ld(kc + key * ldkv + int64_t(kvh) * hd + d) : 0.0f;
      Vs[e] = ok ? kv_ld(vc + key * ldkv + int64_t(kvh) * hd + d) : 0.0f;
    }
    __syncthreads();
    float sc[kTileK];
    float tile_max = -FLT_MAX;
#pragma unroll
    for (int r = 0; r < kTileK; ++r) {
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < MPL; ++i) part += qr[i] * Ks[r * HDP + i * 4 + j];
      part += __shfl_xor_sync(0xffffffffu, part, 1);
      part += __shfl_xor_sync(0xffffffffu, part, 2);
      sc[r] = (k0 + r <= my_last) ? part : -FLT_MAX;
      tile_max = fmaxf(tile_max, sc[r]);
    }
    if (k0 > my_last) continue;  // nothing visible in this tile for this query
    const float m_new = fmaxf(m, tile_max);
    const float corr = __expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int i = 0; i < MPL; ++i) acc[i] *= corr;
#pragma unroll
    for (int r = 0; r < kTileK; ++r) {
      const float p = (k0 + r <= my_last) ? __expf(sc[r] - m_new) : 0.0f;
      l += p;
#pragma unroll
      for (int i = 0; i < MPL; ++i) acc[i] += p * Vs[r * HDP + i * 4 + j];
    }
    m = m_new;
  }
  if (active) {
    const float inv = 1.0f / l;
#pragma unroll
    for (int i = 0; i < MPL; ++i) {
      const int d = i * 4 + j;
      if (d < hd) out[t * int64_t(H) * hd + int64_t(h) * hd + d] = acc[i] * inv;
    }
  }
}

// ---- prefill: flash attention on the tensor cores (TF32) ----
constexpr int kFlashQ = 64;  // queries per block (16 per warp)

// Fragments (PTX m16n8k8 tf32; g = lane / 4, c = lane % 4): A a0 (g, c), a1 (g+8, c), a2 (g, c+4),
// a3 (g+8, c+4); B b0 (k c, n g), b1 (k c+4, n g); C c0 (g, 2c), c1 (g, 2c+1), c2 (g+8, 2c),
// c3 (g+8, 2c+1). For P V the 8 keys of a step are taken in the order 0,2,4,6,1,3,5,7, so the
// probabilities of S's C fragment are P's A fragment as they are (a0 = c0, a1 = c2, a2 = c1,
// a3 = c3) and V's B fragment reads keys 2c and 2c + 1.
template <int HDP, int BK, typename KV>  // head dim padded (multiple of 32); keys per tile
__global__ void __launch_bounds__(128)
    attn_flash_tf32_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const KV* __restrict__ kc,
                           const KV* __restrict__ vc, int64_t n_past, int H, int Hkv, int hd, float scale,
                           bool vec, float* __restrict__ out) {
  FH1_PDL_ENTER();
  constexpr int LD = HDP + 4;  // padded rows: conflict-free fragment reads
  extern __shared__ float sm[];
  float* Qs = sm;
  float* Ks = Qs + kFlashQ * LD;
  float* Vs = Ks + BK * LD;
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest rows first
  const int h = blockIdx.y, kvh = h / (H / Hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, c4 = lane & 3;
  const int64_t q0 = int64_t(qt) * kFlashQ;
  const int64_t ldkv = int64_t(Hkv) * hd;
  const float qscale = scale * 1.4426950408889634f;  // scores in log2 units: exp2 below

  for (int e = threadIdx.x; e < kFlashQ * HDP; e += blockDim.x) {
    const int r = e / HDP, d = e - r * HDP;
    const int64_t t = q0 + r;
    const float v = (t < T && d < hd) ? q[t * ldq + int64_t(h) * hd + d] * qscale : 0.0f;
    Qs[r * LD + d] = __uint_as_float(to_tf32(v));
  }

  float o[HDP / 8][4];
#pragma unroll
  for (int i = 0; i < HDP / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
  const int64_t wq = q0 + warp * 16;  // this warp's first query
  const int64_t t_lo = wq + gq, t_hi = wq + gq + 8;
  const int64_t last_t = min(T, q0 + kFlashQ) - 1;
  const int64_t n_keys = n_past + last_t + 1;
  const KV* kb = kc + int64_t(kvh) * hd;
  const KV* vb = vc + int64_t(kvh) * hd;
  const float* qa = Qs + (warp * 16 + gq) * LD;

  for (int64_t k0 = 0; k0 < n_keys; k0 += BK) {
    __syncthreads();
    if (vec) {
      constexpr int R4 = HDP / 4;
      for (int e = threadIdx.x; e < BK * R4; e += blockDim.x) {
        const int r = e / R4, d = 4 * (e - r * R4);
        const int64_t key = k0 + r;
        float4 kv = make_float4(0.0f, 0.0f, 0.0f, 0.0f), vv = kv;
        if (key < n_keys && d < hd) {
          kv = kv_ld4(kb + key * ldkv + d);
          vv = kv_ld4(vb + key * ldkv + d);
        }
        float* ks = Ks + r * LD + d;
        float* vs = Vs + r * LD + d;
        ks[0] = __uint_as_float(to_tf32(kv.x)); ks[1] = __uint_as_float(to_tf32(kv.y));
        ks[2] = __uint_as_float(to_tf32(kv.z)); ks[3] = __uint_as_float(to_tf32(kv.w));
        vs[0] = __uint_as_float(to_tf32(vv.x)); vs[1] = __uint_as_float(to_tf32(vv.y));
        vs[2] = __uint_as_float(to_tf32(vv.z)); vs[3] = __uint_as_float(to_tf32(vv.w));
      }
    } else {
      for (int e = threadIdx.x; e < BK * HDP; e += blockDim.x) {
        const int r = e / HDP, d = e - r * HDP;
        const int64_t key = k0 + r;
        const bool ok = key < n_keys && d < hd;
        Ks[r * LD + d] = __uint_as_float(to_tf32(ok ? kv_ld(kb + key * ldkv + d) : 0.0f));
        Vs[r * LD + d] = __uint_as_float(to_tf32(ok ? kv_ld(vb + key * ldkv + d) : 0.0f));
      }
    }
    __syncthreads();
    if (k0 > n_past + wq + 15) continue;  // every key of this tile is in this warp's future

    float s[BK / 8][4];
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HDP; kk += 8) {
      const uint32_t a0 = __float_as_uint(qa[kk + c4]), a1 = __float_as_uint(qa[8 * LD + kk + c4]);
      const uint32_t a2 = __float_as_uint(qa[kk + c4 + 4]), a3 = __float_as_uint(qa[8 * LD + kk + c4 + 4]);
#pragma unroll
      for (int nt = 0; nt < BK / 8; ++nt) {
        const float* kr = Ks + (nt * 8 + gq) * LD + kk + c4;
        mma_tf32(s[nt], {a0, a1, a2, a3}, __float_as_uint(kr[0]), __float_as_uint(kr[4]));
      }
    }
    if (k0 + BK - 1 > n_past + wq) {  // the tile reaches past some query of this warp: mask
      mask_keys_after(s, k0, c4, n_past + t_lo, n_past + t_hi);
    }
    float mx[2];
    online_softmax_step(s, mrow, lrow, o, mx);
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) {
      const float p0 = exp2f(s[nt][0] - mx[0]), p1 = exp2f(s[nt][1] - mx[0]);
      const float p2 = exp2f(s[nt][2] - mx[1]), p3 = exp2f(s[nt][3] - mx[1]);
      lrow[0] += p0 + p1;
      lrow[1] += p2 + p3;
      const uint32_t a0 = to_tf32(p0), a1 = to_tf32(p2), a2 = to_tf32(p1), a3 = to_tf32(p3);
      const float* v0 = Vs + (nt * 8 + 2 * c4) * LD + gq;
#pragma unroll
      for (int i = 0; i < HDP / 8; ++i)
        mma_tf32(o[i], {a0, a1, a2, a3}, __float_as_uint(v0[i * 8]), __float_as_uint(v0[LD + i * 8]));
    }
  }
  store_rows(o, lrow, out, int64_t(H) * hd, h, hd, t_lo, t_hi, T, c4);
}

// ---- prefill: flash attention on the tensor cores in 16-bit (bf16 KV caches) ----
// FlashAttention-2's layout with mma.sync m16n8k16: W warps of 16 queries each; the block's Q
// (scaled) waits in shared memory; K and V tiles of BK keys are copied into shared memory with
// cp.async, the next tile while the current one is used. S's accumulator fragments are P's A
// fragments as they are (no shuffles); V's B fragments come from ldmatrix.trans. Every sum
// float32; the scores in log2 units (exp2). The operands, by PREC:
//  3 (default): fp16. The caches are copied to fp16 first (kv_to_f16_kernel), each scaled by the
//    power of two that brings its largest |value| into [2^14, 2^15): a bf16 value is then exact
//    in fp16 unless it lies more than 2^29 below that largest one. Each query row is scaled
//    likewise (11 bits kept where bf16 keeps 8), and the probabilities times 2^15 (exp2 of
//    s - max + 15: 11 bits down to 2^-29 of the row's largest). One MMA per product; the powers of
//    two come out of the scores and the output exactly. Up to ~4e-3 of rms on the tests.
//  2: bf16, Q and P split into two bf16 parts (hi + lo, ~16 bits kept) over the exact bf16 K and
//    V: two MMAs where one would do; 5e-5 of rms, up to 2x slower.
//  1 splits Q only, 0 rounds both to bf16 once (up to 3e-2 at long T). set_flash_precision().
// W warps of 16 queries a block, at least MINB blocks an SM (registers capped to fit).
template <int HDP, int BK, int PREC, int W, int MINB>  // head dim padded to HDP (hd % 8 == 0, hd <= HDP); keys per tile
__global__ void __launch_bounds__(32 * W, MINB)
    attn_flash16_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const uint16_t* __restrict__ kc,
                        const uint16_t* __restrict__ vc, const uint32_t* __restrict__ kv_max, int64_t n_past, int H,
                        int Hkv, int hd, float scale, float* __restrict__ out) {
  FH1_PDL_ENTER();
  constexpr bool F16 = PREC == 3;
  constexpr int QB = 16 * W;  // queries per block
  constexpr int LD = HDP + 8;  // 16-bit values per shared row: 16-byte aligned, conflict-free fragment reads
  constexpr int CH = HDP / 8;  // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int QPARTS = PREC == 1 || PREC == 2 ? 2 : 1;
  uint16_t* Qs = reinterpret_cast<uint16_t*>(smem_raw);  // [QPARTS][QB][LD]: hi (and lo)
  uint16_t* Ks = Qs + QPARTS * QB * LD;  // [2][BK][LD]
  uint16_t* Vs = Ks + 2 * BK * LD;   // [2][BK][LD]
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest rows first
  const int h = blockIdx.y, kvh = h / (H / Hkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, c4 = lane & 3;
  const int64_t q0 = int64_t(qt) * QB;
  const int64_t ldkv = int64_t(Hkv) * hd;
  const float qscale = scale * 1.4426950408889634f;
  const int64_t last_t = min(T, q0 + QB) - 1;
  const int64_t n_keys = n_past + last_t + 1;
  const int64_t n_tiles = (n_keys + BK - 1) / BK;
  const uint16_t* kb = kc + int64_t(kvh) * hd;
  const uint16_t* vb = vc + int64_t(kvh) * hd;
  const int64_t wq = q0 + warp * 16;  // this warp's first query
  const int64_t t_lo = wq + gq, t_hi = wq + gq + 8;

  auto load_tile = [&](int64_t tile, int buf) {
    const int64_t k0 = tile * BK;
    uint16_t* ks = Ks + buf * BK * LD;
    uint16_t* vs = Vs + buf * BK * LD;
    for (int e = threadIdx.x; e < BK * CH; e += blockDim.x) {
      const int r = e / CH, d = (e - r * CH) * 8;
      const int64_t key = k0 + r;
      const bool ok = key < n_keys && d < hd;
      const int64_t off = ok ? key * ldkv + d : 0;
      cp_async16(ks + r * LD + d, kb + off, ok);
      cp_async16(vs + r * LD + d, vb + off, ok);
    }
  };
  load_tile(0, 0);
  cp_async_commit();

  // fp16: the factors that undo the scaling: scores of row t_lo / t_hi times s_mul[0] / [1],
  // the output times 2^(shift of V) (o and l both carry the probabilities' 2^15).
  float s_mul[2] = {1.0f, 1.0f}, o_mul = 1.0f;
  if constexpr (F16) {
    // Each warp stages its own 16 rows, each scaled by its power of two.
    const int sk = -shift_for(kv_max[0]), sv = -shift_for(kv_max[1]);  // the scales taken out
    o_mul = pow2(sv);
    stage_q_rows_f16<HDP>(q, ldq, wq, T, h, hd, qscale, sk, lane, gq, s_mul, [&](int r, int d, uint32_t v) {
      *reinterpret_cast<uint32_t*>(Qs + (warp * 16 + r) * LD + d) = v;
    });
  } else {
    for (int e = threadIdx.x; e < QB * (HDP / 2); e += blockDim.x) {
      const int r = e / (HDP / 2), d = 2 * (e - r * (HDP / 2));
      const int64_t t = q0 + r;
      const float* qr = q + t * ldq + int64_t(h) * hd;
      const bool ok = t < T && d < hd;  // hd is even
      const float v0 = ok ? qr[d] * qscale : 0.0f, v1 = ok ? qr[d + 1] * qscale : 0.0f;
      const uint32_t hi = pack_bf16x2(v0, v1);
      *reinterpret_cast<uint32_t*>(Qs + r * LD + d) = hi;
      if constexpr (QPARTS == 2)
        *reinterpret_cast<uint32_t*>(Qs + QB * LD + r * LD + d) =
            pack_bf16x2(v0 - __uint_as_float(hi << 16), v1 - __uint_as_float(hi & 0xffff0000u));
    }
  }
  __syncthreads();
  // This warp's A fragments of Q (part 0: hi, 1: lo) for head dims kk * 16 .. + 15, by ldmatrix:
  // lanes 0-7 / 8-15 / 16-23 / 24-31 address the rows of (queries +0, dims +0), (+8, +0), (+0, +8),
  // (+8, +8).
  const uint16_t* qrow = Qs + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;
  auto q_frag = [&](int part, int kk, uint32_t (&a)[4]) { ldmatrix_x4(a, qrow + part * QB * LD + kk * 16); };
  auto mma = [](float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (F16) mma_f16(c, a, b0, b1);
    else mma_bf16(c, a, b0, b1);
  };

  float o[HDP / 8][4];
#pragma unroll
  for (int i = 0; i < HDP / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};

  for (int64_t tile = 0; tile < n_tiles; ++tile) {
    const int buf = static_cast<int>(tile & 1);
    if (tile + 1 < n_tiles) {
      load_tile(tile + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int64_t k0 = tile * BK;
    if (k0 <= n_past + wq + 15) {  // else every key of this tile is in this warp's future
      const uint16_t* ks = Ks + buf * BK * LD;
      const uint16_t* vs = Vs + buf * BK * LD;
      float s[BK / 8][4];
#pragma unroll
      for (int nt = 0; nt < BK / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
      // K's B fragments by ldmatrix, two key tiles of 8 at a time, each used for both parts of Q:
      // lanes 0-7 / 8-15 / 16-23 / 24-31 address the rows of (keys +0, dims +0), (keys +0, dims
      // +8), (keys +8, dims +0), (keys +8, dims +8).
      const uint16_t* krow = ks + ((lane & 7) + (lane >> 4) * 8) * LD + ((lane >> 3) & 1) * 8;
#pragma unroll
      for (int kk = 0; kk < HDP / 16; ++kk) {
        uint32_t qa[QPARTS][4];
#pragma unroll
        for (int part = 0; part < QPARTS; ++part) q_frag(part, kk, qa[part]);
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt += 2) {
          uint32_t kf[4];
          ldmatrix_x4(kf, krow + nt * 8 * LD + kk * 16);
#pragma unroll
          for (int part = 0; part < QPARTS; ++part) {
            mma(s[nt], qa[part], kf[0], kf[1]);
            mma(s[nt + 1], qa[part], kf[2], kf[3]);
          }
        }
      }
      if (k0 + BK - 1 > n_past + wq) {  // the tile reaches past some query of this warp: mask
        mask_keys_after(s, k0, c4, n_past + t_lo, n_past + t_hi);
      }
      float mx[2];  // fp16: the offsets of online_softmax_step_scaled
      if constexpr (F16) online_softmax_step_scaled(s, s_mul, mrow, lrow, o, mx);
      else online_softmax_step(s, mrow, lrow, o, mx);
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {  // 16 keys: the S tiles 2 kk and 2 kk + 1
        uint32_t pa[4], pl[4];
        if constexpr (F16) probs_f16_scaled(s[2 * kk], s[2 * kk + 1], s_mul, mx, lrow, pa);
        else probs_bf16<PREC >= 2>(s[2 * kk], s[2 * kk + 1], mx, lrow, pa, pl);
        // ldmatrix.trans: lanes 0-7 / 8-15 / 16-23 / 24-31 address the rows of the 8x8 blocks
        // (keys +0, dims +0), (keys +8, dims +0), (keys +0, dims +8), (keys +8, dims +8).
        const uint16_t* vrow = vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;
#pragma unroll
        for (int dt = 0; dt < HDP / 16; ++dt) {
          uint32_t vf[4];
          ldmatrix_x4_trans(vf, vrow + dt * 16);
          mma(o[2 * dt], pa, vf[0], vf[1]);
          mma(o[2 * dt + 1], pa, vf[2], vf[3]);
          if constexpr (PREC == 2) {
            mma(o[2 * dt], pl, vf[0], vf[1]);
            mma(o[2 * dt + 1], pl, vf[2], vf[3]);
          }
        }
      }
    }
    __syncthreads();  // the buffer just read is the next load's target
  }
  if constexpr (F16) {  // out = o / l * 2^(shift of V), exactly: l divided by that power of two
    lrow[0] /= o_mul;
    lrow[1] /= o_mul;
  }
  store_rows(o, lrow, out, int64_t(H) * hd, h, hd, t_lo, t_hi, T, c4);
}

// The largest |value| of the first n values of the bf16 caches k and v (n % 8 == 0, 16-byte
// aligned) as float bits into kv_max[0] / [1] (zeroed before).
__global__ void kv_absmax_kernel(const uint4* __restrict__ k, const uint4* __restrict__ v, int64_t n8,
                                 uint32_t* __restrict__ kv_max) {
  FH1_PDL_ENTER();
  uint32_t mk = 0, mv = 0;  // two bf16 |values| each (per-halfword maxima)
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    const uint4 a = k[i], b = v[i];
    mk = __vmaxu2(mk, __vmaxu2(__vmaxu2(a.x & 0x7fff7fffu, a.y & 0x7fff7fffu), __vmaxu2(a.z & 0x7fff7fffu, a.w & 0x7fff7fffu)));
    mv = __vmaxu2(mv, __vmaxu2(__vmaxu2(b.x & 0x7fff7fffu, b.y & 0x7fff7fffu), __vmaxu2(b.z & 0x7fff7fffu, b.w & 0x7fff7fffu)));
  }
  // A bf16's bits, shifted up 16, are its float's (a NaN stays above every number).
  block_max_into(max(mk << 16, mk & 0xffff0000u), kv_max);
  __syncthreads();  // block_max_into's shared slots are read until here
  block_max_into(max(mv << 16, mv & 0xffff0000u), kv_max + 1);
}

// The caches in fp16, each times 2^-shift of its largest |value| (kv_max).
__global__ void kv_to_f16_kernel(const uint4* __restrict__ k, const uint4* __restrict__ v, int64_t n8,
                                 const uint32_t* __restrict__ kv_max, uint4* __restrict__ k16, uint4* __restrict__ v16) {
  FH1_PDL_ENTER();
  const float kmul = pow2(shift_for(kv_max[0]));
  const float vmul = pow2(shift_for(kv_max[1]));
  auto conv = [](uint32_t x, float mul) {
    return pack_f16x2(__uint_as_float(x << 16) * mul, __uint_as_float(x & 0xffff0000u) * mul);
  };
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    const uint4 a = k[i], b = v[i];
    k16[i] = make_uint4(conv(a.x, kmul), conv(a.y, kmul), conv(a.z, kmul), conv(a.w, kmul));
    v16[i] = make_uint4(conv(b.x, vmul), conv(b.y, vmul), conv(b.z, vmul), conv(b.w, vmul));
  }
}

template <int MPL, typename KV>
void launch_tile(const float* q, int64_t ldq, int64_t T, const KV* k, const KV* v, int64_t n_past, int H,
                 int Hkv, int hd, float scale, float* out, cudaStream_t s) {
  const size_t smem = size_t(2) * kTileK * 4 * MPL * sizeof(float);
  if (smem > 48 * 1024)
    check(cudaFuncSetAttribute(attn_tile_kernel<MPL, KV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem)),
          "attention smem");
  const dim3 grid(static_cast<unsigned>((T + kTileQ - 1) / kTileQ), static_cast<unsigned>(H));
  launch(attn_tile_kernel<MPL, KV>, grid, kTileQ * 4, smem, s, q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out);
  check_launch("attention (tile)");
}

template <int HDP, int BK, typename KV>
void launch_flash(const float* q, int64_t ldq, int64_t T, const KV* k, const KV* v, int64_t n_past, int H,
                  int Hkv, int hd, float scale, float* out, cudaStream_t s) {
  const size_t smem = size_t(kFlashQ + 2 * BK) * (HDP + 4) * sizeof(float);
  static bool attr_set = false;  // per template instance
  if (!attr_set) {
    check(cudaFuncSetAttribute(attn_flash_tf32_kernel<HDP, BK, KV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem)),
          "attention (flash) smem");
    attr_set = true;
  }
  constexpr uintptr_t align = 4 * sizeof(KV);
  const bool vec = hd % 4 == 0 && (int64_t(Hkv) * hd) % 4 == 0 && reinterpret_cast<uintptr_t>(k) % align == 0 &&
                   reinterpret_cast<uintptr_t>(v) % align == 0;
  const dim3 grid(static_cast<unsigned>((T + kFlashQ - 1) / kFlashQ), static_cast<unsigned>(H));
  launch(attn_flash_tf32_kernel<HDP, BK, KV>, grid, 128, smem, s, q, ldq, T, k, v, n_past, H, Hkv, hd, scale, vec,
         out);
  check_launch("attention (flash tf32)");
}

template <int HDP, int BK, int PREC, int W = 4, int MINB = 1>
void launch_flash16_prec(const float* q, int64_t ldq, int64_t T, const uint16_t* k, const uint16_t* v,
                         const uint32_t* kv_max, int64_t n_past, int H, int Hkv, int hd, float scale, float* out,
                         cudaStream_t s) {
  constexpr int QB = 16 * W;
  const size_t smem = size_t((PREC == 1 || PREC == 2 ? 2 : 1) * QB + 4 * BK) * (HDP + 8) * sizeof(uint16_t);
  static bool attr_set = false;  // per template instance
  if (!attr_set) {
    check(cudaFuncSetAttribute(attn_flash16_kernel<HDP, BK, PREC, W, MINB>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "attention (flash 16-bit) smem");
    attr_set = true;
  }
  const dim3 grid(static_cast<unsigned>((T + QB - 1) / QB), static_cast<unsigned>(H));
  launch(attn_flash16_kernel<HDP, BK, PREC, W, MINB>, grid, 32 * W, smem, s, q, ldq, T, k, v, kv_max, n_past, H, Hkv,
         hd, scale, out);
  check_launch("attention (flash 16-bit)");
}

std::atomic<int>& flash_precision_setting() {
  static std::atomic<int> p{[] {
    const char* e = std::getenv("FH1_CUDA_FLASH_PREC");
    return e ? std::clamp(std::atoi(e), 0, 3) : 3;
  }()};
  return p;
}

// The caches' first n_keys rows in fp16 (see attn_flash16_kernel) in scratch:
// [kv_max: 16 bytes][K: n_keys x ldkv][V: n_keys x ldkv].
void caches_to_f16(const bf16* k, const bf16* v, int64_t n_keys, int64_t ldkv, void* scratch, cudaStream_t s) {
  auto* kv_max = static_cast<uint32_t*>(scratch);
  auto* k16 = reinterpret_cast<uint4*>(static_cast<unsigned char*>(scratch) + 16);
  const int64_t n8 = n_keys * ldkv / 8;
  auto* v16 = k16 + n8;
  check(cudaMemsetAsync(kv_max, 0, 2 * sizeof(uint32_t), s), "attention: fp16 caches' maxima");
  const unsigned blocks = static_cast<unsigned>(std::clamp<int64_t>((n8 + 255) / 256, 1, 1024));
  launch(kv_absmax_kernel, dim3(blocks), dim3(256), 0, s, reinterpret_cast<const uint4*>(k),
         reinterpret_cast<const uint4*>(v), n8, kv_max);
  check_launch("attention: the caches' maxima");
  launch(kv_to_f16_kernel, dim3(blocks), dim3(256), 0, s, reinterpret_cast<const uint4*>(k),
         reinterpret_cast<const uint4*>(v), n8, static_cast<const uint32_t*>(kv_max), k16, v16);
  check_launch("attention: the caches in fp16");
}

template <int HDP, int BK>
void launch_flash16(const float* q, int64_t ldq, int64_t T, const bf16* k, const bf16* v, int64_t n_past, int H,
                    int Hkv, int hd, float scale, float* out, void* scratch, cudaStream_t s) {
  const int prec = scratch ? flash_precision_setting().load() : std::min(flash_precision_setting().load(), 2);
  auto k16 = reinterpret_cast<const uint16_t*>(k), v16 = reinterpret_cast<const uint16_t*>(v);
  const uint32_t* kv_max = nullptr;
  if (prec == 3) {
    const int64_t ldkv = int64_t(Hkv) * hd;
    caches_to_f16(k, v, n_past + T, ldkv, scratch, s);
    kv_max = static_cast<const uint32_t*>(scratch);
    k16 = reinterpret_cast<const uint16_t*>(static_cast<unsigned char*>(scratch) + 16);
    v16 = k16 + (n_past + T) * ldkv;
    if (attention_prefill_wgmma(q, ldq, T, k16, v16, kv_max, n_past, H, Hkv, hd, scale, out, s)) return;
  }
  // fp16: 8 warps (128 queries) a block, registers capped so that 2 blocks share an SM, each K
  // and V tile thus serving twice the queries (7B prefill at 32K 7 % faster than 4 warps on an
  // H200). FH1_CUDA_FLASH_WARPS=4: 4 warps (tuning).
  static const int warps = [] {
    const char* e = std::getenv("FH1_CUDA_FLASH_WARPS");
    return e && std::atoi(e) == 4 ? 4 : 8;
  }();
  if (prec == 3 && warps == 8) launch_flash16_prec<HDP, BK, 3, 8, 2>(q, ldq, T, k16, v16, kv_max, n_past, H, Hkv, hd, scale, out, s);
  else if (prec == 3) launch_flash16_prec<HDP, BK, 3, 4, 1>(q, ldq, T, k16, v16, kv_max, n_past, H, Hkv, hd, scale, out, s);
  else if (prec == 2) launch_flash16_prec<HDP, BK, 2>(q, ldq, T, k16, v16, kv_max, n_past, H, Hkv, hd, scale, out, s);
  else if (prec == 1) launch_flash16_prec<HDP, BK, 1>(q, ldq, T, k16, v16, kv_max, n_past, H, Hkv, hd, scale, out, s);
  else launch_flash16_prec<HDP, BK, 0>(q, ldq, T, k16, v16, kv_max, n_past, H, Hkv, hd, scale, out, s);
}

// The bf16 flash kernel reads whole 16-byte chunks of cache rows.
bool flash_bf16_ok(int hd, int Hkv, const void* k, const void* v) {
  return hd % 8 == 0 && hd <= 128 && (int64_t(Hkv) * hd) % 8 == 0 && reinterpret_cast<uintptr_t>(k) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(v) % 16 == 0;
}
template <typename KV>
void attention_prefill_t(const float* q, int64_t ldq, int64_t T, const KV* k, const KV* v, int64_t n_past, int H,
                         int Hkv, int hd, float scale, bool tf32, float* out, void* scratch, cudaStream_t s) {
  if constexpr (std::is_same_v<KV, bf16>) {
    if (tf32 && flash_bf16_ok(hd, Hkv, k, v)) {  // tensor cores, in 16 bits since the caches are
      if (hd <= 32) launch_flash16<32, 64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
      else if (hd <= 64) launch_flash16<64, 64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
      else launch_flash16<128, 64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, scratch, s);
      return;
    }
  } else {
    (void)scratch;
  }
  if (tf32) {
    // Keys per tile: 64 up to hd 64; 32 above (less shared memory, 3 blocks per SM: 7B prefill
    // at 32K 16% faster on an H200 than with 64). FH1_CUDA_FLASH_BK=64 / 32 forces one.
    static const int bk = [] {
      const char* e = std::getenv("FH1_CUDA_FLASH_BK");
      return e == nullptr ? 0 : std::atoi(e);
    }();
    if (hd <= 32) launch_flash<32, 64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    else if (hd <= 64 && bk == 32) launch_flash<64, 32>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    else if (hd <= 64) launch_flash<64, 64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    else if (hd <= 128 && bk != 64) launch_flash<128, 32>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    else if (hd <= 128) launch_flash<128, 64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    else launch_flash<256, 32>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
    return;
  }
  if (hd <= 16) launch_tile<4>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else if (hd <= 32) launch_tile<8>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else if (hd <= 64) launch_tile<16>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else if (hd <= 128) launch_tile<32>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
  else launch_tile<64>(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, out, s);
}

}  // namespace

void attention_prefill(const float* q, int64_t ldq, int64_t T, const float* k, const float* v, int64_t n_past, int H,
                       int Hkv, int hd, float scale, bool tensor_cores, float* out, cudaStream_t s) {
  attention_prefill_t(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, tensor_cores, out, nullptr, s);
}

void attention_prefill(const float* q, int64_t ldq, int64_t T, const bf16* k, const bf16* v, int64_t n_past, int H,
                       int Hkv, int hd, float scale, bool tensor_cores, float* out, void* scratch, cudaStream_t s) {
  attention_prefill_t(q, ldq, T, k, v, n_past, H, Hkv, hd, scale, tensor_cores, out, scratch, s);
}

size_t attention_prefill_scratch_bytes(int64_t T, int64_t n_past, int Hkv, int hd) {
  return 16 + size_t(2) * static_cast<size_t>((n_past + T) * Hkv * hd) * sizeof(uint16_t);
}

void set_flash_precision(int prec) { flash_precision_setting().store(std::clamp(prec, 0, 3)); }
int flash_precision() { return flash_precision_setting().load(); }

}  // namespace fh1::cuda
