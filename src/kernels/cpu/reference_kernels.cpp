// The reference CPU backend (see reference_kernels.h): plain C++ loops written so the compiler can
// vectorize them, threaded over one ThreadPool. The fast kernels are checked against it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <vector>

#include "io/safetensors.h"
#include "kernels/cpu/reference_kernels.h"
#include "quant/blocks.h"
#include "util/error.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace fh1 {
namespace {

// Dot product with 16 independent partial sums, so it vectorizes without -ffast-math.
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0.0f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

void row_to_f32(const WeightView& w, int64_t row, float* out) {
  const int64_t K = w.cols;
  switch (w.dtype) {
    case DType::F32:
      std::memcpy(out, static_cast<const float*>(w.data) + row * K, K * sizeof(float));
      break;
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + row * K;
      for (int64_t k = 0; k < K; ++k) out[k] = bf16_to_f32(p[k]);
      break;
    }
    case DType::F16: {
      const uint16_t* p = static_cast<const uint16_t*>(w.data) + row * K;
      for (int64_t k = 0; k < K; ++k) out[k] = f16_to_f32(p[k]);
      break;
    }
    case DType::Q8_0: case DType::Q4_0: case DType::Q4_K:
      quant::dequantize_row(w.dtype, static_cast<const uint8_t*>(w.data) + row * dtype_row_bytes(w.dtype, K), K, out);
      break;
    default:
      throw Error(std::string("CPU kernels cannot read weights of dtype ") + dtype_name(w.dtype));
  }
}

}  // namespace

std::string ReferenceKernels::name() const { return "cpu-reference"; }

float* ReferenceKernels::alloc(size_t n) {
  float* p = static_cast<float*>(::operator new[](n * sizeof(float), std::align_val_t(64)));
  std::memset(p, 0, n * sizeof(float));
  return p;
}

void ReferenceKernels::free(float* p) { ::operator delete[](p, std::align_val_t(64)); }

void ReferenceKernels::to_host(float* dst, const float* src, size_t n) { std::memcpy(dst, src, n * sizeof(float)); }

void ReferenceKernels::from_host(float* dst, const float* src, size_t n) { std::memcpy(dst, src, n * sizeof(float)); }

void ReferenceKernels::copy(float* dst, const float* src, size_t n) { std::memmove(dst, src, n * sizeof(float)); }

void ReferenceKernels::zero(float* dst, size_t n) { std::memset(dst, 0, n * sizeof(float)); }

WeightView ReferenceKernels::bind_weight(const TensorView& t) {
  if (!is_float_dtype(t.dtype) && !is_quantized_dtype(t.dtype))
    throw Error("tensor '" + t.name + "': dtype " + dtype_name(t.dtype) +
                " is neither a float type (F32, F16, BF16) nor a quantized one (Q8_0, Q4_0, Q4_K)");
  WeightView w;
  w.dtype = t.dtype;
  w.data = t.data;
  w.rows = t.shape.empty() ? 1 : t.shape[0];
  w.cols = w.rows == 0 ? 0 : t.numel() / w.rows;
  return w;
}

void ReferenceKernels::matmul(const float* x, int64_t ldx, int64_t T, const WeightView& W, const float* bias, float* y) {
  const int64_t N = W.rows, K = W.cols;
  // Rows of W in blocks, each converted once to f32 and used for every token.
  constexpr int64_t kBlock = 16;
  const int64_t n_blocks = (N + kBlock - 1) / kBlock;
  pool_.parallel_for(static_cast<size_t>(n_blocks), [&](size_t b0, size_t b1) {
    std::vector<float> wbuf(static_cast<size_t>(kBlock * K));
    for (size_t b = b0; b < b1; ++b) {
      const int64_t r0 = static_cast<int64_t>(b) * kBlock, r1 = std::min(N, r0 + kBlock);
      const float* rows;
      if (W.dtype == DType::F32) {
        rows = static_cast<const float*>(W.data) + r0 * K;
      } else {
        for (int64_t r = r0; r < r1; ++r) row_to_f32(W, r, wbuf.data() + (r - r0) * K);
        rows = wbuf.data();
      }
      for (int64_t t = 0; t < T; ++t) {
        const float* xr = x + t * ldx;
        float* yr = y + t * N;
        for (int64_t r = r0; r < r1; ++r)
          yr[r] = dot(xr, rows + (r - r0) * K, K) + (bias ? bias[r] : 0.0f);
      }
    }
  });
}

