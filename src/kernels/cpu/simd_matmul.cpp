// Matrix products of the fast CPU backend (see simd_kernels.h), compiled once per instruction set
// by Highway's foreach_target and dispatched at run time.
//
// matmul_block is "dot form": weight rows and token rows are both contiguous along K, so a tile of
// kMR tokens x kNR weight rows keeps kMR * kNR vector accumulators, loads kMR + kNR vectors per
// step of K and reduces each accumulator once at the end. No transposition of the weights is
// needed; bf16/f16 rows are either widened on the fly (few tokens: memory bound) or converted once
// per block into scratch and reused by every token (prefill: compute bound).
// gemm is "broadcast form" (vectorized along N), for the small products of the scan and attention.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/simd_matmul.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/cache_control.h"
#include "hwy/highway.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/simd_kernels.h"
#include "quant/blocks.h"
#include "util/error.h"
#include "util/half.h"

HWY_BEFORE_NAMESPACE();
namespace fh1::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Register tiles: AVX-512 has 32 vector registers, the others 16.
#if HWY_TARGET <= HWY_AVX3
constexpr int kMR = 6, kNR = 4;  // 24 accumulators
constexpr int kGemmMR = 8;       // 16 accumulators
#else
constexpr int kMR = 3, kNR = 3;
constexpr int kGemmMR = 4;
#endif

constexpr int64_t kPackMinTokens = 4;  // from this many tokens on, weights are packed once per block

HWY_INLINE VF LoadW(DF d, const float* p) { return hn::LoadU(d, p); }
HWY_INLINE VF LoadW(DF d, const hwy::bfloat16_t* p) {
  return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::bfloat16_t, DF>(), p));
}
HWY_INLINE VF LoadW(DF d, const hwy::float16_t* p) {
  return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::float16_t, DF>(), p));
}
HWY_INLINE float ScalarW(const float* p) { return *p; }
HWY_INLINE uint16_t Bits16(const void* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  return b;
}
HWY_INLINE float ScalarW(const hwy::bfloat16_t* p) { return bf16_to_f32(Bits16(p)); }
HWY_INLINE float ScalarW(const hwy::float16_t* p) { return f16_to_f32(Bits16(p)); }

