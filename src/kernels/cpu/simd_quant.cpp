// Decode GEMV over block-quantized weights (Q8_0, Q4_0, Q4_K; layouts in quant/blocks.h) as int8
// dot products: the activations are quantized once per call to blocks of 32 int8 with a float
// scale (quant::quantize_activations), each weight block is multiplied in integers and scaled once.
// Weights are read in place from the mapped file, in GGUF's layout.
//
// Compiled per instruction set by Highway's foreach_target for the dispatch, but the integer dot
// product is written with x86 intrinsics: Highway 1.0 (Debian 12) has no int8 dot product op. On
// AVX-512 VNNI targets it is vpdpbusd; on AVX2 vpmaddubsw + vpmaddwd; elsewhere scalar code.
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL  // Highway compiles Ice Lake's AVX-512 (VNNI) target only on request
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/simd_quant.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/cache_control.h"
#include "hwy/highway.h"

#include <cstring>

#include "kernels/cpu/simd_kernels.h"
#include "quant/blocks.h"
#include "util/error.h"
#include "util/half.h"

#if HWY_ARCH_X86
#include <immintrin.h>
#endif

HWY_BEFORE_NAMESPACE();
namespace fh1::simd {
namespace HWY_NAMESPACE {

#undef FH1_QUANT_X86
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
#define FH1_QUANT_X86 1
#else
#define FH1_QUANT_X86 0
#endif

HWY_INLINE float F16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if FH1_QUANT_X86
  return _cvtsh_ss(h);
#else
  return f16_to_f32(h);
#endif
}

#if FH1_QUANT_X86
// 8 int32 lanes, each the sum of 4 products u8 x s8 (u < 128 or s small: no saturation here).
HWY_INLINE __m256i DotU8S8(__m256i u, __m256i s) {
#if HWY_TARGET <= HWY_AVX3_DL
  // vpdpbusd in its EVEX form (AVX512-VNNI + VL), written out: Highway 1.0's AVX3_DL target also
  // enables AVX-VNNI, so the intrinsic compiled to the VEX form, an illegal instruction on CPUs
  // with AVX-512 VNNI but no AVX-VNNI (AMD Zen 4), which the target's runtime check admits.
  __m256i acc = _mm256_setzero_si256();
  asm("%{evex%} vpdpbusd %[s], %[u], %[acc]" : [acc] "+v"(acc) : [u] "v"(u), [s] "v"(s));
  return acc;
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
HWY_INLINE float HSum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}
HWY_INLINE __m256i Load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
#endif

// Activations of MR tokens: q [MR][K] int8, d and d_sum [MR][K / 32].
struct Acts {
  const int8_t* q;
  const float* d;
  const float* d_sum;
  int64_t K;
};

// Q8_0: per block, sum(w * x) in integers via |x| (unsigned) and w with x's sign.
template <int MR>
void RowsQ8_0(const Acts& a, const uint8_t* w, int64_t row_bytes, int64_t r0, int64_t r1, const float* bias, float* y,
              int64_t ldy) {
  const int64_t nb = a.K / 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
#if FH1_QUANT_X86
    // Two blocks per step into two accumulators: one chain of fused multiply-adds would make the
    // loop wait on its latency.
    __m256 acc[MR][2];
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const auto block = [&](int64_t b, int u) {
      const uint8_t* blk = row + 34 * b;
      const __m256i wq = Load32(blk + 2);
      const float dw = F16(blk);
      for (int i = 0; i < MR; ++i) {
        const __m256i xq = Load32(a.q + i * a.K + 32 * b);
        const __m256i p = DotU8S8(_mm256_sign_epi8(xq, xq), _mm256_sign_epi8(wq, xq));
        acc[i][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * a.d[i * nb + b]), acc[i][u]);
      }
    };
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      hwy::Prefetch(row + 34 * b + 2048);
      block(b, 0);
      block(b + 1, 1);
    }
    if (b < nb) block(b, 0);
    for (int i = 0; i < MR; ++i) y[i * ldy + r] = HSum(_mm256_add_ps(acc[i][0], acc[i][1])) + (bias ? bias[r] : 0.0f);
