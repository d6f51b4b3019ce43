// The fp16 prefill attention on Hopper's warpgroup MMA (wgmma, sm_90a): the operands and the
// arithmetic of attn_flash16_kernel's fp16 form (cuda_attention_prefill.cu: the caches copied to
// fp16 with a power-of-two scale, each query row likewise, the probabilities times 2^15, every sum
// float32), with the products issued by warpgroups of 4 warps, 64 query rows each:
//  - S = Q K^T: Q (the block's rows, staged once) and a K tile of BK keys in shared memory, both
//    in 128-byte swizzled rows (wgmma's K-major layout), HDP / 16 instructions m64nBKk16;
//  - the online softmax on S's accumulators (the m16n8 layout per warp, as in the mma.sync
//    kernel: its helpers serve both);
//  - O += P V: P from registers (S's accumulators are P's A fragments as they are), V's tile in
//    shared memory read transposed (MN-major), BK / 16 instructions m64nHDPk16.
// The default (variant 12): K and V tiles of 128 keys loaded by the copy engine (TMA, a tensor
// map of each fp16 cache with the same swizzle) into 2 stages (181 KB of shared memory at head
// size 128), issued by one thread of a producer warpgroup that gives its registers to the 3
// computing warpgroups (setmaxnreg); full and empty stages signalled on mbarriers, so each
// warpgroup runs at its own pace and one's softmax overlaps another's products. Tiles of 128 keys
// make S = Q K^T m64n128k16, which reads half the shared memory per product of m64n64k16 (64-key
// tiles, variant 5: prompts took up to 12 % longer). Where the head size is not 64 or 128 (no whole 128-byte boxes), every
// thread copies the tiles with cp.async and the block meets at a barrier each tile (variant 1).
// The other shapes, for tuning, in launch_wgmma_variant below.
#include <cuda.h>  // CUtensorMap (the encoder itself comes through the runtime's entry points)

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "kernels/cuda/cuda_attention_common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_wgmma.cuh"
#include "util/error.h"

namespace fh1::cuda {
namespace {

// HDP: head dim padded (64 or 128: 128-byte column blocks); BK: keys per tile (64 or 128); WG:
// warpgroups (64 queries each) that compute; HPB: query heads a block (sharing one KV head,
// WG / HPB warpgroups each: every K/V tile serves 64 WG rows); MINB: blocks an SM (register cap);
// TMA: the tiles come by the copy engine (tmk / tmv: the fp16 caches' tensor maps, 128-byte
// swizzle), issued by one more warp into STAGES buffers, full and empty signalled on mbarriers
// (no block-wide barrier a tile: each warpgroup runs at its own pace); else by every thread's
// cp.async into 2 buffers, a __syncthreads a tile.
// QREG: each warp keeps its 16 rows of Q as wgmma A fragments in registers (32 at head size 128),
// so that S = Q K^T reads only K from shared memory (m64n128k16 from shared memory reads 6 KB a
// 64-cycle product, close to the 128 bytes a cycle shared memory gives; with Q in registers 4 KB).
// SOFT: of each thread's 8 probabilities a 16-key step, SOFT by ex2_fma (the FMA pipe) instead
// of ex2 (the MUFU unit, 16 a cycle per SM: at head size 64 its exponentials and conversions take
// about as long as the tile's products on the tensor cores).
template <int HDP, int BK, int WG, int HPB, int MINB, bool TMA, int STAGES, bool PIPE, bool QREG = false,
          int SOFT = 0>
__global__ void __launch_bounds__(128 * (WG + (TMA ? 1 : 0)), MINB)
    attn_flash_wgmma_kernel(const float* __restrict__ q, int64_t ldq, int64_t T, const uint16_t* __restrict__ kc,
                            const uint16_t* __restrict__ vc, const uint32_t* __restrict__ kv_max, int64_t n_past,
                            int H, int Hkv, int hd, float scale, float* __restrict__ out,
                            const __grid_constant__ CUtensorMap tmk, const __grid_constant__ CUtensorMap tmv) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(HDP == 64 || HDP == 128, "head dims in 128-byte column blocks");
  static_assert(TMA ? STAGES >= 2 : STAGES == 2, "cp.async: double buffering");
  static_assert(TMA || !PIPE, "the next S in flight: with the copy engine's loads");
  static_assert(!QREG || (TMA && !PIPE), "Q in registers: with the copy engine's loads");
  FH1_PDL_ENTER();
  static_assert(WG % HPB == 0, "whole warpgroups a head");
  // TMA: the producer warpgroup gives its registers to the others (setmaxnreg).
  constexpr int kProducerRegs = 24;
  constexpr int kConsumerRegs = std::min(240, (65536 / 128 - kProducerRegs) / WG / 8 * 8);
  constexpr int WGH = WG / HPB;           // warpgroups a head
  constexpr int QB = 64 * WGH;            // queries of each head a block
  constexpr int QR = 64 * WG;             // rows of Q a block
  constexpr int CB = HDP / 64;            // 128-byte column blocks of a row
  constexpr uint32_t QBYTES = CB * QR * 128;
  constexpr uint32_t TBYTES = CB * BK * 128;  // one K or V tile
  extern __shared__ unsigned char smem_raw[];
  // The swizzle's 8-row atoms must start at multiples of 1024 bytes.
  const uint32_t raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t pad = ((raw_addr + 1023u) & ~1023u) - raw_addr;
  unsigned char* Qs = smem_raw + pad;
  unsigned char* Ks = Qs + QBYTES;
  unsigned char* Vs = Ks + STAGES * TBYTES;
  const uint32_t q_addr = raw_addr + pad, k_addr = q_addr + QBYTES, v_addr = k_addr + STAGES * TBYTES;
  __shared__ uint64_t full_bar[STAGES], empty_bar[STAGES];  // TMA: a stage's tiles landed / read

