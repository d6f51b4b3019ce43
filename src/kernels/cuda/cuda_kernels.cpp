// The CUDA backend's host side: device memory (a caching allocator over cudaMalloc), weight
// upload, host-array uploads, cuBLAS matmuls, and the dispatch of every other op to the device
// kernels of cuda_ops.cu, cuda_attention.cu and cuda_ssm.cu. All work runs in order on one stream.
#include "kernels/cuda/cuda_kernels.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/safetensors.h"
#include "kernels/cuda/cuda_ops.h"
#include "util/error.h"

namespace fh1 {
namespace cuda {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

void check_launch(const char* what) { check(cudaGetLastError(), what); }

}  // namespace cuda

namespace {

using cuda::check;

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLAS: ") + what + ": status " + std::to_string(static_cast<int>(s)));
}

// Rounds an allocation up to a size class, so freed buffers are found again: 512 B steps up to
// 1 MiB, then steps of an eighth of the power of two below.
size_t size_class(size_t bytes) {
  if (bytes <= (1u << 20)) return std::max<size_t>(512, (bytes + 511) / 512 * 512);
  size_t p = 1;
  while (p * 2 <= bytes) p *= 2;
  const size_t step = p / 8;
  return (bytes + step - 1) / step * step;
}

// A device copy of a small host array (ids, positions, inverse frequencies), re-uploaded only
// when its content changes: rope runs twice per layer on the same positions.
struct HostUpload {
  std::vector<char> last;
  void* dev = nullptr;
  size_t cap = 0;
};

class CudaKernelsImpl final : public CudaKernels {
 public:
  explicit CudaKernelsImpl(int device) : device_(device) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) throw Error("CUDA: no GPU is visible");
    if (device < 0 || device >= n)
      throw Error("CUDA: device " + std::to_string(device) + " does not exist (" + std::to_string(n) + " visible)");
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_blas(cublasCreate(&blas_), "cublasCreate");
    check_blas(cublasSetStream(blas_, stream_), "cublasSetStream");
    check_blas(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");  // no TF32
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    if (const char* m = std::getenv("FH1_CUDA_MATMUL")) split_ = std::string(m) != "bf16";
    if (const char* g = std::getenv("FH1_CUDA_GEMV")) gemv_ = std::string(g) != "0";
    name_ = std::string("cuda:") + std::to_string(device) + " (" + prop.name + ")";
  }

  ~CudaKernelsImpl() override {
    cudaStreamSynchronize(stream_);
    for (auto& [p, w] : weights_) cudaFree(p);
    for (auto& [p, sz] : live_) cudaFree(p);
    for (auto& [sz, v] : cache_)
      for (void* p : v) cudaFree(p);
    for (auto* u : {&ids_, &pos_, &freq_}) cudaFree(u->dev);
    cudaFree(xb_);
    cudaFree(y2_);
    cudaFree(att_scratch_);
    cublasDestroy(blas_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }

  // ---- memory ----
  float* alloc(size_t n) override {
    const size_t bytes = size_class(std::max<size_t>(n, 1) * sizeof(float));
    void* p = nullptr;
    auto it = cache_.find(bytes);
    if (it != cache_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      cached_bytes_ -= bytes;
    } else {
      if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError();
        trim();
        check(cudaMalloc(&p, bytes), ("cudaMalloc of " + std::to_string(bytes) + " bytes").c_str());
      }
    }
    live_[p] = bytes;
    live_bytes_ += bytes;
    peak_live_ = std::max(peak_live_, live_bytes_);
    check(cudaMemsetAsync(p, 0, n * sizeof(float), stream_), "cudaMemsetAsync");
    return static_cast<float*>(p);
  }

  void free(float* p) override {
    if (p == nullptr) return;
    auto it = live_.find(p);
    if (it == live_.end()) return;
    cache_[it->second].push_back(p);  // reuse is ordered after earlier work: one stream
    live_bytes_ -= it->second;
    cached_bytes_ += it->second;
    live_.erase(it);
  }