void ReferenceKernels::embed(const int32_t* ids, int64_t T, const WeightView& table, float scale, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    if (ids[t] < 0 || ids[t] >= table.rows)
      throw Error("token id " + std::to_string(ids[t]) + " is outside the vocabulary [0, " +
                  std::to_string(table.rows) + ")");
    float* o = out + t * table.cols;
    row_to_f32(table, ids[t], o);
    for (int64_t k = 0; k < table.cols; ++k) o[k] *= scale;
  }
}

void ReferenceKernels::rmsnorm(const float* x, int64_t T, int64_t d, const float* weight, float eps, float* out) {
  pool_.parallel_for(static_cast<size_t>(T), [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; ++t) {
      const float* xr = x + t * d;
      float* o = out + t * d;
      double ss = 0.0;
      for (int64_t k = 0; k < d; ++k) ss += static_cast<double>(xr[k]) * xr[k];
      const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(d)) + eps);
      for (int64_t k = 0; k < d; ++k) o[k] = weight[k] * (xr[k] * inv);
    }
  });
}

void ReferenceKernels::scale(const float* x, size_t n, float s, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = x[i] * s;
}

void ReferenceKernels::mul_columns(float* x, int64_t T, int64_t d, const float* v) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < d; ++k) x[t * d + k] *= v[k];
}

void ReferenceKernels::residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n) {
  for (size_t i = 0; i < n; ++i) h[i] += a[i] * sa + b[i] * sb;
}

void ReferenceKernels::residual_add(float* h, const float* a, float s, size_t n) {
  for (size_t i = 0; i < n; ++i) h[i] += a[i] * s;
}

void ReferenceKernels::silu_mul(const float* gate, const float* up, float gate_scale, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = up[i] * silu(gate[i] * gate_scale);
}

void ReferenceKernels::gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < d; ++k) y[t * d + k] *= silu(z[t * ldz + k]);
}

void ReferenceKernels::gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups, const float* weight,
                   float eps, bool norm_before_gate) {
  const int64_t gd = d / groups;
  for (int64_t t = 0; t < T; ++t) {
    float* yr = y + t * d;
    const float* zr = z + t * ldz;
    if (!norm_before_gate)
      for (int64_t k = 0; k < d; ++k) yr[k] *= silu(zr[k]);
    for (int g = 0; g < groups; ++g) {
      float* yg = yr + g * gd;
      double ss = 0.0;
      for (int64_t k = 0; k < gd; ++k) ss += static_cast<double>(yg[k]) * yg[k];
      const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(gd)) + eps);
      for (int64_t k = 0; k < gd; ++k) yg[k] = weight[g * gd + k] * (yg[k] * inv);
    }
    if (norm_before_gate)
      for (int64_t k = 0; k < d; ++k) yr[k] *= silu(zr[k]);
  }
}

