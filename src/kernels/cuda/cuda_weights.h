// Internal to the CUDA backend: a checkpoint tensor's upload to device memory (bind_weight).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "io/safetensors.h"
#include "kernels/kernels.h"

namespace fh1::cuda {

struct DeviceWeight {
  void* data = nullptr;  // cudaMalloc'd; the caller frees it
  DType dtype = DType::UNKNOWN;
};

// Uploads a tensor of rows x cols values: BF16 as it is; F32 as it is and F16 widened to F32 on
// the device; quantized blocks (Q8_0, Q4_0, Q4_K) dequantized on the host and uploaded as BF16
// (no quantized GPU kernels yet: the model then runs, and costs, as a bf16 one). Synchronous.
// Throws fh1::Error for any other dtype.
DeviceWeight upload_weight(const TensorView& t, int64_t rows, int64_t cols, cudaStream_t s);

}  // namespace fh1::cuda