  // Blocks start in the order of their index, x fastest: the head groups of one query tile side by
  // side, the tiles with the most keys first, so the last blocks to start are the shortest.
  const int qt = gridDim.y - 1 - blockIdx.y;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, c4 = lane & 3;
  const int wg = warp >> 2;
  const int h = blockIdx.x * HPB + wg / WGH;  // this warp's head
  const int kvh = blockIdx.x * HPB / (H / Hkv);  // the block's heads share it
  const int64_t q0 = int64_t(qt) * QB;
  const int64_t ldkv = int64_t(Hkv) * hd;
  const float qscale = scale * 1.4426950408889634f;
  const int64_t last_t = min(T, q0 + QB) - 1;
  const int64_t n_keys = n_past + last_t + 1;
  const int64_t n_tiles = (n_keys + BK - 1) / BK;
  const uint16_t* kb = kc + int64_t(kvh) * hd;
  const uint16_t* vb = vc + int64_t(kvh) * hd;
  const int64_t wq = q0 + (warp % (4 * WGH)) * 16;  // this warp's first query
  const int64_t wg_last = n_past + q0 + (wg % WGH) * 64 + 63;  // the last key any row of this warpgroup sees
  const int64_t t_lo = wq + gq, t_hi = wq + gq + 8;

  // Row r's 16-byte chunk c (head dims 8c .. 8c + 7) of a tile of `rows` rows: column block c / 8,
  // chunk c % 8 swizzled with the row.
  auto swz = [](int r, int c, int rows) -> uint32_t {
    return uint32_t(c >> 3) * (rows * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4);
  };
  auto load_tile = [&](int64_t tile, int buf) {
    constexpr int CH = HDP / 8;
    const int64_t k0 = tile * BK;
    for (int e = tid; e < BK * CH; e += 128 * WG) {
      const int r = e / CH, c = e - r * CH;
      const int64_t key = k0 + r;
      const bool ok = key < n_keys && c * 8 < hd;
      const int64_t off = ok ? key * ldkv + c * 8 : 0;
      const uint32_t o = buf * TBYTES + swz(r, c, BK);
      cp_async16(Ks + o, kb + off, ok);
      cp_async16(Vs + o, vb + off, ok);
    }
  };
  if constexpr (TMA) {
    if (tid == 0) {
      for (int i = 0; i < STAGES; ++i) {
        mbar_init(&full_bar[i], 1);            // the producer's arrival with the bytes it expects
        mbar_init(&empty_bar[i], 4 * WG);      // every computing warp
      }
      mbar_init_fence();
    }
  } else {
    load_tile(0, 0);
    cp_async_commit();
  }

