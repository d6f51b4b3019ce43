// The prefill's fp16 GEMMs through cublasLt with an algorithm picked per shape by timing
// (cuda_gemm_lt.cu). cublasGemmEx runs the heuristic's first choice; for some shapes another of
// its candidates is faster. GemmAlgos times the candidates once per shape (N, K, T rounded up to
// a power of two, output type, where alpha lives, the operands' alignment) and keeps the fastest
// whose output is bit for bit the default algorithm's (a checksum of the outputs), so the choice
// changes speed only, never results.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <tuple>

namespace fh1::cuda {

class GemmAlgos {
 public:
  GemmAlgos();
  ~GemmAlgos();
  GemmAlgos(const GemmAlgos&) = delete;
  GemmAlgos& operator=(const GemmAlgos&) = delete;

  // Off unless FH1_CUDA_GEMM_TUNE=1 or set_enabled(true): 0-2 % of a small model's 8K prompt
  // (docs/cuda.md), against the first prompt of each shape waiting for the timing.
  bool enabled() const { return enabled_; }
  void set_enabled(bool on) { enabled_ = on; }

  // y[T, N] (column-major N x T, fp16 if y16 else float32) = alpha W^T x with W fp16 [N, K] and
  // x fp16 [T, K], float32 sums; alpha one float in host memory or, alpha_on_device, in device
  // memory (beta zero). Runs the tuned algorithm on stream s with workspace ws and returns true;
  // returns false where it does not (turned off, no candidate faster than the default, or a
  // shape first met while s is being captured into a graph): the caller then calls
  // run_default, which must compute the same GEMM through cublasGemmEx on s. Tuning a shape
  // calls run_default too and waits for the stream (once a shape).
  bool run(const uint16_t* w16, int64_t N, int64_t K, const uint16_t* x16, int64_t T, void* y, bool y16,
           const float* alpha, bool alpha_on_device, void* ws, size_t ws_bytes, cudaStream_t s,
           const std::function<void()>& run_default);

  // Shapes tuned so far and how many took an algorithm other than the default's.
  int tuned() const { return tuned_; }
  int replaced() const { return replaced_; }

 private:
  struct Choice {
    bool use = false;  // false: the default (cublasGemmEx) was fastest
    cublasLtMatmulAlgo_t algo{};
    int64_t T = 0;  // the rows it was timed at
  };
  // N, K, T's bucket, y16, alpha_on_device, the operands' alignment (bytes, at most 256)
  using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, uint32_t>;
  struct Plan;  // descriptors of one problem
  Choice tune(const Plan& p, uint32_t align, void* y, size_t y_bytes, void* ws, size_t ws_bytes, cudaStream_t s,
              const std::function<void()>& run_default);

  cublasLtHandle_t lt_ = nullptr;
  bool enabled_ = false;
  std::mutex mu_;
  std::map<Key, Choice> table_;
  unsigned long long* sum_ = nullptr;  // device: [0] the outputs' checksum, [1] zero (beta read there)
  cudaEvent_t ev_[2] = {};
  int tuned_ = 0, replaced_ = 0;
};

}  // namespace fh1::cuda