// out[r * kNR + c] = x_r . w_c over K, for MR token rows and kNR weight rows (pointers may repeat).
template <int MR, class WT>
HWY_INLINE void DotTile(const float* const* xr, const WT* const* wr, int64_t K, float* out) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  VF acc[MR][kNR];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < kNR; ++c) acc[r][c] = hn::Zero(d);
  int64_t k = 0;
  for (; k + L <= K; k += L) {
    VF w[kNR];
    for (int c = 0; c < kNR; ++c) w[c] = LoadW(d, wr[c] + k);
    for (int r = 0; r < MR; ++r) {
      const VF xv = hn::LoadU(d, xr[r] + k);
      for (int c = 0; c < kNR; ++c) acc[r][c] = hn::MulAdd(xv, w[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < kNR; ++c) {
      float s = hn::GetLane(hn::SumOfLanes(d, acc[r][c]));
      for (int64_t kk = k; kk < K; ++kk) s += xr[r][kk] * ScalarW(wr[c] + kk);
      out[r * kNR + c] = s;
    }
}

template <int MR, class WT>
void TokenTile(const float* x, int64_t ldx, int64_t t, int64_t mr, const WT* w, int64_t ldw, int64_t r0,
               int64_t r1, int64_t K, const float* bias, float* y, int64_t ldy) {
  const float* xr[MR];
  for (int i = 0; i < MR; ++i) xr[i] = x + (t + std::min<int64_t>(i, mr - 1)) * ldx;
  float out[MR * kNR];
  for (int64_t r = r0; r < r1; r += kNR) {
    const int64_t nr = std::min<int64_t>(kNR, r1 - r);
    const WT* wr[kNR];
    for (int c = 0; c < kNR; ++c) wr[c] = w + (r - r0 + std::min<int64_t>(c, nr - 1)) * ldw;
    DotTile<MR>(xr, wr, K, out);
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t c = 0; c < nr; ++c)
        y[(t + i) * ldy + r + c] = out[i * kNR + c] + (bias ? bias[r + c] : 0.0f);
  }
}

// Rows [r0, r1) of w (row stride ldw, first row = row r0) against tokens [t0, t1).
template <class WT>
void DotRows(const float* x, int64_t ldx, int64_t t0, int64_t t1, const WT* w, int64_t ldw, int64_t r0, int64_t r1,
             int64_t K, const float* bias, float* y, int64_t ldy) {
  for (int64_t t = t0; t < t1; t += kMR) {
    const int64_t mr = std::min<int64_t>(kMR, t1 - t);
    switch (mr) {  // a tile only as tall as the tokens it has: decode is one token
      case 1: TokenTile<1>(x, ldx, t, mr, w, ldw, r0, r1, K, bias, y, ldy); break;
      case 2: TokenTile<2>(x, ldx, t, mr, w, ldw, r0, r1, K, bias, y, ldy); break;
      case 3: TokenTile<3>(x, ldx, t, mr, w, ldw, r0, r1, K, bias, y, ldy); break;
#if HWY_TARGET <= HWY_AVX3
      case 4: TokenTile<4>(x, ldx, t, mr, w, ldw, r0, r1, K, bias, y, ldy); break;
      case 5: TokenTile<5>(x, ldx, t, mr, w, ldw, r0, r1, K, bias, y, ldy); break;
#endif
      default: TokenTile<kMR>(x, ldx, t, mr, w, ldw, r0, r1, K, bias, y, ldy); break;
    }
  }
}

// Decode GEMV: MR (1..3) tokens, one weight row at a time so the weights are read as one sequential
// stream, four independent accumulators per token along K, and a software prefetch ahead.
template <int MR, class WT>
void GemvRows(const float* x, int64_t ldx, int64_t t, const WT* w, int64_t ldw, int64_t r0, int64_t r1, int64_t K,
              const float* bias, float* y, int64_t ldy) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  constexpr int64_t kAhead = 4096 / sizeof(WT);     // elements prefetched ahead: 4 KB
  constexpr int64_t kLine = 64 / sizeof(WT);        // elements per cache line
  for (int64_t r = r0; r < r1; ++r) {
    const WT* wr = w + (r - r0) * ldw;
    VF acc[MR][4];
    for (int i = 0; i < MR; ++i)
      for (int u = 0; u < 4; ++u) acc[i][u] = hn::Zero(d);
    int64_t k = 0;
    for (; k + 4 * L <= K; k += 4 * L) {
      for (int64_t b = 0; b < 4 * L; b += kLine) hwy::Prefetch(wr + k + kAhead + b);
      for (int u = 0; u < 4; ++u) {
        const VF wv = LoadW(d, wr + k + u * L);
        for (int i = 0; i < MR; ++i) acc[i][u] = hn::MulAdd(hn::LoadU(d, x + (t + i) * ldx + k + u * L), wv, acc[i][u]);
      }
    }
    for (; k + L <= K; k += L) {
      const VF wv = LoadW(d, wr + k);
      for (int i = 0; i < MR; ++i) acc[i][0] = hn::MulAdd(hn::LoadU(d, x + (t + i) * ldx + k), wv, acc[i][0]);
    }
    for (int i = 0; i < MR; ++i) {
      float s = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(acc[i][0], acc[i][1]), hn::Add(acc[i][2], acc[i][3]))));
      for (int64_t kk = k; kk < K; ++kk) s += x[(t + i) * ldx + kk] * ScalarW(wr + kk);
      y[(t + i) * ldy + r] = s + (bias ? bias[r] : 0.0f);
    }
  }
}

template <class WT>
void Gemv(const float* x, int64_t ldx, int64_t t0, int64_t t1, const WT* w, int64_t ldw, int64_t r0, int64_t r1,
          int64_t K, const float* bias, float* y, int64_t ldy) {
  switch (t1 - t0) {
    case 1: return GemvRows<1>(x, ldx, t0, w, ldw, r0, r1, K, bias, y, ldy);
    case 2: return GemvRows<2>(x, ldx, t0, w, ldw, r0, r1, K, bias, y, ldy);
    case 3: return GemvRows<3>(x, ldx, t0, w, ldw, r0, r1, K, bias, y, ldy);
    default: return DotRows(x, ldx, t0, t1, w, ldw, r0, r1, K, bias, y, ldy);
  }
}