#else
    for (int i = 0; i < MR; ++i) {
      float s = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + 34 * b;
        int isum = 0;
        for (int j = 0; j < 32; ++j) isum += static_cast<int8_t>(blk[2 + j]) * a.q[i * a.K + 32 * b + j];
        s += static_cast<float>(isum) * F16(blk) * a.d[i * nb + b];
      }
      y[i * ldy + r] = s + (bias ? bias[r] : 0.0f);
    }
#endif
  }
}

// Q4_0: sum(d (q - 8) x) = d (dx sum(q xq) - 8 dx sum(xq)); the nibbles are the unsigned operand.
template <int MR>
void RowsQ4_0(const Acts& a, const uint8_t* w, int64_t row_bytes, int64_t r0, int64_t r1, const float* bias, float* y,
              int64_t ldy) {
  const int64_t nb = a.K / 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    float off[MR] = {};
#if FH1_QUANT_X86
    __m256 acc[MR][2];
    float off2[MR] = {};
    for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const auto block = [&](int64_t b, int u) {
      const uint8_t* blk = row + 18 * b;
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
      const __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes), low4);
      const float dw = F16(blk);
      for (int i = 0; i < MR; ++i) {
        const __m256i p = DotU8S8(nib, Load32(a.q + i * a.K + 32 * b));
        acc[i][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * a.d[i * nb + b]), acc[i][u]);
        (u ? off2[i] : off[i]) += dw * a.d_sum[i * nb + b];
      }
    };
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      hwy::Prefetch(row + 18 * b + 2048);
      block(b, 0);
      block(b + 1, 1);
    }
    if (b < nb) block(b, 0);
    for (int i = 0; i < MR; ++i)
      y[i * ldy + r] = HSum(_mm256_add_ps(acc[i][0], acc[i][1])) - 8.0f * (off[i] + off2[i]) + (bias ? bias[r] : 0.0f);
#else
    for (int i = 0; i < MR; ++i) {
      float s = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + 18 * b;
        const int8_t* xq = a.q + i * a.K + 32 * b;
        int isum = 0;
        for (int j = 0; j < 16; ++j) isum += (blk[2 + j] & 0xF) * xq[j] + (blk[2 + j] >> 4) * xq[j + 16];
        const float dw = F16(blk);
        s += static_cast<float>(isum) * dw * a.d[i * nb + b];
        off[i] += dw * a.d_sum[i * nb + b];
      }
      y[i * ldy + r] = s - 8.0f * off[i] + (bias ? bias[r] : 0.0f);
    }
#endif
  }
}

// Q4_K: per sub-block j of 32, sum((d sc_j q - dmin m_j) x) = d sc_j dx sum(q xq) - dmin m_j dx sum(xq).
template <int MR>
void RowsQ4_K(const Acts& a, const uint8_t* w, int64_t row_bytes, int64_t r0, int64_t r1, const float* bias, float* y,
              int64_t ldy) {
  const int64_t nsb = a.K / 256, nb = a.K / 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    float off[MR] = {};
#if FH1_QUANT_X86
    __m256 acc[MR], acc_hi[MR];  // low and high nibbles' sub-blocks: two chains of FMAs
    for (int i = 0; i < MR; ++i) acc[i] = acc_hi[i] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(0x0F);
#else
    float acc[MR] = {};
#endif
    for (int64_t sb = 0; sb < nsb; ++sb) {
      const uint8_t* blk = row + 144 * sb;
      hwy::Prefetch(blk + 2048);
      hwy::Prefetch(blk + 2048 + 64);
      hwy::Prefetch(blk + 2048 + 128);
      const float d = F16(blk), dmin = F16(blk + 2);
      float dsc[8], dm[8];
      for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        quant::q4k_scale_min(j, blk + 4, &sc, &m);
        dsc[j] = d * sc;
        dm[j] = dmin * m;
      }
      const uint8_t* qs = blk + 16;
      for (int c = 0; c < 4; ++c) {
        const int64_t b0 = sb * 8 + 2 * c;  // activation block of the low nibbles; b0 + 1 the high
#if FH1_QUANT_X86
        const __m256i bytes = Load32(qs + 32 * c);
        const __m256i lo = _mm256_and_si256(bytes, low4), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
        for (int i = 0; i < MR; ++i) {
          const int8_t* xq = a.q + i * a.K + 32 * b0;
          const __m256i p0 = DotU8S8(lo, Load32(xq)), p1 = DotU8S8(hi, Load32(xq + 32));
          const float* dx = a.d + i * nb + b0;
          acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(dsc[2 * c] * dx[0]), acc[i]);
          acc_hi[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(dsc[2 * c + 1] * dx[1]), acc_hi[i]);
          off[i] += dm[2 * c] * a.d_sum[i * nb + b0] + dm[2 * c + 1] * a.d_sum[i * nb + b0 + 1];
        }
#else
        for (int i = 0; i < MR; ++i) {
          const int8_t* xq = a.q + i * a.K + 32 * b0;
          int s0 = 0, s1 = 0;
          for (int l = 0; l < 32; ++l) {
            s0 += (qs[32 * c + l] & 0xF) * xq[l];
            s1 += (qs[32 * c + l] >> 4) * xq[32 + l];
          }
          const float* dx = a.d + i * nb + b0;
          acc[i] += static_cast<float>(s0) * dsc[2 * c] * dx[0] + static_cast<float>(s1) * dsc[2 * c + 1] * dx[1];
          off[i] += dm[2 * c] * a.d_sum[i * nb + b0] + dm[2 * c + 1] * a.d_sum[i * nb + b0 + 1];
        }
#endif
      }
    }
    for (int i = 0; i < MR; ++i) {
#if FH1_QUANT_X86
      const float s = HSum(_mm256_add_ps(acc[i], acc_hi[i]));
#else
      const float s = acc[i];
#endif
      y[i * ldy + r] = s - off[i] + (bias ? bias[r] : 0.0f);
    }
  }
}

