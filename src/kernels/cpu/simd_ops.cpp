// Row-wise and elementwise ops, the conv, the one-step SSM update and the bandwidth read kernel of
// the fast CPU backend (see simd_kernels.h), compiled per instruction set by Highway.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/simd_ops.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/simd_kernels.h"

HWY_BEFORE_NAMESPACE();
namespace fh1::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

HWY_INLINE size_t Lanes() { return hn::Lanes(DF()); }

// silu(x) = x / (1 + exp(-x))
HWY_INLINE VF Silu(DF d, VF x) {
  const VF one = hn::Set(d, 1.0f);
  return hn::Div(x, hn::Add(one, hn::Exp(d, hn::Neg(x))));
}
inline float SiluScalar(float x) { return x / (1.0f + std::exp(-x)); }

float SumSquares(const float* x, int64_t n) {
  const DF d;
  const int64_t L = static_cast<int64_t>(Lanes());
  VF a0 = hn::Zero(d), a1 = hn::Zero(d);
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    const VF v0 = hn::LoadU(d, x + i), v1 = hn::LoadU(d, x + i + L);
    a0 = hn::MulAdd(v0, v0, a0);
    a1 = hn::MulAdd(v1, v1, a1);
  }
  for (; i + L <= n; i += L) {
    const VF v = hn::LoadU(d, x + i);
    a0 = hn::MulAdd(v, v, a0);
  }
  float s = hn::GetLane(hn::SumOfLanes(d, hn::Add(a0, a1)));
  for (; i < n; ++i) s += x[i] * x[i];
  return s;
}

// out = w * (x * inv)
void NormScale(const float* x, int64_t n, const float* w, float inv, float* out) {
  const DF d;
  const int64_t L = static_cast<int64_t>(Lanes());
  const VF vi = hn::Set(d, inv);
  int64_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::Mul(hn::LoadU(d, w + i), hn::Mul(hn::LoadU(d, x + i), vi)), d, out + i);
  for (; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

void RmsnormRow(const float* x, int64_t n, const float* w, float eps, float* out) {
  const float inv = 1.0f / std::sqrt(SumSquares(x, n) / static_cast<float>(n) + eps);
  NormScale(x, n, w, inv, out);
}

void GateSilu(float* y, const float* z, size_t n) {
  const DF d;
  const size_t L = Lanes();
  size_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::Mul(hn::LoadU(d, y + i), Silu(d, hn::LoadU(d, z + i))), d, y + i);
  for (; i < n; ++i) y[i] *= SiluScalar(z[i]);
}

void GatedRmsnormRow(float* y, const float* z, int64_t n, int groups, const float* w, float eps, bool before) {
  if (!before) GateSilu(y, z, static_cast<size_t>(n));
  const int64_t gd = n / groups;
  for (int g = 0; g < groups; ++g) {
    float* yg = y + g * gd;
    const float inv = 1.0f / std::sqrt(SumSquares(yg, gd) / static_cast<float>(gd) + eps);
    NormScale(yg, gd, w + g * gd, inv, yg);
  }
  if (before) GateSilu(y, z, static_cast<size_t>(n));
}

void Scale(const float* x, size_t n, float s, float* out) {
  const DF d;
  const size_t L = Lanes();
  const VF vs = hn::Set(d, s);
  size_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), vs), d, out + i);
  for (; i < n; ++i) out[i] = x[i] * s;
}

void Mul(float* x, const float* v, size_t n) {
  const DF d;
  const size_t L = Lanes();
  size_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), hn::LoadU(d, v + i)), d, x + i);
  for (; i < n; ++i) x[i] *= v[i];
}

void ResidualAdd(float* h, const float* a, float s, size_t n) {
  const DF d;
  const size_t L = Lanes();
  const VF vs = hn::Set(d, s);
  size_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::Add(hn::LoadU(d, h + i), hn::Mul(hn::LoadU(d, a + i), vs)), d, h + i);
  for (; i < n; ++i) h[i] += a[i] * s;
}

void ResidualAdd2(float* h, const float* a, float sa, const float* b, float sb, size_t n) {
  const DF d;
  const size_t L = Lanes();
  const VF va = hn::Set(d, sa), vb = hn::Set(d, sb);
  size_t i = 0;
  for (; i + L <= n; i += L) {
    const VF sum = hn::Add(hn::Mul(hn::LoadU(d, a + i), va), hn::Mul(hn::LoadU(d, b + i), vb));
    hn::StoreU(hn::Add(hn::LoadU(d, h + i), sum), d, h + i);
  }
  for (; i < n; ++i) h[i] += a[i] * sa + b[i] * sb;
}

void SiluMul(const float* gate, const float* up, float gs, size_t n, float* out) {
  const DF d;
  const size_t L = Lanes();
  const VF vg = hn::Set(d, gs);
  size_t i = 0;
  for (; i + L <= n; i += L)
    hn::StoreU(hn::Mul(hn::LoadU(d, up + i), Silu(d, hn::Mul(hn::LoadU(d, gate + i), vg))), d, out + i);
  for (; i < n; ++i) out[i] = up[i] * SiluScalar(gate[i] * gs);
}