// Prefill GEMM, "broadcast form": weight rows are packed, widened and transposed, into panels of
// kPNV vectors of columns ([K][kPNV * lanes] each, zero padded), once per block; a tile of kPMR
// tokens x one panel keeps kPMR * kPNV accumulators, loads kPNV panel vectors and broadcasts kPMR
// token values per step of K: no horizontal reductions, FMA bound.
#if HWY_TARGET <= HWY_AVX3
constexpr int kPMR = 8, kPNV = 3;  // 24 accumulators of 32 registers
#else
constexpr int kPMR = 4, kPNV = 2;
#endif

template <class WT>
void PackPanels(const WT* w, int64_t ldw, int64_t rows, int64_t K, float* packed) {
  const int64_t PW = kPNV * static_cast<int64_t>(hn::Lanes(DF()));
  constexpr int64_t kKB = 32;  // a block of K: the panel lines it writes stay in L1
  for (int64_t p0 = 0; p0 < rows; p0 += PW) {
    float* panel = packed + p0 * K;
    const int64_t nv = std::min(PW, rows - p0);
    for (int64_t k0 = 0; k0 < K; k0 += kKB) {
      const int64_t k1 = std::min(K, k0 + kKB);
      for (int64_t j = 0; j < PW; ++j) {
        if (j >= nv) {
          for (int64_t k = k0; k < k1; ++k) panel[k * PW + j] = 0.0f;
          continue;
        }
        const WT* row = w + (p0 + j) * ldw;
        for (int64_t k = k0; k < k1; ++k) panel[k * PW + j] = ScalarW(row + k);
      }
    }
  }
}

template <int MR>
HWY_INLINE void PanelTile(const float* x, int64_t ldx, const float* panel, int64_t K, float* y, int64_t ldy,
                          int64_t nv, const float* bias) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d)), PW = kPNV * L;
  VF acc[MR][kPNV];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < kPNV; ++c) acc[r][c] = hn::Zero(d);
  for (int64_t k = 0; k < K; ++k) {
    VF w[kPNV];
    for (int c = 0; c < kPNV; ++c) w[c] = hn::LoadU(d, panel + k * PW + c * L);
    for (int r = 0; r < MR; ++r) {
      const VF xv = hn::Set(d, x[r * ldx + k]);
      for (int c = 0; c < kPNV; ++c) acc[r][c] = hn::MulAdd(xv, w[c], acc[r][c]);
    }
  }
  HWY_ALIGN float tmp[kPNV * 16 * 4];
  for (int r = 0; r < MR; ++r) {
    float* yr = y + r * ldy;
    for (int c = 0; c < kPNV; ++c) {
      VF v = acc[r][c];
      if (nv == PW) {
        if (bias) v = hn::Add(v, hn::LoadU(d, bias + c * L));
        hn::StoreU(v, d, yr + c * L);
      } else {
        hn::StoreU(v, d, tmp + c * L);
      }
    }
    if (nv != PW)
      for (int64_t j = 0; j < nv; ++j) yr[j] = tmp[j] + (bias ? bias[j] : 0.0f);
  }
}

// Tokens [t0, t1) x packed rows [r0, r1).
void PanelRows(const float* x, int64_t ldx, int64_t t0, int64_t t1, const float* packed, int64_t r0, int64_t r1,
               int64_t K, const float* bias, float* y, int64_t ldy) {
  const int64_t PW = kPNV * static_cast<int64_t>(hn::Lanes(DF()));
  for (int64_t t = t0; t < t1; t += kPMR) {
    const int64_t mr = std::min<int64_t>(kPMR, t1 - t);
    for (int64_t p0 = r0; p0 < r1; p0 += PW) {
      const float* panel = packed + (p0 - r0) * K;
      const int64_t nv = std::min(PW, r1 - p0);
      const float* xt = x + t * ldx;
      float* yt = y + t * ldy + p0;
      const float* b = bias ? bias + p0 : nullptr;
      switch (mr) {
        case 1: PanelTile<1>(xt, ldx, panel, K, yt, ldy, nv, b); break;
        case 2: PanelTile<2>(xt, ldx, panel, K, yt, ldy, nv, b); break;
        case 3: PanelTile<3>(xt, ldx, panel, K, yt, ldy, nv, b); break;
#if HWY_TARGET <= HWY_AVX3
        case 4: PanelTile<4>(xt, ldx, panel, K, yt, ldy, nv, b); break;
        case 5: PanelTile<5>(xt, ldx, panel, K, yt, ldy, nv, b); break;
        case 6: PanelTile<6>(xt, ldx, panel, K, yt, ldy, nv, b); break;
        case 7: PanelTile<7>(xt, ldx, panel, K, yt, ldy, nv, b); break;
#endif
        default: PanelTile<kPMR>(xt, ldx, panel, K, yt, ldy, nv, b); break;
      }
    }
  }
}