  void to_host(float* dst, const float* src, size_t n) override {
    check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_), "to_host");
    check(cudaStreamSynchronize(stream_), "to_host (synchronize)");
  }
  void from_host(float* dst, const float* src, size_t n) override {
    // From pageable memory the driver stages the data before returning: src may be reused at once.
    check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, stream_), "from_host");
  }
  void copy(float* dst, const float* src, size_t n) override {
    if (n) check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_), "copy");
  }
  void zero(float* dst, size_t n) override {
    if (n) check(cudaMemsetAsync(dst, 0, n * sizeof(float), stream_), "zero");
  }

  WeightView bind_weight(const TensorView& t) override {
    if (!is_float_dtype(t.dtype))
      throw Error("tensor '" + t.name + "': dtype " + dtype_name(t.dtype) + " is not a float type (F32, F16, BF16)");
    WeightView w;
    w.rows = t.shape.empty() ? 1 : t.shape[0];
    w.cols = w.rows == 0 ? 0 : t.numel() / w.rows;
    const size_t n = static_cast<size_t>(t.numel());
    void* p = nullptr;
    if (t.dtype == DType::BF16) {
      w.dtype = DType::BF16;
      check(cudaMalloc(&p, std::max<size_t>(n, 1) * 2), ("upload of '" + t.name + "'").c_str());
      check(cudaMemcpy(p, t.data, n * 2, cudaMemcpyHostToDevice), "upload");
      weights_[p] = {DType::BF16, n, w.cols};
    } else {
      w.dtype = DType::F32;
      check(cudaMalloc(&p, std::max<size_t>(n, 1) * 4), ("upload of '" + t.name + "'").c_str());
      if (t.dtype == DType::F32) {
        check(cudaMemcpy(p, t.data, n * 4, cudaMemcpyHostToDevice), "upload");
      } else {  // F16: upload the halves, widen on the device
        void* tmp = nullptr;
        check(cudaMalloc(&tmp, std::max<size_t>(n, 1) * 2), "upload (f16 staging)");
        check(cudaMemcpy(tmp, t.data, n * 2, cudaMemcpyHostToDevice), "upload");
        cuda::f16_to_f32(static_cast<const uint16_t*>(tmp), n, static_cast<float*>(p), stream_);
        check(cudaStreamSynchronize(stream_), "upload (f16)");
        cudaFree(tmp);
      }
      weights_[p] = {DType::F32, n, w.cols};
    }
    weight_bytes_ += n * (w.dtype == DType::BF16 ? 2 : 4);
    w.data = p;
    return w;
  }

  // ---- dense ops ----
  void matmul(const float* x, int64_t ldx, int64_t T, const WeightView& W, const float* bias, float* y) override {
    const int64_t N = W.rows, K = W.cols;
    if (T == 0 || N == 0) return;
    const float one = 1.0f, zero = 0.0f;
    if (W.dtype == DType::BF16 && T <= cuda::kGemvRows && gemv_) {
      // Decode: memory-bound; our GEMV reads the weights once with float32 activations.
      cuda::gemv_bf16(static_cast<const uint16_t*>(W.data), N, K, x, ldx, T, bias, y, stream_);
      return;
    }
    if (W.dtype == DType::BF16 && !split_) {
      uint16_t* xb = bf16_scratch(static_cast<size_t>(T * K));
      cuda::f32_to_bf16(x, ldx, T, K, xb, stream_);
      gemm_bf16(W, xb, T, y, 0.0f);
    } else if (W.dtype == DType::BF16) {
      // Activations split as hi + lo bf16 parts: products exact in float32, about 16 bits of each
      // activation kept, so the result is within ~1e-5 of float32 activations times bf16 weights.
      uint16_t* xb = bf16_scratch(static_cast<size_t>(2 * T * K));
      cuda::f32_to_bf16_split(x, ldx, T, K, xb, xb + T * K, stream_);
      if (T <= kStackedRows) {  // one GEMM over [hi; lo]: the weights are read once
        float* y2 = f32_scratch(static_cast<size_t>(2 * T * N));
        gemm_bf16(W, xb, 2 * T, y2, 0.0f);
        cuda::sum_halves(y2, T, N, bias, y, stream_);
        return;
      }
      gemm_bf16(W, xb, T, y, 0.0f);
      gemm_bf16(W, xb + T * K, T, y, 1.0f);
    } else if (W.dtype == DType::F32) {
      check_blas(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(T),
                             static_cast<int>(K), &one, static_cast<const float*>(W.data), static_cast<int>(K), x,
                             static_cast<int>(ldx), &zero, y, static_cast<int>(N)),
                 "cublasSgemm");
    } else {
      throw Error(std::string("CUDA matmul: weights of dtype ") + dtype_name(W.dtype) + " were not bound by this backend");
    }
    if (bias) cuda::add_bias(y, T, N, bias, stream_);
  }

  void embed(const int32_t* ids, int64_t T, const WeightView& table, float scale, float* out) override {
    for (int64_t t = 0; t < T; ++t)
      if (ids[t] < 0 || ids[t] >= table.rows)
        throw Error("token id " + std::to_string(ids[t]) + " is outside the vocabulary [0, " +
                    std::to_string(table.rows) + ")");
    const auto* d_ids = static_cast<const int32_t*>(upload(ids_, ids, static_cast<size_t>(T) * sizeof(int32_t)));
    cuda::embed(d_ids, T, table.dtype, table.data, table.cols, scale, out, stream_);
  }

  void rmsnorm(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out) override {
    cuda::rmsnorm(x, T, d, w, eps, out, stream_);
  }
  void scale(const float* x, size_t n, float s, float* out) override { cuda::scale(x, n, s, out, stream_); }
  void mul_columns(float* x, int64_t T, int64_t d, const float* v) override { cuda::mul_columns(x, T, d, v, stream_); }
  void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n) override {
    cuda::residual_add2(h, a, sa, b, sb, n, stream_);
  }
  void residual_add(float* h, const float* a, float s, size_t n) override {
    cuda::residual_add2(h, a, s, nullptr, 0.0f, n, stream_);
  }
  void silu_mul(const float* gate, const float* up, float gs, size_t n, float* out) override {
    cuda::silu_mul(gate, up, gs, n, out, stream_);
  }
  void gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d) override {
    cuda::gate_silu(y, z, ldz, T, d, stream_);
  }
  void gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups, const float* w,
                     float eps, bool norm_before_gate) override {
    cuda::gated_rmsnorm(y, z, ldz, T, d, groups, w, eps, norm_before_gate, stream_);
  }

  // ---- attention ----
  void rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* positions,
            const float* inv_freq) override {
    const auto* d_pos = static_cast<const int64_t*>(upload(pos_, positions, static_cast<size_t>(T) * sizeof(int64_t)));
    const auto* d_freq = static_cast<const float*>(upload(freq_, inv_freq, static_cast<size_t>(hd / 2) * sizeof(float)));
    cuda::rope(x, ld, T, heads, hd, d_pos, d_freq, stream_);
  }

  void attention(const float* q, int64_t ldq, int64_t T, const float* k_cache, const float* v_cache, int64_t n_past,
                 int H, int Hkv, int hd, float scale, float* out) override {
    const size_t need = cuda::attention_scratch_floats(T, n_past, H, hd);
    if (need > att_scratch_cap_) {
      check(cudaStreamSynchronize(stream_), "attention scratch");
      cudaFree(att_scratch_);
      att_scratch_ = nullptr;
      att_scratch_cap_ = std::max(need, att_scratch_cap_ * 2);
      check(cudaMalloc(&att_scratch_, att_scratch_cap_ * sizeof(float)), "attention scratch");
    }
    cuda::attention(q, ldq, T, k_cache, v_cache, n_past, H, Hkv, hd, scale, out, att_scratch_, stream_);
  }

  // ---- Mamba-2 ----
  void conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w, const float* bias,
                   float* conv_state, float* out) override {
    cuda::conv1d_silu(in, ld_in, T, C, K, w, bias, conv_state, out, stream_);
  }
  void ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
                int64_t T, const SsmParams& p, float* state, float* y) override {
    cuda::ssm_scan(x, B, C, ld_xbc, dt_raw, ld_dt, T, p, state, y, stream_);
  }

  // ---- CudaKernels ----
  void set_matmul_split(bool on) override { split_ = on; }
  bool matmul_split() const override { return split_; }
  void synchronize() override { check(cudaStreamSynchronize(stream_), "synchronize"); }

  CudaMemoryStats memory_stats() const override {
    return CudaMemoryStats{weight_bytes_, live_bytes_, peak_live_, cached_bytes_};
  }
  void reset_peak() override { peak_live_ = live_bytes_; }

  void trim() override {
    cudaStreamSynchronize(stream_);
    for (auto& [sz, v] : cache_)
      for (void* p : v) cudaFree(p);
    cache_.clear();
    cached_bytes_ = 0;
  }

  void randomize_weights(uint64_t seed) override {
    uint64_t i = 0;
    for (auto& [p, w] : weights_) {
      const float amp = w.cols > 0 ? 1.0f / std::sqrt(static_cast<float>(w.cols)) : 1.0f;
      const uint64_t s = seed * 0x9E3779B97F4A7C15ull + (++i);
      if (w.dtype == DType::BF16)
        cuda::fill_random_bf16(static_cast<uint16_t*>(p), w.n, amp, s, stream_);
      else
        cuda::fill_random_f32(static_cast<float*>(p), w.n, amp, s, stream_);
    }
    synchronize();
  }

 private:
  struct Uploaded {
    DType dtype;
    size_t n;
    int64_t cols;
  };

  static constexpr int64_t kStackedRows = 64;

  // y[T, N] = xb[T, K] @ W^T (+ beta * y), float32 accumulate and output.
  void gemm_bf16(const WeightView& W, const uint16_t* xb, int64_t T, float* y, float beta) {
    const float one = 1.0f;
    const int N = static_cast<int>(W.rows), K = static_cast<int>(W.cols);
    check_blas(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, static_cast<int>(T), K, &one, W.data, CUDA_R_16BF, K,
                            xb, CUDA_R_16BF, K, &beta, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (bf16)");
  }

  float* f32_scratch(size_t n) {
    if (n > y2_cap_) {
      check(cudaStreamSynchronize(stream_), "f32 scratch");
      cudaFree(y2_);
      y2_ = nullptr;
      y2_cap_ = std::max(n, y2_cap_ * 2);
      check(cudaMalloc(&y2_, y2_cap_ * 4), "f32 scratch");
    }
    return y2_;
  }

  uint16_t* bf16_scratch(size_t n) {
    if (n > xb_cap_) {
      check(cudaStreamSynchronize(stream_), "bf16 scratch");
      cudaFree(xb_);
      xb_ = nullptr;
      xb_cap_ = std::max(n, xb_cap_ * 2);
      check(cudaMalloc(&xb_, xb_cap_ * 2), "bf16 scratch");
    }
    return xb_;
  }

  const void* upload(HostUpload& u, const void* src, size_t bytes) {
    if (bytes == 0) return u.dev;
    if (u.dev != nullptr && u.last.size() == bytes && std::memcmp(u.last.data(), src, bytes) == 0) return u.dev;
    if (bytes > u.cap) {
      check(cudaStreamSynchronize(stream_), "host upload");
      cudaFree(u.dev);
      u.dev = nullptr;
      u.cap = std::max(bytes, u.cap * 2);
      check(cudaMalloc(&u.dev, u.cap), "host upload buffer");
    }
    u.last.assign(static_cast<const char*>(src), static_cast<const char*>(src) + bytes);
    // Pageable source: staged by the driver before the call returns; ordered on the stream.
    check(cudaMemcpyAsync(u.dev, u.last.data(), bytes, cudaMemcpyHostToDevice, stream_), "host upload");
    return u.dev;
  }

  int device_ = 0;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::unordered_map<void*, size_t> live_;
  std::map<size_t, std::vector<void*>> cache_;
  std::map<void*, Uploaded> weights_;
  size_t live_bytes_ = 0, peak_live_ = 0, cached_bytes_ = 0, weight_bytes_ = 0;
  HostUpload ids_, pos_, freq_;
  uint16_t* xb_ = nullptr;
  size_t xb_cap_ = 0;
  float* y2_ = nullptr;
  size_t y2_cap_ = 0;
  bool split_ = true;
  bool gemv_ = true;
  float* att_scratch_ = nullptr;
  size_t att_scratch_cap_ = 0;
};

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::unique_ptr<CudaKernels> make_cuda_kernels(int device) { return std::make_unique<CudaKernelsImpl>(device); }

}  // namespace fh1
