#include "quant/blocks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "util/error.h"
#include "util/half.h"

namespace fh1::quant {
namespace {

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
void store_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

void check_row(DType type, int64_t n) {
  if (!is_quantized_dtype(type)) throw Error(std::string("not a quantized type: ") + dtype_name(type));
  if (n % dtype_block_elems(type) != 0)
    throw Error(std::string(dtype_name(type)) + " rows need a multiple of " + std::to_string(dtype_block_elems(type)) +
                " values, not " + std::to_string(n));
}

// As ggml's quantize_row_q8_0_ref: d = max|x| / 127, q = roundf(x / d).
void quantize_q8_0(const float* x, uint8_t* out) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
  store_u16(out, f32_to_f16(d));
  for (int j = 0; j < 32; ++j) out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[j] * id)));
}

// As ggml's quantize_row_q4_0_ref: the value of largest magnitude maps to -8 exactly.
void quantize_q4_0(const float* x, uint8_t* out) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 32; ++j)
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
  store_u16(out, f32_to_f16(d));
  for (int j = 0; j < 16; ++j) {
    const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
    const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(x[16 + j] * id + 8.5f)));
    out[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

// The (scale, min) that best fit 32 values as scale * q - min, q in [0, 15], min >= 0: a small
// search over the grid step, each candidate's q refit by least squares (the idea of ggml's
// make_qkx2_quants, unweighted).
void fit_scale_min(const float* x, float* scale, float* min) {
  constexpr int n = 32, nmax = 15;
  float lo = 0.0f, hi = x[0];
  double sx = 0.0;
  for (int i = 0; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sx += x[i];
  }
  if (hi <= lo) {
    *scale = 0.0f;
    *min = -lo;
    return;
  }
  double best_err = INFINITY, best_a = (hi - lo) / nmax, best_b = lo;
  for (int step = -10; step <= 10; ++step) {
    const double iscale = (nmax + 0.1 * step) / (hi - lo);
    double sq = 0.0, sqq = 0.0, sqx = 0.0;
    int q[n];
    for (int i = 0; i < n; ++i) {
      q[i] = std::clamp(static_cast<int>(std::lround(iscale * (x[i] - lo))), 0, nmax);
      sq += q[i];
      sqq += static_cast<double>(q[i]) * q[i];
      sqx += q[i] * static_cast<double>(x[i]);
    }
    const double det = n * sqq - sq * sq;
    if (det <= 0.0) continue;
    double a = (n * sqx - sq * sx) / det, b = (sx - a * sq) / n;
    if (b > 0.0) {  // the offset must be a min <= 0 in x: refit the scale alone
      b = 0.0;
      a = sqq > 0.0 ? sqx / sqq : 0.0;
    }
    if (a < 0.0) continue;
    double err = 0.0;
    for (int i = 0; i < n; ++i) {
      const double e = a * q[i] + b - x[i];
      err += e * e;
    }
    if (err < best_err) {
      best_err = err;
      best_a = a;
      best_b = b;
    }
  }
  *scale = static_cast<float>(best_a);
  *min = static_cast<float>(-best_b);
}

void quantize_q4_k(const float* x, uint8_t* out) {
  float sc[8], mn[8], max_sc = 0.0f, max_mn = 0.0f;
  for (int j = 0; j < 8; ++j) {
    fit_scale_min(x + 32 * j, &sc[j], &mn[j]);
    max_sc = std::max(max_sc, sc[j]);
    max_mn = std::max(max_mn, mn[j]);
  }
  const float d = max_sc / 63.0f, dmin = max_mn / 63.0f;
  const float id = d > 0.0f ? 1.0f / d : 0.0f, idmin = dmin > 0.0f ? 1.0f / dmin : 0.0f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = static_cast<uint8_t>(std::clamp(static_cast<int>(std::lround(sc[j] * id)), 0, 63));
    lm[j] = static_cast<uint8_t>(std::clamp(static_cast<int>(std::lround(mn[j] * idmin)), 0, 63));
  }
  store_u16(out, f32_to_f16(d));
  store_u16(out + 2, f32_to_f16(dmin));
  uint8_t* scales = out + 4;
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      scales[j] = ls[j];
      scales[j + 4] = lm[j];
    } else {
      scales[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      scales[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
      scales[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
    }
  }
  // The nibbles, from the scales as stored (fp16 super-scales, 6-bit sub-scales).
  const float d16 = f16_to_f32(load_u16(out)), dmin16 = f16_to_f32(load_u16(out + 2));
  uint8_t q[256];
  for (int j = 0; j < 8; ++j) {
    uint8_t s, m;
    q4k_scale_min(j, scales, &s, &m);
    const float dl = d16 * s, dm = dmin16 * m;
    for (int i = 0; i < 32; ++i) {
      const int v = dl != 0.0f ? static_cast<int>(std::lround((x[32 * j + i] + dm) / dl)) : 0;
      q[32 * j + i] = static_cast<uint8_t>(std::clamp(v, 0, 15));
    }
  }
  uint8_t* qs = out + 16;
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) qs[32 * c + l] = static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
}

}  // namespace