  // The factors that undo the scalings: scores of rows t_lo / t_hi times s_mul[0] / [1], the
  // output times 2^(shift of V) (o and l both carry the probabilities' 2^15).
  float s_mul[2] = {1.0f, 1.0f};
  const int sk = -shift_for(kv_max[0]);
  const float o_mul = pow2(-shift_for(kv_max[1]));
  const bool producer = TMA && wg == WG;  // the copy engine's warpgroup
  if (!producer) {
    stage_q_rows_f16<HDP>(q, ldq, wq, T, h, hd, qscale, sk, lane, gq, s_mul, [&](int r, int d, uint32_t v) {
      const int row = warp * 16 + r;
      *reinterpret_cast<uint32_t*>(Qs + swz(row, d >> 3, QR) + (d & 7) * 2) = v;
    });
  }

  float o[HDP / 8][4];
#pragma unroll
  for (int i = 0; i < HDP / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
  const uint32_t q_wg = q_addr + wg * 64 * 128;  // this warpgroup's 64 rows of Q
  using Scores = float[BK / 8][4];

  // QREG: this warp's Q fragments, loaded from Q's staged rows once the block has met (below).
  uint32_t qf[QREG ? HDP / 16 : 1][4];
  // S = Q K^T of the tile in buffer buf, issued (not committed).
  auto issue_s = [&](Scores& sc, int buf) {
    const uint32_t kt = k_addr + buf * TBYTES;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < HDP / 16; ++kk) {
      const uint32_t col = (kk & 3) * 32;  // 16 dims into the 128-byte rows
      const uint64_t db = sw128_desc(kt + (kk >> 2) * (BK * 128) + col, 16, 1024);
      if constexpr (QREG) {
        wgmma_rs<BK>(sc, qf[kk], db, kk > 0);
      } else {
        const uint64_t da = sw128_desc(q_wg + (kk >> 2) * (QR * 128) + col, 16, 1024);
        wgmma_ss<BK>(sc, da, db, kk > 0);
      }
    }
  };
  // The online softmax over S of keys k0.. (complete) and O += P V of buffer buf, issued.
  // (The mask goes into a copy: ptxas serializes every wgmma of a kernel whose ordinary
  // instructions write an MMA's accumulators while MMAs are in flight.)
  auto softmax_issue_pv = [&](const Scores& sc, int buf, int64_t k0) {
    uint32_t p[BK / 16][4];
    auto softmax = [&](const Scores& x) {
      float off[2];
      online_softmax_step_scaled(x, s_mul, mrow, lrow, o, off);
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) probs_f16_scaled<SOFT>(x[2 * kk], x[2 * kk + 1], s_mul, off, lrow, p[kk]);
    };
    if (k0 + BK - 1 > n_past + wq) {  // the tile reaches past some query of this warp: mask
      Scores masked;
#pragma unroll
      for (int i = 0; i < BK / 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) masked[i][j] = sc[i][j];
      mask_keys_after(masked, k0, c4, n_past + t_lo, n_past + t_hi);
      softmax(masked);
    } else {
      softmax(sc);
    }
    const uint32_t vt = v_addr + buf * TBYTES;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk)  // 16 keys: 2 of V's 8-row groups
      wgmma_rs_tb<HDP>(o, p[kk], sw128_desc(vt + kk * 16 * 128, BK * 128, 1024));
  };
  Scores sc;