void ReferenceKernels::rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* positions,
          const float* inv_freq) {
  const int half = hd / 2;
  std::vector<float> cosv(half), sinv(half);
  for (int64_t t = 0; t < T; ++t) {
    // As the reference: the angle is a float32 product, then cos/sin of that float.
    const float pos = static_cast<float>(positions[t]);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[i];
      cosv[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sinv[i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
    for (int h = 0; h < heads; ++h) {
      float* v = x + t * ld + static_cast<int64_t>(h) * hd;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cosv[i] - b * sinv[i];
        v[i + half] = b * cosv[i] + a * sinv[i];
      }
    }
  }
}

void ReferenceKernels::attention(const float* q, int64_t ldq, int64_t T, const float* k_cache, const float* v_cache, int64_t n_past,
               int H, int Hkv, int hd, float scale, float* out) {
  const int rep = H / Hkv;
  const int64_t ldkv = static_cast<int64_t>(Hkv) * hd;
  pool_.parallel_for(static_cast<size_t>(T) * H, [&](size_t i0, size_t i1) {
    std::vector<float> scores(static_cast<size_t>(n_past + T));
    std::vector<double> acc(static_cast<size_t>(hd));
    for (size_t i = i0; i < i1; ++i) {
      const int64_t t = static_cast<int64_t>(i) / H;
      const int h = static_cast<int>(i % H);
      const int kvh = h / rep;
      const float* qv = q + t * ldq + static_cast<int64_t>(h) * hd;
      const int64_t n_keys = n_past + t + 1;
      float mx = -INFINITY;
      for (int64_t j = 0; j < n_keys; ++j) {
        scores[j] = dot(qv, k_cache + j * ldkv + static_cast<int64_t>(kvh) * hd, hd) * scale;
        mx = std::max(mx, scores[j]);
      }
      double sum = 0.0;
      for (int64_t j = 0; j < n_keys; ++j) {
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < n_keys; ++j) {
        const float* vv = v_cache + j * ldkv + static_cast<int64_t>(kvh) * hd;
        const double p = scores[j];
        for (int k = 0; k < hd; ++k) acc[k] += p * vv[k];
      }
      float* o = out + t * static_cast<int64_t>(H) * hd + static_cast<int64_t>(h) * hd;
      for (int k = 0; k < hd; ++k) o[k] = static_cast<float>(acc[k] / sum);
    }
  });
}

void ReferenceKernels::conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w, const float* bias,
                 float* conv_state, float* out) {
  const int S = K - 1;  // rows of history
  pool_.parallel_for(static_cast<size_t>(C), [&](size_t c0, size_t c1) {
    std::vector<float> hist(static_cast<size_t>(S + T));
    for (size_t c = c0; c < c1; ++c) {
      for (int s = 0; s < S; ++s) hist[s] = conv_state[static_cast<int64_t>(s) * C + c];
      for (int64_t t = 0; t < T; ++t) hist[S + t] = in[t * ld_in + c];
      const float* wc = w + c * K;
      for (int64_t t = 0; t < T; ++t) {
        float acc = bias ? bias[c] : 0.0f;
        for (int k = 0; k < K; ++k) acc += wc[k] * hist[t + k];
        out[t * C + c] = silu(acc);
      }
      for (int s = 0; s < S; ++s) conv_state[static_cast<int64_t>(s) * C + c] = hist[T + s];
    }
  });
}

