// Internal to the CUDA backend: the checkpoint's tensors in device memory (bind_weight), each
// bf16 matrix's power-of-two shift into fp16's range, and the fp16 copies the prefill GEMM uses
// where memory allows (cuda_gemm_f16.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

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

// Every uploaded tensor of one backend. shift_scratch: one device uint32 for the shifts'
// reductions (synchronous on the stream given).
//
// fp16 copies: each bf16 matrix gets one (2 bytes a weight) at the first fp16 matmul that needs
// it, while at least max(2 GiB, 10 % of the device) stays free; the first refusal ends the
// copying. The copies give way to every other allocation: the backend frees them all when one
// fails (drop_f16_copies(true)), and no more are made. Without a copy, each call converts its
// matrix into scratch (7B: ~8 ms of a forward pass, 15 GB read and written).
class DeviceWeights {
 public:
  explicit DeviceWeights(uint32_t* shift_scratch) : shift_scratch_(shift_scratch) {}
  ~DeviceWeights();
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;

  WeightView bind(const TensorView& t, cudaStream_t s);
  // Benchmarks: every tensor uniform in +-1/sqrt(cols), shifts measured again, copies dropped.
  void randomize(uint64_t seed, cudaStream_t s);

  // The fp16 shift of the uploaded matrix that holds W (a view may start inside one); measured
  // now for a bf16 matrix that was not uploaded here.
  int f16_shift(const WeightView& W, cudaStream_t s);

  // The least e with sum_k |W[n, k]| <= 2^e for every row n of a bf16 W (W's own values, before
  // any fp16 shift): the bound on W's outputs that lets them be kept in fp16 (gemm_f16_out16).
  // Measured at the first call for W (synchronously) and kept; INT_MAX when the sum is not finite.
  int l1_exponent(const WeightView& W, cudaStream_t s);

  // W's values in fp16 for the fp16 GEMM, scaled by 2^shift (f16_shift(W)).
  struct F16Copy {
    uint16_t* w16 = nullptr;             // W's values in the kept copy (null: none)
    const uint16_t* fill_src = nullptr;  // a new copy: the caller fills it first, from here
    uint16_t* fill_dst = nullptr;
    size_t fill_n = 0;
    bool fill = false;
  };
  F16Copy f16_copy(const WeightView& W, int shift);
  // W with each row i multiplied by row_scale[i] (device memory, W.rows floats, a constant of the
  // model: Mamba-2's mup vector on the in_proj's outputs) in fp16, scaled by 2^shift into fp16's
  // range. Made at the first call for that (W, row_scale), synchronously, and kept like the
  // copies above; w16 null when copies are off or memory is short.
  struct ScaledCopy {
    const uint16_t* w16 = nullptr;
    int shift = 0;
  };
  ScaledCopy f16_row_scaled_copy(const WeightView& W, const float* row_scale, cudaStream_t s);
  // Frees every copy (close: and makes no more). The caller waits for the work that uses them.
  void drop_f16_copies(bool close);
  // Copies on or off (off drops them; on opens them again).
  void set_f16_copies(bool on);
  bool f16_copies() const { return copies_on_; }

  size_t bytes() const { return bytes_; }
  size_t f16_copy_bytes() const { return copy_bytes_; }

 private:
  struct Uploaded {
    DType dtype;
    size_t n;
    int64_t cols;
    int f16_shift;  // BF16: the power of two that scales it into fp16's range (cuda_gemm_f16.cu)
    uint16_t* f16 = nullptr;  // BF16: its fp16 copy, when kept
  };
  // A new copy's memory, while the copies are open and enough stays free; else null (and the
  // copies close).
  uint16_t* copy_memory(size_t bytes);
  // The upload that holds W's first element, or null.
  std::pair<void* const, Uploaded>* holding(const WeightView& W);

  uint32_t* shift_scratch_;
  std::map<void*, Uploaded> all_;
  std::map<std::tuple<const void*, const float*, int64_t, int64_t>, ScaledCopy> scaled_;
  std::map<std::tuple<const void*, int64_t, int64_t>, int> l1_exponents_;
  size_t bytes_ = 0, copy_bytes_ = 0;
  bool copies_on_ = true, copies_closed_ = false;
};

}  // namespace fh1::cuda