#pragma unroll
  for (int i = 0; i < BK / 8; ++i) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.0f;
  // One tile's work, its keys landed in buffer buf.
  auto attend = [&](int buf, int64_t k0) {
    issue_s(sc, buf);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(sc);
    softmax_issue_pv(sc, buf, k0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(o);
  };
  if constexpr (TMA) {
    fence_proxy_async();  // Q's stores seen by the tensor cores
    __syncthreads();      // ... every thread's; the barriers initialized
    if (producer) {
      set_max_registers<false, kProducerRegs>();
      if (warp == 4 * WG && lane == 0) {
        for (int64_t tile = 0; tile < n_tiles; ++tile) {
          const int st = static_cast<int>(tile % STAGES);
          if (tile >= STAGES) mbar_wait(&empty_bar[st], static_cast<uint32_t>((tile / STAGES - 1) & 1));
          mbar_arrive_expect_tx(&full_bar[st], 2 * TBYTES);
          const int y = static_cast<int>(tile * BK);
#pragma unroll
          for (int cb = 0; cb < CB; ++cb) {
            const int x = kvh * hd + cb * 64;
            tma_load_2d(Ks + st * TBYTES + cb * BK * 128, &tmk, x, y, &full_bar[st]);
            tma_load_2d(Vs + st * TBYTES + cb * BK * 128, &tmv, x, y, &full_bar[st]);
          }
        }
      }
      return;
    }
    set_max_registers<true, kConsumerRegs>();
    if constexpr (QREG) {
      // ldmatrix x4: lanes 0-7 / 8-15 / 16-23 / 24-31 address rows 0-7 / 8-15 / 0-7 / 8-15 of the
      // warp's 16, dims 8c.. of chunk c = 2 kk / 2 kk / 2 kk + 1 / 2 kk + 1: mma.sync's A order.
      const int row = warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
#pragma unroll
      for (int kk = 0; kk < HDP / 16; ++kk) ldmatrix_x4(qf[kk], Qs + swz(row, 2 * kk + (lane >> 4), QR));
    }
    auto landed = [&](int64_t tile) {
      mbar_wait(&full_bar[tile % STAGES], static_cast<uint32_t>((tile / STAGES) & 1));
    };
    auto release = [&](int64_t tile) {
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty_bar[tile % STAGES]);
    };
    if constexpr (PIPE) {
      // S of the next tile runs on the tensor cores while this one's softmax runs on the rest:
      // step j holds S_j in sj, issues S_{j+1} into sn, then tile j's softmax and P V.
      Scores sb;
#pragma unroll
      for (int i = 0; i < BK / 8; ++i) sb[i][0] = sb[i][1] = sb[i][2] = sb[i][3] = 0.0f;
      landed(0);
      issue_s(sc, 0);  // tile 0 is never in the future
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(sc);
      auto step = [&](Scores& sj, Scores& sn, int64_t j) {
        const bool next = j + 1 < n_tiles && (j + 1) * BK <= wg_last;
        if (j + 1 < n_tiles) landed(j + 1);
        if (next) {
          issue_s(sn, static_cast<int>((j + 1) % STAGES));
          wgmma_commit();
        }
        if (j * BK <= wg_last) {
          softmax_issue_pv(sj, static_cast<int>(j % STAGES), j * BK);
          wgmma_commit();
        }
        wgmma_wait<0>();
        fence_regs(sn);
        fence_regs(o);
        release(j);
      };
      for (int64_t j = 0; j < n_tiles; j += 2) {
        step(sc, sb, j);
        if (j + 1 < n_tiles) step(sb, sc, j + 1);
      }
    } else {
      for (int64_t tile = 0; tile < n_tiles; ++tile) {
        const int64_t k0 = tile * BK;
        landed(tile);
        if (k0 <= wg_last) attend(static_cast<int>(tile % STAGES), k0);  // else all in this warpgroup's future
        release(tile);
      }
    }
  } else {
    for (int64_t tile = 0; tile < n_tiles; ++tile) {
      const int buf = static_cast<int>(tile & 1);
      cp_async_wait<0>();
      fence_proxy_async();  // this thread's copies (and Q's stores) seen by the tensor cores
      __syncthreads();      // ... every thread's; and every warpgroup done with the other buffer
      if (tile + 1 < n_tiles) {
        load_tile(tile + 1, buf ^ 1);
        cp_async_commit();
      }
      const int64_t k0 = tile * BK;
      if (k0 <= wg_last) attend(buf, k0);  // else every key is in this warpgroup's future (and of the rest)
    }
  }
  lrow[0] /= o_mul;  // out = o / l * 2^(shift of V), exactly
  lrow[1] /= o_mul;
  store_rows(o, lrow, out, int64_t(H) * hd, h, hd, t_lo, t_hi, T, c4);