float ExpShiftedSum(float* x, size_t n, float shift) {
  const DF d;
  const size_t L = Lanes();
  const VF vs = hn::Set(d, shift);
  VF acc = hn::Zero(d);
  size_t i = 0;
  for (; i + L <= n; i += L) {
    const VF e = hn::Exp(d, hn::Sub(hn::LoadU(d, x + i), vs));
    hn::StoreU(e, d, x + i);
    acc = hn::Add(acc, e);
  }
  float s = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; i < n; ++i) s += (x[i] = std::exp(x[i] - shift));
  return s;
}

float MaxOf(const float* x, size_t n) {
  const DF d;
  const size_t L = Lanes();
  size_t i = 0;
  float m = x[0];
  if (n >= L) {
    VF acc = hn::LoadU(d, x);
    for (i = L; i + L <= n; i += L) acc = hn::Max(acc, hn::LoadU(d, x + i));
    m = hn::GetLane(hn::MaxOfLanes(d, acc));
  }
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

float SumOf(const float* x, size_t n) {
  const DF d;
  const size_t L = Lanes();
  VF acc = hn::Zero(d);
  size_t i = 0;
  for (; i + L <= n; i += L) acc = hn::Add(acc, hn::LoadU(d, x + i));
  float s = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; i < n; ++i) s += x[i];
  return s;
}

void ScaleAdd(float* y, float a, const float* x, size_t n) {
  const DF d;
  const size_t L = Lanes();
  const VF va = hn::Set(d, a);
  size_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(hn::MulAdd(va, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, y + i);
  for (; i < n; ++i) y[i] += a * x[i];
}

void Conv1dSiluChannels(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* wt,
                        const float* bias, float* state, float* out, int64_t c0, int64_t c1) {
  const DF d;
  const int64_t L = static_cast<int64_t>(Lanes());
  const int S = K - 1;
  auto row = [&](int64_t i) { return i < S ? state + i * C : in + (i - S) * ld_in; };
  for (int64_t t = 0; t < T; ++t) {
    float* o = out + t * C;
    int64_t c = c0;
    for (; c + L <= c1; c += L) {
      VF acc = bias ? hn::LoadU(d, bias + c) : hn::Zero(d);
      for (int k = 0; k < K; ++k) acc = hn::MulAdd(hn::LoadU(d, wt + k * C + c), hn::LoadU(d, row(t + k) + c), acc);
      hn::StoreU(hn::Mul(acc, hn::Div(hn::Set(d, 1.0f), hn::Add(hn::Set(d, 1.0f), hn::Exp(d, hn::Neg(acc))))), d,
                 o + c);
    }
    for (; c < c1; ++c) {
      float acc = bias ? bias[c] : 0.0f;
      for (int k = 0; k < K; ++k) acc += wt[k * C + c] * row(t + k)[c];
      o[c] = SiluScalar(acc);
    }
  }
  // New state: the last S rows of [state; in]. Row s reads history row T + s >= s, not yet overwritten.
  for (int s = 0; s < S; ++s) {
    const float* src = row(T + s);
    for (int64_t c = c0; c < c1; ++c) state[s * C + c] = src[c];
  }
}

void SsmStepHead(float* S, int P, int N, const float* x, const float* B, const float* Cv, float dt, float dA, float Dh,
                 float* y) {
  const DF d;
  const int L = static_cast<int>(Lanes());
  const VF vdA = hn::Set(d, dA);
  for (int p = 0; p < P; ++p) {
    float* Sp = S + static_cast<int64_t>(p) * N;
    const float dx = dt * x[p];
    const VF vdx = hn::Set(d, dx);
    VF acc = hn::Zero(d);
    int n = 0;
    for (; n + L <= N; n += L) {
      const VF s = hn::MulAdd(hn::LoadU(d, Sp + n), vdA, hn::Mul(hn::LoadU(d, B + n), vdx));
      hn::StoreU(s, d, Sp + n);
      acc = hn::MulAdd(s, hn::LoadU(d, Cv + n), acc);
    }
    float sum = hn::GetLane(hn::SumOfLanes(d, acc));
    for (; n < N; ++n) {
      Sp[n] = Sp[n] * dA + B[n] * dx;
      sum += Sp[n] * Cv[n];
    }
    y[p] = sum + Dh * x[p];
  }
}

// dst[i] = float(src[i]) for bf16 bits: exact (the bits shifted into the high half).
void WidenBf16(const uint16_t* src, size_t n, float* dst) {
  const DF d;
  const hn::RebindToUnsigned<DF> du32;
  const hn::Rebind<uint16_t, DF> du16;
  const size_t L = Lanes();
  size_t i = 0;
  for (; i + L <= n; i += L)
    hn::StoreU(hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(du32, hn::LoadU(du16, src + i)))), d, dst + i);
  for (; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(src[i]) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    dst[i] = f;
  }
}