template <int MR>
void RowsQuant(const Acts& a, const WeightView& W, int64_t r0, int64_t r1, const float* bias, float* y, int64_t ldy) {
  const auto* w = static_cast<const uint8_t*>(W.data);
  const int64_t rb = dtype_row_bytes(W.dtype, W.cols);
  switch (W.dtype) {
    case DType::Q8_0: return RowsQ8_0<MR>(a, w, rb, r0, r1, bias, y, ldy);
    case DType::Q4_0: return RowsQ4_0<MR>(a, w, rb, r0, r1, bias, y, ldy);
    case DType::Q4_K: return RowsQ4_K<MR>(a, w, rb, r0, r1, bias, y, ldy);
    default: throw Error(std::string("quantized GEMV: not a quantized dtype: ") + dtype_name(W.dtype));
  }
}

void QuantGemv(const int8_t* xq, const float* xd, const float* xd_sum, int64_t T, const WeightView& W, int64_t r0,
               int64_t r1, const float* bias, float* y, int64_t ldy) {
  const int64_t nb = W.cols / 32;
  for (int64_t t = 0; t < T; t += 3) {
    const Acts a{xq + t * W.cols, xd + t * nb, xd_sum + t * nb, W.cols};
    float* yt = y + t * ldy;
    switch (T - t) {
      case 1: RowsQuant<1>(a, W, r0, r1, bias, yt, ldy); break;
      case 2: RowsQuant<2>(a, W, r0, r1, bias, yt, ldy); break;
      default: RowsQuant<3>(a, W, r0, r1, bias, yt, ldy); break;
    }
  }
}

const char* QuantDotName() {
#if FH1_QUANT_X86 && HWY_TARGET <= HWY_AVX3_DL
  return "AVX512-VNNI";
#elif FH1_QUANT_X86
  return "AVX2";
#else
  return "scalar";
#endif
}

}  // namespace HWY_NAMESPACE
}  // namespace fh1::simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace fh1::simd {

HWY_EXPORT(QuantGemv);
HWY_EXPORT(QuantDotName);

void quant_gemv(const int8_t* xq, const float* xd, const float* xd_sum, int64_t T, const WeightView& W, int64_t r0,
                int64_t r1, const float* bias, float* y, int64_t ldy) {
  HWY_DYNAMIC_DISPATCH(QuantGemv)(xq, xd, xd_sum, T, W, r0, r1, bias, y, ldy);
}

const char* quant_dot_name() { return HWY_DYNAMIC_DISPATCH(QuantDotName)(); }

}  // namespace fh1::simd
#endif  // HWY_ONCE