#else
  // Built without sm_90a code (this PTX's target): never launched (flash_wgmma_available()).
  (void)q, (void)ldq, (void)T, (void)kc, (void)vc, (void)kv_max, (void)n_past, (void)H, (void)Hkv, (void)hd,
      (void)scale, (void)out, (void)tmk, (void)tmv;
  __trap();
#endif
}

__global__ void ex2_fma_kernel(const float* x, float* y, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = ex2_fma(x[i]);
}

// Whether the code running on this device was compiled for sm_90a.
__global__ void wgmma_probe_kernel(int* has) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *has = 1;
#else
  *has = 0;
#endif
}

// The fp16 cache copy (rows x ld values, ld = KV heads x head size) as a 2D tensor map whose box
// is 64 values x bk rows (one 128-byte column block of a tile), 128-byte swizzled; false where
// the driver has no encoder.
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
bool cache_tensor_map(CUtensorMap& map, const uint16_t* base, int64_t rows, int64_t ld, int bk) {
  static const EncodeTiled encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      return static_cast<EncodeTiled>(nullptr);
    return reinterpret_cast<EncodeTiled>(fn);
  }();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(ld), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld) * sizeof(uint16_t)};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(bk)};
  const cuuint32_t elem_strides[2] = {1, 1};
  return encode(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, const_cast<uint16_t*>(base), dims, strides, box,
                elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <int HDP, int BK, int WG, int HPB, int MINB, bool TMA = false, int STAGES = 2, bool PIPE = false,
          bool QREG = false, int SOFT = 0>
void launch_wgmma(const float* q, int64_t ldq, int64_t T, const uint16_t* k16, const uint16_t* v16,
                  const uint32_t* kv_max, int64_t n_past, int H, int Hkv, int hd, float scale, float* out,
                  const CUtensorMap& tmk, const CUtensorMap& tmv, cudaStream_t s) {
  constexpr int QB = 64 * WG / HPB;
  constexpr size_t smem = 1024 + size_t(HDP / 64) * 128 * (64 * WG + 2 * STAGES * BK);
  static_assert(smem <= 227 * 1024, "shared memory of one block");
  auto* kernel = attn_flash_wgmma_kernel<HDP, BK, WG, HPB, MINB, TMA, STAGES, PIPE, QREG, SOFT>;
  static bool attr_set = false;  // per template instance
  if (!attr_set) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "attention (wgmma) smem");
    attr_set = true;
  }
  if ((T + QB - 1) / QB > 65535) throw Error("attention (flash wgmma): more than 65535 query tiles in one call");
  const dim3 grid(static_cast<unsigned>(H / HPB), static_cast<unsigned>((T + QB - 1) / QB));
  launch(kernel, grid, 128 * (WG + (TMA ? 1 : 0)), smem, s, q, ldq, T, k16, v16, kv_max, n_past, H, Hkv, hd, scale,
         out, tmk, tmv);
  check_launch("attention (flash wgmma)");
}

constexpr int kVariants = 23;
constexpr int kDefaultVariant = 12;  // the copy engine's 128-key tiles, 3 warpgroups of one head: see below

std::atomic<int>& wgmma_setting() {
  static std::atomic<int> v{[] {
    const char* e = std::getenv("FH1_CUDA_FLASH_WGMMA");
    return e ? std::clamp(std::atoi(e), 0, kVariants) : kDefaultVariant;
  }()};
  return v;
}