template <class WT>
void WidenRows(const WT* w, int64_t n, float* out) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(LoadW(d, w + i), d, out + i);
  for (; i < n; ++i) out[i] = ScalarW(w + i);
}

void MatmulBlock(const float* x, int64_t ldx, int64_t t0, int64_t t1, const WeightView& W, int64_t r0, int64_t r1,
                 const float* bias, float* y, int64_t ldy, float* scratch) {
  const int64_t K = W.cols;
  const bool pack = t1 - t0 >= kPackMinTokens && scratch != nullptr;
  if (W.dtype == DType::F32) {
    const float* w = static_cast<const float*>(W.data) + r0 * K;
    if (!pack) return Gemv(x, ldx, t0, t1, w, K, r0, r1, K, bias, y, ldy);
    PackPanels(w, K, r1 - r0, K, scratch);
  } else if (W.dtype == DType::BF16) {
    const auto* w = static_cast<const hwy::bfloat16_t*>(W.data) + r0 * K;
    if (!pack) return Gemv(x, ldx, t0, t1, w, K, r0, r1, K, bias, y, ldy);
    PackPanels(w, K, r1 - r0, K, scratch);
  } else if (W.dtype == DType::F16) {
    const auto* w = static_cast<const hwy::float16_t*>(W.data) + r0 * K;
    if (!pack) return Gemv(x, ldx, t0, t1, w, K, r0, r1, K, bias, y, ldy);
    PackPanels(w, K, r1 - r0, K, scratch);
  } else if (is_quantized_dtype(W.dtype)) {
    // Dequantized exactly to f32, a panel's rows (or, without scratch, one row) at a time.
    const auto* w = static_cast<const uint8_t*>(W.data);
    const int64_t rb = dtype_row_bytes(W.dtype, K);
    const int64_t PW = pack ? kPNV * static_cast<int64_t>(hn::Lanes(DF())) : 1;
    thread_local std::vector<float> rows_f32;
    if (rows_f32.size() < static_cast<size_t>(PW * K)) rows_f32.resize(static_cast<size_t>(PW * K));
    for (int64_t p0 = r0; p0 < r1; p0 += PW) {
      const int64_t n = std::min(PW, r1 - p0);
      for (int64_t r = 0; r < n; ++r) quant::dequantize_row(W.dtype, w + (p0 + r) * rb, K, rows_f32.data() + r * K);
      if (pack) {
        PackPanels(rows_f32.data(), K, n, K, scratch + (p0 - r0) * K);
      } else {
        Gemv(x, ldx, t0, t1, rows_f32.data(), K, p0, p0 + 1, K, bias, y, ldy);
      }
    }
    if (!pack) return;
  } else {
    throw Error(std::string("CPU kernels cannot read weights of dtype ") + dtype_name(W.dtype));
  }
  PanelRows(x, ldx, t0, t1, scratch, r0, r1, K, bias, y, ldy);
}

