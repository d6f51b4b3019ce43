#include "kernels/cuda/cuda_weights.h"

#include <algorithm>
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

}  // namespace fh1::cuda