// The block shapes (FH1_CUDA_FLASH_WGMMA / set_flash_wgmma), each (warpgroups, heads a block,
// blocks an SM), 64-key tiles: by cp.async 1 (4, 2, 1), 2 (2, 1, 2), 3 (2, 2, 2); by the copy
// engine (4 stages, one more warp) 4 (2, 1, 1), 5 (3, 1, 1), 6 (3, 3, 1), 7 (2, 2, 1), with
// the next tile's S in flight during the softmax 8 (2, 1, 1), 9 (2, 2, 1), with 5 stages 10
// (3, 1, 1), with tiles of 128 keys in 3 stages 11 (2, 1, 1), in 2 stages 12 (3, 1, 1), 13
// (2, 1, 1), 14 (3, 3, 1) and 15 (2, 2, 1), and with Q in registers 16 (2, 1, 1), 17 (2, 2, 1)
// and, at head size 64 (else 12: 3 warpgroups' registers hold no Q of 128 dims), 18 (3, 1, 1);
// with Q in registers and 64-key tiles in 4 stages 19 (3, 1, 1) and 20 (3, 3, 1); with some
// exponentials on the FMA pipe (SOFT of every 8), at head size 64 12 with 2 (21) or 3 (22) and
// 18 with 2 (23), at head size 128 13 with 2 (21), 16 with 2 (22), 23 as 21 (docs/cuda.md:
// their times). Several
// heads a block only where the query heads of a KV head come in such groups (else the shape
// with one head); the copy engine only where the head size is 64 or 128 (else 1).
template <int HDP>
void launch_wgmma_variant(int variant, const float* q, int64_t ldq, int64_t T, const uint16_t* k16,
                          const uint16_t* v16, const uint32_t* kv_max, int64_t n_past, int H, int Hkv, int hd,
                          float scale, float* out, cudaStream_t s) {
  const int group = H / Hkv;
  CUtensorMap tmk{}, tmv{};
  if (variant >= 4) {
    const int64_t rows = n_past + T, ld = int64_t(Hkv) * hd;
    const int bk = variant >= 11 ? 128 : 64;
    if (hd != HDP || !cache_tensor_map(tmk, k16, rows, ld, bk) || !cache_tensor_map(tmv, v16, rows, ld, bk))
      variant = 1;
  }
  if (group % 2 != 0 && (variant == 1 || variant == 3)) variant = 2;
  if (group % 2 != 0 && variant == 7) variant = 4;
  if (group % 2 != 0 && variant == 9) variant = 8;
  if (group % 3 != 0 && variant == 6) variant = 5;
  if (group % 3 != 0 && variant == 14) variant = 12;
  if (group % 2 != 0 && variant == 15) variant = 13;
  if (group % 2 != 0 && variant == 17) variant = 16;
  if (HDP != 64 && variant == 18) variant = 12;
  if (group % 3 != 0 && variant == 20) variant = 19;
  if (HDP != 64 && variant == 23) variant = 21;
#define FH1_WGMMA(...) \
  launch_wgmma<HDP, __VA_ARGS__>(q, ldq, T, k16, v16, kv_max, n_past, H, Hkv, hd, scale, out, tmk, tmv, s)
  switch (variant) {
    case 2: FH1_WGMMA(64, 2, 1, 2); break;
    case 3: FH1_WGMMA(64, 2, 2, 2); break;
    case 4: FH1_WGMMA(64, 2, 1, 1, true, 4); break;
    case 5: FH1_WGMMA(64, 3, 1, 1, true, 4); break;
    case 6: FH1_WGMMA(64, 3, 3, 1, true, 4); break;
    case 7: FH1_WGMMA(64, 2, 2, 1, true, 4); break;
    case 8: FH1_WGMMA(64, 2, 1, 1, true, 4, true); break;
    case 9: FH1_WGMMA(64, 2, 2, 1, true, 4, true); break;
    case 10: FH1_WGMMA(64, 3, 1, 1, true, 5); break;
    case 11: FH1_WGMMA(128, 2, 1, 1, true, 3); break;
    case 12: FH1_WGMMA(128, 3, 1, 1, true, 2); break;
    case 13: FH1_WGMMA(128, 2, 1, 1, true, 2); break;
    case 14: FH1_WGMMA(128, 3, 3, 1, true, 2); break;
    case 15: FH1_WGMMA(128, 2, 2, 1, true, 2); break;
    case 16: FH1_WGMMA(128, 2, 1, 1, true, 2, false, true); break;
    case 17: FH1_WGMMA(128, 2, 2, 1, true, 2, false, true); break;
    case 18:
      if constexpr (HDP == 64) FH1_WGMMA(128, 3, 1, 1, true, 2, false, true);
      break;
    case 19: FH1_WGMMA(64, 3, 1, 1, true, 4, false, true); break;
    case 20: FH1_WGMMA(64, 3, 3, 1, true, 4, false, true); break;
    // (At head size 128, 3 warpgroups' registers do not hold the software exponentials: ptxas
    // spills; 2 warpgroups there.)
    case 21:
      if constexpr (HDP == 64) FH1_WGMMA(128, 3, 1, 1, true, 2, false, false, 2);
      else FH1_WGMMA(128, 2, 1, 1, true, 2, false, false, 2);
      break;
    case 22:
      if constexpr (HDP == 64) FH1_WGMMA(128, 3, 1, 1, true, 2, false, false, 3);
      else FH1_WGMMA(128, 2, 1, 1, true, 2, false, true, 2);
      break;
    case 23:
      if constexpr (HDP == 64) FH1_WGMMA(128, 3, 1, 1, true, 2, false, true, 2);
      break;
    default: FH1_WGMMA(64, 4, 2, 1);
  }
#undef FH1_WGMMA
}

}  // namespace