// dst[i] = float(q[i]) * scale: an 8-bit KV cache's block (exact products rounded once, as
// quant/kv_q8.h's scalar code).
void WidenQ8(const int8_t* q, size_t n, float scale, float* dst) {
  const DF d;
  const hn::RebindToSigned<DF> di32;
  const hn::Rebind<int8_t, DF> di8;
  const size_t L = Lanes();
  const auto vs = hn::Set(d, scale);
  size_t i = 0;
  for (; i + L <= n; i += L)
    hn::StoreU(hn::Mul(hn::ConvertTo(d, hn::PromoteTo(di32, hn::LoadU(di8, q + i))), vs), d, dst + i);
  for (; i < n; ++i) dst[i] = static_cast<float>(q[i]) * scale;
}

double StreamSum(const float* p, size_t n) {
  const DF d;
  const size_t L = Lanes();
  VF a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  size_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    a0 = hn::Add(a0, hn::LoadU(d, p + i));
    a1 = hn::Add(a1, hn::LoadU(d, p + i + L));
    a2 = hn::Add(a2, hn::LoadU(d, p + i + 2 * L));
    a3 = hn::Add(a3, hn::LoadU(d, p + i + 3 * L));
  }
  double s = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) s += p[i];
  return s;
}

}  // namespace HWY_NAMESPACE
}  // namespace fh1::simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace fh1::simd {

HWY_EXPORT(RmsnormRow);
HWY_EXPORT(GatedRmsnormRow);
HWY_EXPORT(Scale);
HWY_EXPORT(Mul);
HWY_EXPORT(ResidualAdd);
HWY_EXPORT(ResidualAdd2);
HWY_EXPORT(SiluMul);
HWY_EXPORT(GateSilu);
HWY_EXPORT(ExpShiftedSum);
HWY_EXPORT(MaxOf);
HWY_EXPORT(SumOf);
HWY_EXPORT(ScaleAdd);
HWY_EXPORT(Conv1dSiluChannels);
HWY_EXPORT(SsmStepHead);
HWY_EXPORT(StreamSum);
HWY_EXPORT(WidenBf16);
HWY_EXPORT(WidenQ8);

void rmsnorm_row(const float* x, int64_t d, const float* w, float eps, float* out) {
  HWY_DYNAMIC_DISPATCH(RmsnormRow)(x, d, w, eps, out);
}
void gated_rmsnorm_row(float* y, const float* z, int64_t d, int groups, const float* w, float eps,
                       bool norm_before_gate) {
  HWY_DYNAMIC_DISPATCH(GatedRmsnormRow)(y, z, d, groups, w, eps, norm_before_gate);
}
void scale(const float* x, size_t n, float s, float* out) { HWY_DYNAMIC_DISPATCH(Scale)(x, n, s, out); }
void mul(float* x, const float* v, size_t n) { HWY_DYNAMIC_DISPATCH(Mul)(x, v, n); }
void residual_add(float* h, const float* a, float s, size_t n) { HWY_DYNAMIC_DISPATCH(ResidualAdd)(h, a, s, n); }
void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n) {
  HWY_DYNAMIC_DISPATCH(ResidualAdd2)(h, a, sa, b, sb, n);
}
void silu_mul(const float* gate, const float* up, float gate_scale, size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(SiluMul)(gate, up, gate_scale, n, out);
}
void gate_silu(float* y, const float* z, size_t n) { HWY_DYNAMIC_DISPATCH(GateSilu)(y, z, n); }
float exp_shifted_sum(float* x, size_t n, float shift) { return HWY_DYNAMIC_DISPATCH(ExpShiftedSum)(x, n, shift); }
float max_of(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(MaxOf)(x, n); }
float sum_of(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(SumOf)(x, n); }
void scale_add(float* y, float a, const float* x, size_t n) { HWY_DYNAMIC_DISPATCH(ScaleAdd)(y, a, x, n); }
void conv1d_silu_channels(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* wt,
                          const float* bias, float* conv_state, float* out, int64_t c0, int64_t c1) {
  HWY_DYNAMIC_DISPATCH(Conv1dSiluChannels)(in, ld_in, T, C, K, wt, bias, conv_state, out, c0, c1);
}
void ssm_step_head(float* S, int P, int N, const float* x, const float* B, const float* C, float dt, float dA,
                   float Dh, float* y) {
  HWY_DYNAMIC_DISPATCH(SsmStepHead)(S, P, N, x, B, C, dt, dA, Dh, y);
}
double stream_sum(const float* p, size_t n) { return HWY_DYNAMIC_DISPATCH(StreamSum)(p, n); }
void widen_bf16(const uint16_t* src, size_t n, float* dst) { HWY_DYNAMIC_DISPATCH(WidenBf16)(src, n, dst); }
void widen_q8(const int8_t* q, size_t n, float scale, float* dst) { HWY_DYNAMIC_DISPATCH(WidenQ8)(q, n, scale, dst); }

}  // namespace fh1::simd
#endif  // HWY_ONCE