void ReferenceKernels::ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
              int64_t T, const SsmParams& p, float* state, float* y) {
  const int H = p.heads, P = p.head_dim, N = p.d_state;
  const int heads_per_group = H / p.groups;
  const int64_t ldy = static_cast<int64_t>(H) * P;
  pool_.parallel_for(static_cast<size_t>(H), [&](size_t h0, size_t h1) {
    std::vector<float> dt(static_cast<size_t>(T));
    std::vector<float> seg, cum, chunk_state(static_cast<size_t>(P) * N);
    for (size_t hs = h0; hs < h1; ++hs) {
      const int h = static_cast<int>(hs);
      const int64_t g_off = static_cast<int64_t>(h / heads_per_group) * N;
      const float A = p.A[h], Dh = p.D[h];
      float* S = state + static_cast<int64_t>(h) * P * N;  // [P, N]
      for (int64_t t = 0; t < T; ++t)
        dt[t] = ssm_time_step(p, h, dt_raw[t * ld_dt + h]);
      const float* xh = x + static_cast<int64_t>(h) * P;
      float* yh = y + static_cast<int64_t>(h) * P;
      if (T == 1) {  // the recurrence, as decoding runs it
        const float dA = std::exp(dt[0] * A);
        const float* Bt = B + g_off;
        const float* Ct = C + g_off;
        for (int pp = 0; pp < P; ++pp) {
          float* Sp = S + static_cast<int64_t>(pp) * N;
          const float dx = dt[0] * xh[pp];
          float acc = 0.0f;
          for (int n = 0; n < N; ++n) {
            Sp[n] = Sp[n] * dA + Bt[n] * dx;
            acc += Sp[n] * Ct[n];
          }
          yh[pp] = acc + Dh * xh[pp];
        }
        continue;
      }
      // Chunked SSD: per chunk, intra-chunk outputs through the decay mask, the carried state's
      // contribution, then the state passed to the next chunk.
      for (int64_t c0 = 0; c0 < T; c0 += p.chunk_size) {
        const int64_t L = std::min<int64_t>(p.chunk_size, T - c0);
        cum.assign(static_cast<size_t>(L), 0.0f);
        float run = 0.0f;
        for (int64_t i = 0; i < L; ++i) cum[i] = (run += A * dt[c0 + i]);
        // seg[i][j] = sum_{k=j+1..i} A dt_k, summed in increasing k as the reference does.
        seg.assign(static_cast<size_t>(L * L), 0.0f);
        for (int64_t j = 0; j < L; ++j) {
          float s = 0.0f;
          for (int64_t i = j + 1; i < L; ++i) seg[i * L + j] = (s += A * dt[c0 + i]);
        }
        for (int64_t i = 0; i < L; ++i) {
          const int64_t ti = c0 + i;
          const float* Ci = C + ti * ld_xbc + g_off;
          float* yi = yh + ti * ldy;
          const float* xi = xh + ti * ld_xbc;
          // carried state: exp(cum_i) * (S C_i)
          const float decay_in = std::exp(cum[i]);
          for (int pp = 0; pp < P; ++pp) yi[pp] = decay_in * dot(S + static_cast<int64_t>(pp) * N, Ci, N);
          // intra-chunk
          for (int64_t j = 0; j <= i; ++j) {
            const int64_t tj = c0 + j;
            const float w = dot(Ci, B + tj * ld_xbc + g_off, N) * std::exp(seg[i * L + j]) * dt[tj];
            const float* xj = xh + tj * ld_xbc;
            for (int pp = 0; pp < P; ++pp) yi[pp] += w * xj[pp];
          }
          for (int pp = 0; pp < P; ++pp) yi[pp] += Dh * xi[pp];
        }
        // state passing: S = exp(cum_last) S + sum_j exp(cum_last - cum_j) dt_j x_j B_j^T
        const float last = cum[L - 1];
        std::fill(chunk_state.begin(), chunk_state.end(), 0.0f);
        for (int64_t j = 0; j < L; ++j) {
          const int64_t tj = c0 + j;
          const float wj = std::exp(last - cum[j]) * dt[tj];
          const float* Bj = B + tj * ld_xbc + g_off;
          const float* xj = xh + tj * ld_xbc;
          for (int pp = 0; pp < P; ++pp) {
            const float s = wj * xj[pp];
            float* cs = chunk_state.data() + static_cast<int64_t>(pp) * N;
            for (int n = 0; n < N; ++n) cs[n] += s * Bj[n];
          }
        }
        const float decay_chunk = std::exp(last);
        for (int64_t k = 0; k < static_cast<int64_t>(P) * N; ++k) S[k] = S[k] * decay_chunk + chunk_state[k];
      }
    }
  });
}

std::unique_ptr<Kernels> make_reference_kernels(ThreadPool& pool) { return std::make_unique<ReferenceKernels>(pool); }

}  // namespace fh1