void quantize_row(DType type, const float* x, int64_t n, uint8_t* out) {
  check_row(type, n);
  const int64_t be = dtype_block_elems(type), bb = dtype_block_bytes(type);
  for (int64_t b = 0; b < n / be; ++b) {
    switch (type) {
      case DType::Q8_0: quantize_q8_0(x + b * be, out + b * bb); break;
      case DType::Q4_0: quantize_q4_0(x + b * be, out + b * bb); break;
      default: quantize_q4_k(x + b * be, out + b * bb); break;
    }
  }
}

void dequantize_row(DType type, const uint8_t* in, int64_t n, float* out) {
  check_row(type, n);
  const int64_t be = dtype_block_elems(type), bb = dtype_block_bytes(type);
  for (int64_t b = 0; b < n / be; ++b) {
    const uint8_t* blk = in + b * bb;
    float* o = out + b * be;
    const float d = f16_to_f32(load_u16(blk));
    if (type == DType::Q8_0) {
      for (int j = 0; j < 32; ++j) o[j] = d * static_cast<float>(static_cast<int8_t>(blk[2 + j]));
    } else if (type == DType::Q4_0) {
      for (int j = 0; j < 16; ++j) {
        o[j] = d * static_cast<float>((blk[2 + j] & 0xF) - 8);
        o[j + 16] = d * static_cast<float>((blk[2 + j] >> 4) - 8);
      }
    } else {
      const float dmin = f16_to_f32(load_u16(blk + 2));
      const uint8_t* scales = blk + 4;
      const uint8_t* qs = blk + 16;
      for (int c = 0; c < 4; ++c) {
        uint8_t s0, m0, s1, m1;
        q4k_scale_min(2 * c, scales, &s0, &m0);
        q4k_scale_min(2 * c + 1, scales, &s1, &m1);
        const float d0 = d * s0, dm0 = dmin * m0, d1 = d * s1, dm1 = dmin * m1;
        for (int l = 0; l < 32; ++l) {
          o[64 * c + l] = d0 * static_cast<float>(qs[32 * c + l] & 0xF) - dm0;
          o[64 * c + 32 + l] = d1 * static_cast<float>(qs[32 * c + l] >> 4) - dm1;
        }
      }
    }
  }
}

void quantize_activations(const float* x, int64_t n, int8_t* q, float* d, float* d_sum) {
  if (n % 32 != 0) throw Error("quantize_activations: " + std::to_string(n) + " is not a multiple of 32");
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* xb = x + 32 * b;
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      const int v = static_cast<int>(std::nearbyint(xb[j] * id));
      q[32 * b + j] = static_cast<int8_t>(v);
      sum += v;
    }
    d[b] = db;
    d_sum[b] = db * static_cast<float>(sum);
  }
}

}  // namespace fh1::quant