// C rows [m, m + MR) x columns [n, n + 2 lanes) (masked at the right edge).
template <int MR>
HWY_INLINE void GemmTile(int64_t m, int64_t n, int64_t N, int64_t K, const float* A, int64_t lda_m, int64_t lda_k,
                         const float* B, int64_t ldb, float* C, int64_t ldc, bool accumulate, bool lower) {
  const DF d;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const int64_t nv = std::min<int64_t>(2 * L, N - n);
  const bool full = nv == 2 * L;
  const auto m0 = hn::FirstN(d, static_cast<size_t>(std::min(L, nv)));
  const auto m1 = hn::FirstN(d, static_cast<size_t>(std::max<int64_t>(0, nv - L)));
  VF acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = hn::Zero(d);
  const int64_t k_end = lower ? std::min<int64_t>(K, m + MR) : K;
  for (int64_t k = 0; k < k_end; ++k) {
    const float* b = B + k * ldb + n;
    const VF b0 = full ? hn::LoadU(d, b) : hn::MaskedLoad(m0, d, b);
    const VF b1 = full ? hn::LoadU(d, b + L) : hn::MaskedLoad(m1, d, b + L);
    const float* a = A + m * lda_m + k * lda_k;
    for (int r = 0; r < MR; ++r) {
      const VF av = hn::Set(d, a[r * lda_m]);
      acc0[r] = hn::MulAdd(av, b0, acc0[r]);
      acc1[r] = hn::MulAdd(av, b1, acc1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* c = C + (m + r) * ldc + n;
    if (full) {
      if (accumulate) {
        acc0[r] = hn::Add(acc0[r], hn::LoadU(d, c));
        acc1[r] = hn::Add(acc1[r], hn::LoadU(d, c + L));
      }
      hn::StoreU(acc0[r], d, c);
      hn::StoreU(acc1[r], d, c + L);
    } else {
      if (accumulate) {
        acc0[r] = hn::Add(acc0[r], hn::MaskedLoad(m0, d, c));
        acc1[r] = hn::Add(acc1[r], hn::MaskedLoad(m1, d, c + L));
      }
      hn::BlendedStore(acc0[r], m0, d, c);
      hn::BlendedStore(acc1[r], m1, d, c + L);
    }
  }
}

void Gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda_m, int64_t lda_k, const float* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate, bool lower) {
  const DF d;
  const int64_t NW = 2 * static_cast<int64_t>(hn::Lanes(d));
  for (int64_t m = 0; m < M; m += kGemmMR) {
    const int64_t mr = std::min<int64_t>(kGemmMR, M - m);
    for (int64_t n = 0; n < N; n += NW) {
#define FH1_GEMM_TILE(R) GemmTile<R>(m, n, N, K, A, lda_m, lda_k, B, ldb, C, ldc, accumulate, lower)
      switch (mr) {
        case 1: FH1_GEMM_TILE(1); break;
        case 2: FH1_GEMM_TILE(2); break;
        case 3: FH1_GEMM_TILE(3); break;
#if HWY_TARGET <= HWY_AVX3
        case 4: FH1_GEMM_TILE(4); break;
        case 5: FH1_GEMM_TILE(5); break;
        case 6: FH1_GEMM_TILE(6); break;
        case 7: FH1_GEMM_TILE(7); break;
#endif
        default: FH1_GEMM_TILE(kGemmMR); break;
      }
#undef FH1_GEMM_TILE
    }
  }
}

void DotRowsF32(const float* x, int64_t ldx, int64_t M, const float* w, int64_t ldw, int64_t N, int64_t K, float* y,
                int64_t ldy) {
  DotRows(x, ldx, 0, M, w, ldw, 0, N, K, nullptr, y, ldy);
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }
size_t FloatLanes() { return hn::Lanes(DF()); }

}  // namespace HWY_NAMESPACE
}  // namespace fh1::simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace fh1::simd {

HWY_EXPORT(MatmulBlock);
HWY_EXPORT(Gemm);
HWY_EXPORT(DotRowsF32);
HWY_EXPORT(TargetName);
HWY_EXPORT(FloatLanes);

const char* target_name() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }
size_t float_lanes() { return HWY_DYNAMIC_DISPATCH(FloatLanes)(); }

void matmul_block(const float* x, int64_t ldx, int64_t t0, int64_t t1, const WeightView& W, int64_t r0, int64_t r1,
                  const float* bias, float* y, int64_t ldy, float* scratch) {
  HWY_DYNAMIC_DISPATCH(MatmulBlock)(x, ldx, t0, t1, W, r0, r1, bias, y, ldy, scratch);
}

void dot_rows(const float* x, int64_t ldx, int64_t M, const float* w, int64_t ldw, int64_t N, int64_t K, float* y,
              int64_t ldy) {
  HWY_DYNAMIC_DISPATCH(DotRowsF32)(x, ldx, M, w, ldw, N, K, y, ldy);
}

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda_m, int64_t lda_k, const float* B, int64_t ldb,
          float* C, int64_t ldc, bool accumulate, bool lower_triangular) {
  HWY_DYNAMIC_DISPATCH(Gemm)(M, N, K, A, lda_m, lda_k, B, ldb, C, ldc, accumulate, lower_triangular);
}

}  // namespace fh1::simd
#endif  // HWY_ONCE