bool flash_wgmma_available() {
  static const bool available = [] {
    int dev = 0;
    cudaDeviceProp prop{};
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return false;
    if (prop.major != 9 || prop.minor != 0) return false;
    int* flag = nullptr;
    int has = 0;
    cudaStream_t st = nullptr;
    check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "wgmma probe: stream");
    check(cudaMallocAsync(&flag, sizeof(int), st), "wgmma probe: alloc");
    wgmma_probe_kernel<<<1, 1, 0, st>>>(flag);
    check_launch("wgmma probe");
    check(cudaMemcpyAsync(&has, flag, sizeof(int), cudaMemcpyDeviceToHost, st), "wgmma probe: copy");
    check(cudaFreeAsync(flag, st), "wgmma probe: free");
    check(cudaStreamSynchronize(st), "wgmma probe");
    check(cudaStreamDestroy(st), "wgmma probe: stream");
    return has == 1;
  }();
  return available;
}

void set_flash_wgmma(int variant) { wgmma_setting().store(std::clamp(variant, 0, kVariants)); }
int flash_wgmma_variants() { return kVariants; }

void exp2_fma_values(const float* x, float* y, int64_t n) {
  if (n <= 0) return;
  check(cudaDeviceSynchronize(), "exp2_fma_values: inputs");
  ex2_fma_kernel<<<static_cast<unsigned>((n + 255) / 256), 256>>>(x, y, n);
  check_launch("exp2_fma_values");
  check(cudaDeviceSynchronize(), "exp2_fma_values");
}
int flash_wgmma() { return flash_wgmma_available() ? wgmma_setting().load() : 0; }

bool attention_prefill_wgmma(const float* q, int64_t ldq, int64_t T, const uint16_t* k16, const uint16_t* v16,
                             const uint32_t* kv_max, int64_t n_past, int H, int Hkv, int hd, float scale, float* out,
                             cudaStream_t s) {
  const int variant = flash_wgmma();
  if (variant == 0 || hd <= 32 || hd > 128) return false;
  if (hd <= 64) launch_wgmma_variant<64>(variant, q, ldq, T, k16, v16, kv_max, n_past, H, Hkv, hd, scale, out, s);
  else launch_wgmma_variant<128>(variant, q, ldq, T, k16, v16, kv_max, n_past, H, Hkv, hd, scale, out, s);
  return true;
}

}  // namespace fh1::cuda
