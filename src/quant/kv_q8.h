// The 8-bit KV cache (Kernels::kv_cache_dtype() == DType::I8, `--kv-cache q8`): a quarter of
// float32's bytes and a little over half of bf16's, for decode steps at long contexts, where
// reading the caches is most of a step's memory traffic. Not exact to the reference: each value
// carries an error of at most half a step of its block's scale (max|x| / 254).
//
// A cache row of `width` values (all KV heads of one token) takes kv_q8_row_bytes(width) bytes:
//   int8 q[width], zeros to 4 bytes, float32 d[width / B] (B = kv_q8_block(width)) from byte
//   kv_q8_scales_at(width), then zeros to 16 bytes;
//   value i = q[i] * d[i / B], where over each block of B values d = max|x| / 127 and
//   q = rint(x / d) (0 where d is 0).
// Rows are whole multiples of 16 bytes, so a prefix of rows is a prefix of the buffer (a cache
// grows by copying its used bytes) and every row starts 16-byte aligned on a GPU.
// Header-only: the CPU backend, the CUDA backend's host code and the tests share it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace fh1 {

// Values per scale: 32, or the largest power of two that divides width when 32 does not.
inline int64_t kv_q8_block(int64_t width) {
  int64_t b = 32;
  while (b > 1 && width % b != 0) b /= 2;
  return b;
}

inline int64_t kv_q8_scales_at(int64_t width) { return (width + 3) / 4 * 4; }

inline int64_t kv_q8_row_bytes(int64_t width) {
  return (kv_q8_scales_at(width) + 4 * (width / kv_q8_block(width)) + 15) / 16 * 16;
}

// One block's scale and its quantized values (the CUDA kernels compute the same: a float32
// division, rounded to nearest even).
inline float kv_q8_scale(float absmax) { return absmax / 127.0f; }
inline int8_t kv_q8_value(float x, float d) {
  if (!(d > 0.0f)) return 0;
  const float q = std::nearbyint(x / d);
  return static_cast<int8_t>(std::clamp(q, -127.0f, 127.0f));
}

// row (kv_q8_row_bytes(width) bytes) = x[0 .. width) quantized.
inline void kv_q8_quantize_row(const float* x, int64_t width, uint8_t* row) {
  const int64_t B = kv_q8_block(width);
  auto* q = reinterpret_cast<int8_t*>(row);
  for (int64_t b = 0; b < width; b += B) {
    float m = 0.0f;
    for (int64_t i = b; i < b + B; ++i) m = std::max(m, std::fabs(x[i]));
    const float d = kv_q8_scale(m);
    for (int64_t i = b; i < b + B; ++i) q[i] = kv_q8_value(x[i], d);
    std::memcpy(row + kv_q8_scales_at(width) + 4 * (b / B), &d, sizeof(float));
  }
  const int64_t used = kv_q8_scales_at(width) + 4 * (width / B);  // then padding, zeroed
  for (int64_t i = width; i < kv_q8_scales_at(width); ++i) row[i] = 0;
  for (int64_t i = used; i < kv_q8_row_bytes(width); ++i) row[i] = 0;
}

// Calls f(q, count, d, at) for each block's part of values [first, first + n) of a quantized
// row of `width`: count int8 values from q, all with scale d, for out[at .. at + count).
template <class F>
inline void kv_q8_for_blocks(const uint8_t* row, int64_t width, int64_t first, int64_t n, F&& f) {
  const int64_t B = kv_q8_block(width), sat = kv_q8_scales_at(width);
  const auto* q = reinterpret_cast<const int8_t*>(row);
  for (int64_t i = first; i < first + n;) {
    const int64_t end = std::min(first + n, (i / B + 1) * B);
    float d;
    std::memcpy(&d, row + sat + 4 * (i / B), sizeof(float));
    f(q + i, end - i, d, i - first);
    i = end;
  }
}

// out[0 .. n) = values [first, first + n) of a quantized row of `width` (block by block: the
// inner loop vectorizes).
inline void kv_q8_dequantize(const uint8_t* row, int64_t width, int64_t first, int64_t n, float* out) {
  kv_q8_for_blocks(row, width, first, n, [out](const int8_t* q, int64_t count, float d, int64_t at) {
    for (int64_t j = 0; j < count; ++j) out[at + j] = static_cast<float>(q[j]) * d;
  });
}

}  // namespace fh1
