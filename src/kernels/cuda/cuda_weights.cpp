#include "kernels/cuda/cuda_weights.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "quant/blocks.h"
#include "util/error.h"
#include "util/half.h"

namespace fh1::cuda {

DeviceWeight upload_weight(const TensorView& t, int64_t rows, int64_t cols, cudaStream_t s) {
  if (!is_float_dtype(t.dtype) && !is_quantized_dtype(t.dtype))
    throw Error("tensor '" + t.name + "': dtype " + dtype_name(t.dtype) +
                " is neither a float type (F32, F16, BF16) nor a quantized one (Q8_0, Q4_0, Q4_K)");
  const size_t n = static_cast<size_t>(t.numel());
  DeviceWeight w;
  const std::string what = "upload of '" + t.name + "'";
  if (is_quantized_dtype(t.dtype)) {
    w.dtype = DType::BF16;
    check(cudaMalloc(&w.data, std::max<size_t>(n, 1) * 2), what.c_str());
    const int64_t rb = dtype_row_bytes(t.dtype, cols);
    std::vector<float> row(static_cast<size_t>(cols));
    std::vector<uint16_t> staging;
    constexpr int64_t kRowsPerCopy = 256;
    for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerCopy) {
      const int64_t r1 = std::min(rows, r0 + kRowsPerCopy);
      staging.resize(static_cast<size_t>((r1 - r0) * cols));
      for (int64_t r = r0; r < r1; ++r) {
        quant::dequantize_row(t.dtype, t.data + r * rb, cols, row.data());
        for (int64_t c = 0; c < cols; ++c) staging[static_cast<size_t>((r - r0) * cols + c)] = fh1::f32_to_bf16(row[c]);
      }
      check(cudaMemcpy(static_cast<uint16_t*>(w.data) + r0 * cols, staging.data(), staging.size() * 2,
                       cudaMemcpyHostToDevice),
            what.c_str());
    }
  } else if (t.dtype == DType::BF16) {
    w.dtype = DType::BF16;
    check(cudaMalloc(&w.data, std::max<size_t>(n, 1) * 2), what.c_str());
    check(cudaMemcpy(w.data, t.data, n * 2, cudaMemcpyHostToDevice), what.c_str());
  } else {
    w.dtype = DType::F32;
    check(cudaMalloc(&w.data, std::max<size_t>(n, 1) * 4), what.c_str());
    if (t.dtype == DType::F32) {
      check(cudaMemcpy(w.data, t.data, n * 4, cudaMemcpyHostToDevice), what.c_str());
    } else {  // F16: upload the halves, widen on the device
      void* tmp = nullptr;
      check(cudaMalloc(&tmp, std::max<size_t>(n, 1) * 2), "upload (f16 staging)");
      check(cudaMemcpy(tmp, t.data, n * 2, cudaMemcpyHostToDevice), what.c_str());
      f16_to_f32(static_cast<const uint16_t*>(tmp), n, static_cast<float*>(w.data), s);
      check(cudaStreamSynchronize(s), "upload (f16)");
      cudaFree(tmp);
    }
  }
  return w;
}

DeviceWeights::~DeviceWeights() {
  for (auto& [p, w] : all_) {
    cudaFree(p);
    cudaFree(w.f16);
  }
  for (auto& [k, c] : scaled_) cudaFree(const_cast<uint16_t*>(c.w16));
}

WeightView DeviceWeights::bind(const TensorView& t, cudaStream_t s) {
  WeightView w;
  w.rows = t.shape.empty() ? 1 : t.shape[0];
  w.cols = w.rows == 0 ? 0 : t.numel() / w.rows;
  const size_t n = static_cast<size_t>(t.numel());
  const DeviceWeight d = upload_weight(t, w.rows, w.cols, s);
  w.dtype = d.dtype;
  w.data = d.data;
  const int shift = d.dtype == DType::BF16 ? f16_shift_of_bf16(static_cast<const uint16_t*>(d.data), n, shift_scratch_, s) : 0;
  all_[d.data] = {d.dtype, n, w.cols, shift};
  bytes_ += n * (d.dtype == DType::BF16 ? 2 : 4);
  return w;
}

void DeviceWeights::randomize(uint64_t seed, cudaStream_t s) {
  check(cudaStreamSynchronize(s), "randomize weights");
  drop_f16_copies(false);  // made again from the new values
  l1_exponents_.clear();
  uint64_t i = 0;
  for (auto& [p, w] : all_) {
    const float amp = w.cols > 0 ? 1.0f / std::sqrt(static_cast<float>(w.cols)) : 1.0f;
    const uint64_t seed_i = seed * 0x9E3779B97F4A7C15ull + (++i);
    if (w.dtype == DType::BF16) {
      fill_random_bf16(static_cast<uint16_t*>(p), w.n, amp, seed_i, s);
      w.f16_shift = f16_shift_of_bf16(static_cast<const uint16_t*>(p), w.n, shift_scratch_, s);
    } else {
      fill_random_f32(static_cast<float*>(p), w.n, amp, seed_i, s);
    }
  }
}

std::pair<void* const, DeviceWeights::Uploaded>* DeviceWeights::holding(const WeightView& W) {
  auto it = all_.upper_bound(const_cast<void*>(W.data));
  if (it == all_.begin()) return nullptr;
  --it;
  const size_t bytes = it->second.n * (it->second.dtype == DType::BF16 ? 2 : 4);
  return static_cast<const char*>(W.data) < static_cast<const char*>(it->first) + bytes ? &*it : nullptr;
}

int DeviceWeights::f16_shift(const WeightView& W, cudaStream_t s) {
  if (const auto* u = holding(W); u && u->second.dtype == DType::BF16) return u->second.f16_shift;
  return f16_shift_of_bf16(static_cast<const uint16_t*>(W.data), static_cast<size_t>(W.rows * W.cols), shift_scratch_, s);
}

int DeviceWeights::l1_exponent(const WeightView& W, cudaStream_t s) {
  const auto key = std::make_tuple(W.data, W.rows, W.cols);
  auto it = l1_exponents_.find(key);
  if (it == l1_exponents_.end()) {
    // The float32 sums of up to K terms round by at most ~K 2^-24 of themselves: a margin of 2^-10.
    const float l1 = bf16_rows_l1_max(static_cast<const uint16_t*>(W.data), W.rows, W.cols, shift_scratch_, s) *
                     (1.0f + 0x1p-10f);
    int e = 0;
    if (!std::isfinite(l1)) e = std::numeric_limits<int>::max();  // no bound: callers keep float32
    else if (l1 > 0.0f) std::frexp(l1, &e);                      // l1 < 2^e
    it = l1_exponents_.emplace(key, e).first;
  }
  return it->second;
}

DeviceWeights::F16Copy DeviceWeights::f16_copy(const WeightView& W, int shift) {
  F16Copy c;
  auto* held = holding(W);
  if (!copies_on_ || held == nullptr) return c;
  Uploaded& u = held->second;
  const size_t off = static_cast<size_t>(static_cast<const char*>(W.data) - static_cast<const char*>(held->first)) / 2;
  if (u.dtype != DType::BF16 || u.f16_shift != shift || off + static_cast<size_t>(W.rows * W.cols) > u.n) return c;
  if (u.f16 == nullptr) {
    u.f16 = copy_memory(u.n * 2);
    if (u.f16 == nullptr) return c;
    c.fill = true;
    c.fill_src = static_cast<const uint16_t*>(held->first);
    c.fill_dst = u.f16;
    c.fill_n = u.n;
  }
  c.w16 = u.f16 + off;
  return c;
}

uint16_t* DeviceWeights::copy_memory(size_t bytes) {
  if (!copies_on_ || copies_closed_) return nullptr;
  size_t free_b = 0, total_b = 0;
  void* p = nullptr;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess ||
      free_b < bytes + std::max<size_t>(size_t(2) << 30, total_b / 10) || cudaMalloc(&p, bytes) != cudaSuccess) {
    cudaGetLastError();
    copies_closed_ = true;
    return nullptr;
  }
  copy_bytes_ += bytes;
  return static_cast<uint16_t*>(p);
}

DeviceWeights::ScaledCopy DeviceWeights::f16_row_scaled_copy(const WeightView& W, const float* row_scale,
                                                             cudaStream_t s) {
  if (W.dtype != DType::BF16 || holding(W) == nullptr) return {};
  const auto key = std::make_tuple(W.data, row_scale, W.rows, W.cols);
  if (auto it = scaled_.find(key); it != scaled_.end()) return it->second;
  uint16_t* w16 = copy_memory(static_cast<size_t>(W.rows * W.cols) * 2);
  if (w16 == nullptr) return {};
  const auto* w = static_cast<const uint16_t*>(W.data);
  ScaledCopy c{w16, f16_shift_of_bf16_rows_scaled(w, W.rows, W.cols, row_scale, shift_scratch_, s)};
  bf16_to_f16_rows_scaled(w, W.rows, W.cols, row_scale, c.shift, w16, s);
  return scaled_[key] = c;
}

void DeviceWeights::drop_f16_copies(bool close) {
  if (close) copies_closed_ = true;
  if (copy_bytes_ == 0) return;
  for (auto& [p, w] : all_) {
    cudaFree(w.f16);
    w.f16 = nullptr;
  }
  for (auto& [k, c] : scaled_) cudaFree(const_cast<uint16_t*>(c.w16));
  scaled_.clear();
  copy_bytes_ = 0;
}

void DeviceWeights::set_f16_copies(bool on) {
  copies_on_ = on;
  copies_closed_ = false;
  if (!on) drop_f16_copies(false);
}

}  // namespace fh1::cuda
