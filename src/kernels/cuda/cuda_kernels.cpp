// The CUDA backend's host side: device memory (a caching allocator over cudaMalloc), weight
// upload, host-array uploads, cuBLAS matmuls, and the dispatch of every other op to the device
// kernels of cuda_ops.cu, cuda_gemv.cu, cuda_attention*.cu and cuda_ssm.cu. All work runs in
// order on one stream.
//
// Decode steps run as CUDA graphs, their ops fused while recorded: cuda_step.h.
#include "kernels/cuda/cuda_kernels.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "kernels/cuda/cuda_allocator.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_profile.h"
#include "kernels/cuda/cuda_step.h"
#include "kernels/cuda/cuda_weights.h"
#include "util/error.h"

namespace fh1 {
namespace cuda {

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  // Clear the runtime's last error (an allocation that failed, say), so that the next launch's
  // check does not report it again; a sticky error (a faulted kernel) stays and shows anyway.
  cudaGetLastError();
  throw Error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

void check_launch(const char* what) { check(cudaGetLastError(), what); }

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLAS: ") + what + ": status " + std::to_string(static_cast<int>(s)));
}

}  // namespace cuda

namespace {

using cuda::check;
using cuda::check_blas;

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
    // A workspace of our own: cuBLAS calls can then be captured into graphs.
    check(cudaMalloc(&lane_[0].blas_ws, kBlasWorkspace), "cuBLAS workspace");
    check_blas(cublasSetWorkspace(blas_, lane_[0].blas_ws, kBlasWorkspace), "cublasSetWorkspace");
    check(cudaMalloc(&f16_consts_, 4 * sizeof(float)), "fp16 matmul constants");
    // (The shifts' reductions use the 4th constant: the first three may hold converted
    // activations' max, alpha and beta that the next fp16 matmul reuses.)
    weights_ = std::make_unique<cuda::DeviceWeights>(reinterpret_cast<uint32_t*>(f16_consts_ + 3));
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    if (const char* m = std::getenv("FH1_CUDA_MATMUL")) split_ = std::string(m) != "bf16";
    // From this many rows on, the fp16 GEMM replaces the hi + lo split (0: never).
    if (const char* m = std::getenv("FH1_CUDA_F16_ROWS")) f16_rows_ = std::max<int64_t>(0, std::atoll(m));
    // Up to 4 rows our GEMV (float32 activations, weights read once); from 5 rows on, cuBLAS over
    // the stacked hi/lo rows reads the weights once too and wins (the GEMV then re-reads the rows
    // of x from L1 for every 16 bytes of weights). FH1_CUDA_GEMV=0: never; =N: up to N rows.
    if (const char* g = std::getenv("FH1_CUDA_GEMV"))
      gemv_rows_ = std::min<int64_t>(cuda::kGemvRows, std::max<int64_t>(0, std::atoll(g)));
    // The recorded ops read stream_ when they run: a branch of the step switches it, and cuBLAS's
    // stream and workspace with it (each lane has its own workspace and scratch buffers).
    step_ = std::make_unique<cuda::DecodeStep>(stream_, [this](int lane, cudaStream_t s) {
      stream_ = s;
      check_blas(cublasSetStream(blas_, s), "cublasSetStream");
      check_blas(cublasSetWorkspace(blas_, lane_[lane].blas_ws, kBlasWorkspace), "cublasSetWorkspace");
    });
    if (const char* g = std::getenv("FH1_CUDA_BRANCHES")) step_->set_branches(std::string(g) != "0");
    if (const char* g = std::getenv("FH1_CUDA_BRANCH_PRIORITY")) step_->set_branch_priority(std::string(g) != "0");
    if (const char* g = std::getenv("FH1_CUDA_PLAIN_GEMVS")) step_->set_plain_gemvs(std::atoi(g));
    if (const char* g = std::getenv("FH1_CUDA_GRAPHS")) step_->set_graphs(std::string(g) != "0");
    if (const char* g = std::getenv("FH1_CUDA_PROFILE")) profile_ = std::string(g) == "1";
    if (const char* g = std::getenv("FH1_CUDA_FUSE")) step_->set_fuse(std::string(g) != "0");  // 0: ops one by one
    if (const char* g = std::getenv("FH1_CUDA_LOOKAHEAD")) lookahead_ = std::string(g) != "0";
    if (const char* a = std::getenv("FH1_CUDA_ATTN")) tf32_attn_ = std::string(a) != "f32";
    if (const char* a = std::getenv("FH1_CUDA_KV"))
      kv_ = std::string(a) == "f32" ? cuda::KvType::F32 : std::string(a) == "q8" ? cuda::KvType::Q8 : cuda::KvType::BF16;
    if (const char* a = std::getenv("FH1_CUDA_SSD_TF32")) tf32_scan_ = std::string(a) != "0";
    if (const char* a = std::getenv("FH1_CUDA_F16_COPIES")) weights_->set_f16_copies(std::string(a) != "0");
    name_ = std::string("cuda:") + std::to_string(device) + " (" + prop.name + ")";
  }

  ~CudaKernelsImpl() override {
    cudaStreamSynchronize(stream_);
    try {
      prof_.flush();
      prof_.print(stderr);
    } catch (const Error&) {
    }
    step_.reset();
    cudaFree(top_dev_);
    cudaFree(top_partials_);
    cudaFree(top_counters_);
    cudaFree(f16_consts_);
    for (LaneScratch& l : lane_) {
      cudaFree(l.blas_ws);
      cudaFree(l.xb);
      cudaFree(l.y2);
      cudaFree(l.att);
      cudaFree(l.w16);
    }
    weights_.reset();
    mem_.reset();
    for (auto* u : {&ids_, &pos_, &freq_, &rows_}) cudaFree(u->dev);
    cublasDestroy(blas_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }

  // ---- memory ----
  float* alloc(size_t n) override {
    float* p = alloc_uninit(n);
    op("alloc", [=, this] { check(cudaMemsetAsync(p, 0, n * sizeof(float), stream_), "cudaMemsetAsync"); }, p, n);
    return p;
  }
  float* alloc_uninit(size_t n) override {
    const size_t bytes = std::max<size_t>(n, 1) * sizeof(float);
    void* p = mem_->alloc(bytes);
    if (p == nullptr) {  // the cache back to the driver, then the weights' fp16 copies give way
      trim();
      p = mem_->alloc(bytes);
    }
    if (p == nullptr) {
      drop_f16_copies();
      p = mem_->alloc(bytes);
    }
    if (p == nullptr) throw Error("CUDA: out of device memory for " + std::to_string(bytes) + " bytes");
    return static_cast<float*>(p);
  }

  void free(float* p) override { mem_->free(p); }  // reuse is ordered after earlier work: one stream

  void to_host(float* dst, const float* src, size_t n) override {
    flush();
    check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_), "to_host");
    check(cudaStreamSynchronize(stream_), "to_host (synchronize)");
  }
  void from_host(float* dst, const float* src, size_t n) override {
    // From pageable memory the driver stages the data before returning: src may be reused at once.
    flush();
    check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, stream_), "from_host");
  }
  void copy(float* dst, const float* src, size_t n) override {
    if (n)
      op("copy", [=, this] { check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_), "copy"); },
         dst, src, n);
  }
  void zero(float* dst, size_t n) override {
    if (n) op("zero", [=, this] { check(cudaMemsetAsync(dst, 0, n * sizeof(float), stream_), "zero"); }, dst, n);
  }

  WeightView bind_weight(const TensorView& t) override {
    flush();
    return weights_->bind(t, stream_);
  }

  // ---- dense ops ----
  void matmul(const float* x, int64_t ldx, int64_t T, const WeightView& W, const float* bias, float* y) override {
    const int64_t N = W.rows, K = W.cols;
    if (T == 0 || N == 0) return;
    const WeightView w = W;
    if (W.dtype == DType::BF16 && T <= gemv_rows_) {
      // Decode: memory-bound; our GEMV reads the weights once with float32 activations.
      if (step_->fusing()) {
        step_->gemv(x, ldx, T, w, bias, y);
        return;
      }
      op("matmul gemv", [=, this] { cuda::gemv_bf16(static_cast<const uint16_t*>(w.data), N, K, x, ldx, T, bias, y, stream_); },
         w.data, N, K, x, ldx, T, bias, y);
      return;
    }
    if (W.dtype == DType::BF16 && split_ && f16_rows_ > 0 && T >= f16_rows_ && !step_->recording()) {
      // Prefill: one fp16 GEMM (activations to 11 bits, weights exact) instead of hi + lo. The
      // weights' fp16 copy costs a pass over them: even at 256 rows it is paid back (H200: 7B 512
      // tokens 35.9 -> 32.0 ms, 768 tokens 50.8 -> 41.9 ms).
      const int shift = weights_->f16_shift(w, stream_);
      // The same activations into several matrices (q, k, v; gate, up): converted once, when no
      // op has run since the last fp16 matmul read them (and it did not write over them).
      const X16Key key{x, ldx, T, K};
      const bool ready = x16_last_ == key && x16_seq_ == op_seq_;
      // x's max already taken by the op that wrote it, just before (scale, silu_mul).
      const bool max_ready = !ready && max_seq_ == op_seq_ && max_of_.p == x && ldx == K &&
                             max_of_.n == static_cast<size_t>(T * K);
      // The weights in fp16: the kept copy (made now, by the first matmul that needs it, when
      // memory allows), else converted into scratch for this call.
      const cuda::DeviceWeights::F16Copy copy = weights_->f16_copy(w, shift);
      uint16_t* w16 = copy.w16 ? copy.w16 : grown(scratch().w16, scratch().w16_cap, static_cast<size_t>(N * K), "f16 weights");
      const cuda::F16Scratch sc{bf16_scratch(static_cast<size_t>(T * K)), f16_consts_};
      op("matmul f16", [=, this] {
        if (copy.fill) cuda::bf16_to_f16_scaled(copy.fill_src, copy.fill_n, shift, copy.fill_dst, stream_);
        else if (!copy.w16) cuda::bf16_to_f16_scaled(static_cast<const uint16_t*>(w.data), static_cast<size_t>(N * K), shift, w16, stream_);
        cuda::gemm_f16(blas_, w16, N, K, shift, x, ldx, T, y, sc, ready, max_ready, stream_);
        if (bias) cuda::add_bias(y, T, N, bias, stream_);
      }, w.data, N, K, x, ldx, T, bias, y);
      const auto at = [](const float* p) { return reinterpret_cast<uintptr_t>(p); };
      const bool overwrote = at(y) < at(x + (T - 1) * ldx + K) && at(x) < at(y + T * N);
      x16_last_ = overwrote ? X16Key{} : key;
      x16_seq_ = op_seq_;
    } else if (W.dtype == DType::BF16 && !split_) {
      uint16_t* xb = bf16_scratch(static_cast<size_t>(T * K));
      op("matmul bf16", [=, this] {
        cuda::f32_to_bf16(x, ldx, T, K, xb, stream_);
        gemm_bf16(w, xb, T, y, 0.0f);
        if (bias) cuda::add_bias(y, T, N, bias, stream_);
      }, w.data, N, K, x, ldx, T, bias, y, xb);
    } else if (W.dtype == DType::BF16) {
      // Activations split as hi + lo bf16 parts: products exact in float32, about 16 bits of each
      // activation kept, so the result is within ~1e-5 of float32 activations times bf16 weights.
      uint16_t* xb = bf16_scratch(static_cast<size_t>(2 * T * K));
      float* y2 = T <= kStackedRows ? f32_scratch(static_cast<size_t>(2 * T * N)) : nullptr;
      op("matmul bf16x2", [=, this] {
        cuda::f32_to_bf16_split(x, ldx, T, K, xb, xb + T * K, stream_);
        if (y2) {  // one GEMM over [hi; lo]: the weights are read once
          gemm_bf16(w, xb, 2 * T, y2, 0.0f);
          cuda::sum_halves(y2, T, N, bias, y, stream_);
          return;
        }
        gemm_bf16(w, xb, T, y, 0.0f);
        gemm_bf16(w, xb + T * K, T, y, 1.0f);
        if (bias) cuda::add_bias(y, T, N, bias, stream_);
      }, w.data, N, K, x, ldx, T, bias, y, xb, y2);
    } else if (W.dtype == DType::F32) {
      op("matmul f32", [=, this] {
        const float one = 1.0f, zero = 0.0f;
        check_blas(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(T),
                               static_cast<int>(K), &one, static_cast<const float*>(w.data), static_cast<int>(K), x,
                               static_cast<int>(ldx), &zero, y, static_cast<int>(N)),
                   "cublasSgemm");
        if (bias) cuda::add_bias(y, T, N, bias, stream_);
      }, w.data, N, K, x, ldx, T, bias, y);
    } else {
      throw Error(std::string("CUDA matmul: weights of dtype ") + dtype_name(W.dtype) + " were not bound by this backend");
    }
  }

  void embed(const int32_t* ids, int64_t T, const WeightView& table, float scale, float* out) override {
    for (int64_t t = 0; t < T; ++t)
      if (ids[t] < 0 || ids[t] >= table.rows)
        throw Error("token id " + std::to_string(ids[t]) + " is outside the vocabulary [0, " +
                    std::to_string(table.rows) + ")");
    const DType dt = table.dtype;
    const void* data = table.data;
    const int64_t cols = table.cols;
    if (step_->recording()) {
      const size_t off = step_->put(ids, static_cast<size_t>(T) * sizeof(int32_t), 0);
      op("embed", [=, this] {
        cuda::embed(reinterpret_cast<const int32_t*>(step_->device_arrays() + off), T, dt, data, cols, scale, out,
                    stream_);
      }, off, T, dt, data, cols, scale, out);
      return;
    }
    const auto* d_ids = static_cast<const int32_t*>(upload(ids_, ids, static_cast<size_t>(T) * sizeof(int32_t)));
    op("embed", [=, this] { cuda::embed(d_ids, T, dt, data, cols, scale, out, stream_); });
  }

  void rmsnorm(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out) override {
    if (step_->rmsnorm(x, T, d, w, eps, out)) return;
    op("rmsnorm", [=, this] { cuda::rmsnorm(x, T, d, w, eps, out, stream_); }, x, T, d, w, eps, out);
  }
  void scale(const float* x, size_t n, float s, float* out) override {
    if (step_->scale(x, n, s, out)) return;
    uint32_t* mx = output_max_slot();
    op("scale", [=, this] {
      zero_max_slot(mx);
      cuda::scale(x, n, s, out, stream_, mx);
    }, x, n, s, out);
    took_output_max(mx, out, n);
  }
  void mul_columns(float* x, int64_t T, int64_t d, const float* v) override {
    if (step_->mul_columns(x, T, d, v)) return;
    op("mul_columns", [=, this] { cuda::mul_columns(x, T, d, v, stream_); }, x, T, d, v);
  }
  void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n) override {
    if (step_->residual(h, a, sa, b, sb, n)) return;
    op("residual_add2", [=, this] { cuda::residual_add2(h, a, sa, b, sb, n, stream_); }, h, a, sa, b, sb, n);
  }
  void residual_add(float* h, const float* a, float s, size_t n) override {
    if (step_->residual(h, a, s, nullptr, 0.0f, n)) return;
    op("residual_add", [=, this] { cuda::residual_add2(h, a, s, nullptr, 0.0f, n, stream_); }, h, a, s, n);
  }
  void silu_mul(const float* gate, const float* up, float gs, size_t n, float* out) override {
    if (step_->silu_mul(gate, up, gs, n, out)) return;
    uint32_t* mx = output_max_slot();
    op("silu_mul", [=, this] {
      zero_max_slot(mx);
      cuda::silu_mul(gate, up, gs, n, out, stream_, mx);
    }, gate, up, gs, n, out);
    took_output_max(mx, out, n);
  }
  void gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d) override {
    if (step_->gate_silu(y, z, ldz, T, d)) return;
    op("gate_silu", [=, this] { cuda::gate_silu(y, z, ldz, T, d, stream_); }, y, z, ldz, T, d);
  }
  void gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups, const float* w,
                     float eps, bool norm_before_gate) override {
    op("gated_rmsnorm", [=, this] { cuda::gated_rmsnorm(y, z, ldz, T, d, groups, w, eps, norm_before_gate, stream_); }, y, z,
       ldz, T, d, groups, w, eps, norm_before_gate);
  }

  // ---- attention ----
  void rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* positions,
            const float* inv_freq) override {
    if (step_->fusing()) {
      step_->rope(x, ld, T, heads, hd, positions, inv_freq);
      return;
    }
    if (step_->recording()) {
      const size_t pos = step_->put(positions, static_cast<size_t>(T) * sizeof(int64_t), 1);
      const size_t freq = step_->put(inv_freq, static_cast<size_t>(hd / 2) * sizeof(float), 2);
      op("rope", [=, this] {
        cuda::rope(x, ld, T, heads, hd, reinterpret_cast<const int64_t*>(step_->device_arrays() + pos),
                   reinterpret_cast<const float*>(step_->device_arrays() + freq), stream_);
      }, x, ld, T, heads, hd, pos, freq);
      return;
    }
    const auto* d_pos = static_cast<const int64_t*>(upload(pos_, positions, static_cast<size_t>(T) * sizeof(int64_t)));
    const auto* d_freq = static_cast<const float*>(upload(freq_, inv_freq, static_cast<size_t>(hd / 2) * sizeof(float)));
    op("rope", [=, this] { cuda::rope(x, ld, T, heads, hd, d_pos, d_freq, stream_); });
  }

  void attention(const float* q, int64_t ldq, int64_t T, const float* k_cache, const float* v_cache, int64_t n_past,
                 int H, int Hkv, int hd, float scale, float* out) override {
    // Recording a decode step: the length comes from the step's device array, the plan from its
    // power-of-two bucket, so one graph serves every length of the bucket.
    const cuda::KvType kv = kv_;
    const bool dev_len = step_->recording() && cuda::attention_decode_device_len(T, H, hd, k_cache, v_cache, Hkv, kv);
    const bool tf32 = tf32_attn_;
    float* scratch = attention_scratch(cuda::attention_scratch_floats(T, n_past, H, Hkv, hd, dev_len, kv, tf32));
    if (dev_len) {
      int64_t bucket = 64;
      while (bucket < n_past + T) bucket *= 2;
      const size_t off = step_->put(&n_past, sizeof(int64_t), -1);
      op("attention (step)", [=, this] {
        cuda::attention(q, ldq, T, k_cache, v_cache, n_past,
                        reinterpret_cast<const int64_t*>(step_->device_arrays() + off), true, H, Hkv, hd, scale, tf32,
                        kv, out, scratch, stream_);
      }, q, ldq, T, k_cache, v_cache, bucket, off, H, Hkv, hd, scale, tf32, kv, out, scratch);
      return;
    }
    op("attention", [=, this] {
      cuda::attention(q, ldq, T, k_cache, v_cache, n_past, nullptr, false, H, Hkv, hd, scale, tf32, kv, out,
                      scratch, stream_);
    }, q, ldq, T, k_cache, v_cache, n_past, H, Hkv, hd, scale, tf32, kv, out, scratch);
  }

  void kv_write(float* cache, int64_t row, const float* src, int64_t rows, int64_t width) override {
    if (rows * width == 0) return;
    const cuda::KvType kv = kv_;
    if (step_->recording()) {
      const size_t off = step_->put(&row, sizeof(int64_t), -1);
      op("kv_write", [=, this] {
        cuda::kv_write(cache, row, reinterpret_cast<const int64_t*>(step_->device_arrays() + off), src, rows, width,
                       kv, stream_);
      }, cache, off, src, rows, width, kv);
      return;
    }
    op("kv_write", [=, this] { cuda::kv_write(cache, row, nullptr, src, rows, width, kv, stream_); });
  }

  // ---- Mamba-2 ----
  void conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w, const float* bias,
                   float* conv_state, float* out) override {
    op("conv1d_silu", [=, this] { cuda::conv1d_silu(in, ld_in, T, C, K, w, bias, conv_state, out, stream_); }, in, ld_in, T,
       C, K, w, bias, conv_state, out);
  }
  void ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
                int64_t T, const SsmParams& p, float* state, float* y) override {
    const SsmParams pp = p;
    // A long scan runs in chunks and needs scratch: the attention scratch serves (every op runs in
    // stream order and none keeps data there past its own launches; growing it retires the old
    // buffer safely, and the pointer is part of a recorded step's signature).
    const size_t scratch_floats = cuda::ssm_scan_scratch_floats(T, pp);
    float* scratch = scratch_floats ? attention_scratch(scratch_floats) : nullptr;
    const bool tf32 = tf32_scan_;
    op("ssm_scan", [=, this] {
      cuda::ssm_scan(x, B, C, ld_xbc, dt_raw, ld_dt, T, pp, state, y, scratch, scratch_floats, tf32, blas_, stream_);
    }, x, B, C, ld_xbc, dt_raw, ld_dt, T, pp.heads, pp.head_dim, pp.groups, pp.d_state, pp.chunk_size, pp.A, pp.D,
       pp.dt_bias, pp.dt_min, pp.dt_max, state, y, scratch, scratch_floats, tf32);
  }

  // ---- decode steps: every sequence's row in one launch ----
  // The pointer arrays and lengths are step data (the device array while recording): a graph
  // does not depend on which sequences, or which KV buffers, it runs on.
  void conv1d_silu_rows(const float* in, int64_t ld_in, int64_t n, int64_t C, int K, const float* w,
                        const float* bias, float* const* conv_states, float* out) override {
    if (n == 0) return;
    size_t off[1];
    const char* base = arrays({{conv_states, n * sizeof(float*)}}, off);
    op("conv1d_silu_rows", [=, this] {
      const char* b = base ? base : step_->device_arrays();
      cuda::conv1d_silu_rows(in, ld_in, n, C, K, w, bias, reinterpret_cast<float* const*>(b + off[0]), out, stream_);
    }, in, ld_in, n, C, K, w, bias, off[0], out);
  }
  void ssm_scan_rows(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw,
                     int64_t ld_dt, int64_t n, const SsmParams& p, float* const* ssm_states, float* y) override {
    if (n == 0) return;
    if (step_->fusing()) {
      step_->scan_rows(x, B, C, ld_xbc, dt_raw, ld_dt, n, p, ssm_states, y);
      return;
    }
    size_t off[1];
    const char* base = arrays({{ssm_states, n * sizeof(float*)}}, off);
    const SsmParams pp = p;
    op("ssm_scan_rows", [=, this] {
      const char* b = base ? base : step_->device_arrays();
      cuda::ssm_scan_rows(x, B, C, ld_xbc, dt_raw, ld_dt, n, pp, reinterpret_cast<float* const*>(b + off[0]), y,
                          stream_);
    }, x, B, C, ld_xbc, dt_raw, ld_dt, n, pp.heads, pp.head_dim, pp.groups, pp.d_state, pp.A, pp.D, pp.dt_bias,
       pp.dt_min, pp.dt_max, off[0], y);
  }
  void kv_write_rows(float* const* caches, const int64_t* n_past, const float* src, int64_t n,
                     int64_t width) override {
    if (n == 0) return;
    const cuda::KvType kv = kv_;
    if (step_->fusing()) {
      step_->kv_rows(caches, n_past, src, n, width, kv);
      return;
    }
    size_t off[2];
    const char* base = arrays({{caches, n * sizeof(float*)}, {n_past, n * sizeof(int64_t)}}, off);
    op("kv_write_rows", [=, this] {
      const char* b = base ? base : step_->device_arrays();
      cuda::kv_write_rows(reinterpret_cast<void* const*>(b + off[0]), reinterpret_cast<const int64_t*>(b + off[1]),
                          src, n, width, kv, stream_);
    }, off[0], off[1], src, n, width, kv);
  }
  void attention_rows(const float* q, int64_t ldq, int64_t n, const float* const* k_caches,
                      const float* const* v_caches, const int64_t* n_past, int H, int Hkv, int hd, float scale,
                      float* out) override {
    if (n == 0) return;
    if (!cuda::attention_rows_ok(H, hd, Hkv, kv_)) {
      Kernels::attention_rows(q, ldq, n, k_caches, v_caches, n_past, H, Hkv, hd, scale, out);
      return;
    }
    int64_t max_past = 0;
    for (int64_t i = 0; i < n; ++i) max_past = std::max(max_past, n_past[i]);
    // The plan depends on the longest sequence through its power-of-two bucket only.
    int64_t bucket = 64;
    while (bucket < max_past + 1) bucket *= 2;
    float* scratch = attention_scratch(cuda::attention_rows_scratch_floats(n, max_past, H, Hkv, hd, true));
    const cuda::KvType kv = kv_;
    size_t off[3];
    const char* base = arrays(
        {{k_caches, n * sizeof(float*)}, {v_caches, n * sizeof(float*)}, {n_past, n * sizeof(int64_t)}}, off);
    op("attention_rows", [=, this] {
      const char* b = base ? base : step_->device_arrays();
      cuda::attention_rows(q, ldq, n, reinterpret_cast<const void* const*>(b + off[0]),
                           reinterpret_cast<const void* const*>(b + off[1]),
                           reinterpret_cast<const int64_t*>(b + off[2]), max_past, true, H, Hkv, hd, scale, kv, out,
                           scratch, stream_);
    }, q, ldq, n, bucket, off[0], off[1], off[2], H, Hkv, hd, scale, kv, out, scratch);
  }

  // ---- sampling ----
  // The k best logits of each row selected on the device: k (id, value) pairs a row come back
  // instead of the vocabulary. k above cuda::kTopKMax: the default (the rows copied and sorted).
  void top_k_rows(const float* x, int64_t rows, int64_t n, int k, int32_t* ids, float* values) override {
    if (k < 1 || k > n)
      throw Error("top_k_rows: k = " + std::to_string(k) + " for rows of " + std::to_string(n) + " values");
    if (k > cuda::kTopKMax || n > INT32_MAX) {
      Kernels::top_k_rows(x, rows, n, k, ids, values);
      return;
    }
    flush();
    if (rows == 0) return;
    const size_t count = static_cast<size_t>(rows) * static_cast<size_t>(k);
    int32_t* dev_ids = grown_here(top_dev_, top_cap_, 2 * count, "top_k_rows buffer");
    auto* dev_vals = reinterpret_cast<float*>(dev_ids + count);
    cuda::TopKScratch scratch;
    if (k == 1) {
      scratch.partials = reinterpret_cast<unsigned long long*>(
          grown_here(top_partials_, top_partials_cap_, static_cast<size_t>(cuda::top_k_partials(rows, n, k)), "argmax"));
      if (static_cast<size_t>(rows) > top_counters_cap_) {  // zeroed once: the argmax leaves them at zero
        check(cudaStreamSynchronize(stream_), "argmax counters");
        cudaFree(top_counters_);
        top_counters_ = nullptr;
        top_counters_cap_ = std::max(static_cast<size_t>(rows), 2 * top_counters_cap_);
        check(cudaMalloc(&top_counters_, top_counters_cap_ * sizeof(unsigned)), "argmax counters");
        check(cudaMemset(top_counters_, 0, top_counters_cap_ * sizeof(unsigned)), "argmax counters");
      }
      scratch.counters = top_counters_;
    }
    cuda::top_k_rows(x, rows, n, k, dev_ids, dev_vals, scratch, stream_);
    check(cudaMemcpyAsync(ids, dev_ids, count * 4, cudaMemcpyDeviceToHost, stream_), "top_k_rows (ids)");
    check(cudaMemcpyAsync(values, dev_vals, count * 4, cudaMemcpyDeviceToHost, stream_), "top_k_rows (values)");
    check(cudaStreamSynchronize(stream_), "top_k_rows (synchronize)");
  }

  void lower_entries(float* x, int64_t count, const int64_t* index, const float* amount, float* original) override {
    flush();
    if (count <= 0) return;
    // One buffer: index (int64), amount and original (float), count each.
    const size_t n = static_cast<size_t>(count);
    char* dev = reinterpret_cast<char*>(grown_here(top_dev_, top_cap_, n * 4, "lower_entries buffer"));
    auto* dev_amount = reinterpret_cast<float*>(dev + n * 8);
    check(cudaMemcpyAsync(dev, index, n * 8, cudaMemcpyHostToDevice, stream_), "lower_entries (index)");
    check(cudaMemcpyAsync(dev_amount, amount, n * 4, cudaMemcpyHostToDevice, stream_), "lower_entries (amount)");
    cuda::lower_entries(x, count, reinterpret_cast<const int64_t*>(dev), dev_amount, dev_amount + n, stream_);
    check(cudaMemcpyAsync(original, dev_amount + n, n * 4, cudaMemcpyDeviceToHost, stream_), "lower_entries (original)");
    check(cudaStreamSynchronize(stream_), "lower_entries (synchronize)");
  }

  void softmax_rows(const float* x, int64_t rows, int64_t n, const double* inv_t, const double* u, double* sums,
                    int32_t* drawn) override {
    flush();
    if (rows == 0) return;
    // One buffer: inv_t, u, sums (doubles), drawn (int32), rows each.
    const size_t r = static_cast<size_t>(rows), bytes = r * (3 * sizeof(double) + sizeof(int32_t));
    auto* dev = reinterpret_cast<double*>(grown_here(top_dev_, top_cap_, (bytes + 3) / 4, "softmax_rows buffer"));
    check(cudaMemcpyAsync(dev, inv_t, r * sizeof(double), cudaMemcpyHostToDevice, stream_), "softmax_rows (inv_t)");
    check(cudaMemcpyAsync(dev + r, u, r * sizeof(double), cudaMemcpyHostToDevice, stream_), "softmax_rows (u)");
    auto* dev_drawn = reinterpret_cast<int32_t*>(dev + 3 * r);
    cuda::softmax_rows(x, rows, n, dev, dev + r, dev + 2 * r, dev_drawn, stream_);
    check(cudaMemcpyAsync(sums, dev + 2 * r, r * sizeof(double), cudaMemcpyDeviceToHost, stream_), "softmax_rows (sums)");
    check(cudaMemcpyAsync(drawn, dev_drawn, r * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_), "softmax_rows (drawn)");
    check(cudaStreamSynchronize(stream_), "softmax_rows (synchronize)");
  }

  // ---- decode steps as graphs ----
  void begin_decode_step() override {
    flush();
    step_->begin();
  }
  void end_decode_step() override { flush(); }
  uint64_t hold_next_decode_step() override {
    if (!step_->graphs() || !lookahead_) return 0;
    return step_->hold_next();
  }
  bool launch_held_step(uint64_t ticket, const int32_t* ids, int64_t T) override {
    flush();
    return step_->launch_held(ticket, ids, T);
  }
  void drop_held_step(uint64_t ticket) override { step_->drop_ticket(ticket); }
  void branch_begin() override {
    if (!step_->recording() || !step_->branches()) return;
    if (!lane_[1].blas_ws) check(cudaMalloc(&lane_[1].blas_ws, kBlasWorkspace), "cuBLAS workspace (branch)");
    step_->branch_begin();
  }
  void branch_end() override { step_->branch_end(); }
  void branch_join() override { step_->branch_join(); }

  // ---- CudaKernels ----
  void set_matmul_split(bool on) override { split_ = on; }
  void set_matmul_f16_rows(int64_t rows) override { f16_rows_ = std::max<int64_t>(0, rows); }
  int64_t matmul_f16_rows() const override { return f16_rows_; }
  bool matmul_split() const override { return split_; }
  void set_attention_tf32(bool on) override { tf32_attn_ = on; }
  void set_scan_tf32(bool on) override { tf32_scan_ = on; }
  void set_f16_weight_copies(bool on) override {
    flush();
    cudaStreamSynchronize(stream_);
    weights_->set_f16_copies(on);
  }
  bool f16_weight_copies() const override { return weights_->f16_copies(); }
  bool scan_tf32() const override { return tf32_scan_; }
  DType kv_cache_dtype() const override {
    return kv_ == cuda::KvType::BF16 ? DType::BF16 : kv_ == cuda::KvType::Q8 ? DType::I8 : DType::F32;
  }
  // Short calls leave the GPU idle: a prompt's attention launches (queries / 192) x heads blocks
  // for 132 SMs, and each call copies the caches' rows so far to fp16. 7B, 32K tokens on an H200:
  // 4,158 ms in calls of 256 tokens, 2,500 in 512, 1,435 in 2048, 1,404 in 8192, 1,372 in 32K
  // (activations 1.9, 2.3, 3.7 and 9.3 GB); 0.5B: 2,311, 430, 342 and 314 ms.
  int64_t preferred_prompt_chunk() const override { return 8192; }
  // KV caches in bf16 (default: half the bytes a long-context decode step reads; keys and values
  // rounded to bf16 when written, every product and sum still float32), float32 (FH1_CUDA_KV=f32),
  // or 8 bits with block scales (I8, FH1_CUDA_KV=q8: a little over half of bf16's bytes; not
  // exact). Set before any SequenceState exists.
  bool set_kv_cache_dtype(DType t) override {
    if (t != DType::F32 && t != DType::BF16 && t != DType::I8) return false;
    flush();
    kv_ = t == DType::BF16 ? cuda::KvType::BF16 : t == DType::I8 ? cuda::KvType::Q8 : cuda::KvType::F32;
    return true;
  }
  bool attention_tf32() const override { return tf32_attn_; }
  std::string prefill_attention() const override {
    if (!tf32_attn_) return "f32";
    if (kv_ == cuda::KvType::F32) return "tf32";
    static const char* const by_precision[] = {"bf16", "bf16 (Q split)", "bf16 (Q and P split)", "fp16 (scaled)"};
    const int prec = cuda::flash_precision();
    if (prec == 3 && cuda::flash_wgmma() > 0) return "fp16 (scaled, wgmma)";
    return by_precision[prec];
  }
  void set_decode_graphs(bool on) override {
    flush();
    step_->drop_held();
    step_->set_graphs(on);
  }
  bool decode_graphs() const override { return step_->graphs(); }
  void set_decode_branches(bool on) override {
    flush();
    step_->drop_held();
    step_->set_branches(on);
  }
  size_t graphs_captured() const override { return step_->graphs_captured(); }
  void set_decode_lookahead(bool on) override {
    if (!on) step_->drop_held();
    lookahead_ = on;
  }
  size_t held_steps_launched() const override { return step_->held_launched(); }
  void synchronize() override {
    flush();
    check(cudaStreamSynchronize(stream_), "synchronize");
  }

  CudaMemoryStats memory_stats() const override {
    return CudaMemoryStats{weights_->bytes(), mem_->live_bytes(), mem_->peak_live_bytes(), mem_->cached_bytes(),
                           weights_->f16_copy_bytes()};
  }
  void reset_peak() override { mem_->reset_peak(); }

  void trim() override {
    flush();
    cudaStreamSynchronize(stream_);
    mem_->trim();
  }

  void fill_random(float* p, size_t n, float amplitude, uint64_t seed) override {
    flush();
    if (n) cuda::fill_random_f32(p, n, amplitude, seed, stream_);
  }
  void fill_random_kv(float* cache, int64_t rows, int64_t width, float amplitude, uint64_t seed) override {
    flush();
    const auto values = static_cast<size_t>(rows * width);
    if (values == 0) return;
    if (kv_ == cuda::KvType::Q8) cuda::fill_random_kv_q8(cache, rows, width, amplitude, seed, stream_);
    else if (kv_ == cuda::KvType::BF16)
      cuda::fill_random_bf16(reinterpret_cast<uint16_t*>(cache), values, amplitude, seed, stream_);
    else cuda::fill_random_f32(cache, values, amplitude, seed, stream_);
  }

  void randomize_weights(uint64_t seed) override {
    flush();
    weights_->randomize(seed, stream_);
    synchronize();
  }

 private:
  struct LaneScratch {
    void* blas_ws = nullptr;
    uint16_t* xb = nullptr;
    size_t xb_cap = 0;
    float* y2 = nullptr;
    size_t y2_cap = 0;
    float* att = nullptr;
    size_t att_cap = 0;
    uint16_t* w16 = nullptr;  // fp16 copy of one weight matrix (the fp16 matmul)
    size_t w16_cap = 0;
  };
  static constexpr int64_t kStackedRows = 64;
  static constexpr int64_t kF16Rows = 256;
  static constexpr size_t kBlasWorkspace = size_t(32) << 20;

  // Runs f now, or (recording a decode step) keeps it with its signature: the op's tag and its
  // arguments.
  template <class F, class... A>
  void op(const char* name, F&& f, A... args) {
    ++op_seq_;
    if (!step_->recording()) {
      if (profile_) {
        prof_.time(name, stream_, f);
        return;
      }
      f();
      return;
    }
    step_->op(name, std::forward<F>(f), args...);
  }

  // Small host arrays an op reads on the device. Recording: into the step's array (returns null:
  // the closure takes the step's array when it runs); else uploaded now, in stream order
  // (returns the base).
  const char* arrays(std::initializer_list<std::pair<const void*, size_t>> parts, size_t* offs) {
    size_t i = 0;
    if (step_->recording()) {
      for (const auto& [p, b] : parts) offs[i++] = step_->put(p, b, -1);
      return nullptr;
    }
    pack_.clear();
    for (const auto& [p, b] : parts) {
      const size_t at = (pack_.size() + 15) / 16 * 16;
      pack_.resize(at + b);
      std::memcpy(pack_.data() + at, p, b);
      offs[i++] = at;
    }
    return static_cast<const char*>(upload(rows_, pack_.data(), pack_.size()));
  }

  // Ends a decode step's recording (cuda_step.h), if one is in progress.
  // Every host-side write (from_host, fill_random, ...) flushes first: it counts as device work.
  void flush() {
    ++op_seq_;
    step_->end();
  }

  // Scratch of the lane (stream) the op being recorded runs on: a step's branch runs beside the
  // ops after it, so the two must not share.
  LaneScratch& scratch() { return lane_[step_->lane()]; }

  // A scratch buffer of at least n elements: a smaller one is retired (closures recorded earlier
  // in the step may still use it) and replaced by one at least twice as large.
  template <class T>
  T* grown(T*& p, size_t& cap, size_t n, const char* what) {
    if (n > cap) {
      step_->retire(p);
      p = nullptr;
      cap = std::max(n, cap * 2);
      if (cudaMalloc(&p, cap * sizeof(T)) != cudaSuccess) {  // the weights' fp16 copies give way
        cudaGetLastError();
        drop_f16_copies();
        check(cudaMalloc(&p, cap * sizeof(T)), what);
      }
    }
    return p;
  }
  // The same for a buffer that only the calling op uses, after the step (never a recorded
  // step's closure): freed once the stream is idle instead of retired, which would drop a step
  // recorded ahead (the sampling ops' buffers, grown at a new batch size).
  template <class T>
  T* grown_here(T*& p, size_t& cap, size_t n, const char* what) {
    if (n > cap) {
      check(cudaStreamSynchronize(stream_), what);
      cudaFree(p);
      p = nullptr;
      size_t none = 0;
      T* q = grown(p, none, std::max(n, cap * 2), what);  // p is null: nothing retired
      cap = none;
      return q;
    }
    return p;
  }
  float* attention_scratch(size_t n) { return grown(scratch().att, scratch().att_cap, n, "attention scratch"); }
  float* f32_scratch(size_t n) { return grown(scratch().y2, scratch().y2_cap, n, "f32 scratch"); }
  uint16_t* bf16_scratch(size_t n) { return grown(scratch().xb, scratch().xb_cap, n, "bf16 scratch"); }

  // Element-wise ops that may feed an fp16 matmul (scale, silu_mul) take their output's largest
  // |value| as they write it, into the fp16 GEMM's max slot, so that the matmul right after them
  // needs no pass of its own over its input for it (7B 8K prefill: x_in twice and the MLP's
  // 12288-wide product each layer). Only outside a recorded decode step (which has no fp16 GEMM).
  // FH1_CUDA_OUTPUT_MAX=0: not taken (for measuring what it saves).
  uint32_t* output_max_slot() {
    static const bool on = [] {
      const char* e = std::getenv("FH1_CUDA_OUTPUT_MAX");
      return !(e && std::string(e) == "0");
    }();
    return step_->recording() || !on ? nullptr : reinterpret_cast<uint32_t*>(f16_consts_);
  }
  // Zeroes the max, alpha and beta (in stream order, inside the op's closure).
  void zero_max_slot(uint32_t* mx) {
    if (mx) check(cudaMemsetAsync(f16_consts_, 0, 3 * sizeof(float), stream_), "max slot (memset)");
  }
  void took_output_max(uint32_t* mx, const float* out, size_t n) {
    if (!mx) return;
    max_of_ = {out, n};
    max_seq_ = op_seq_;
  }

  // Frees the weights' fp16 copies for good: an allocation needs the room. No recorded closure
  // uses them (a recorded decode step never takes the fp16 GEMM): waiting for the stream is enough.
  void drop_f16_copies() {
    cudaStreamSynchronize(stream_);
    weights_->drop_f16_copies(true);
  }

  // y[T, N] = xb[T, K] @ W^T (+ beta * y), float32 accumulate and output.
  void gemm_bf16(const WeightView& W, const uint16_t* xb, int64_t T, float* y, float beta) {
    const float one = 1.0f;
    const int N = static_cast<int>(W.rows), K = static_cast<int>(W.cols);
    check_blas(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, static_cast<int>(T), K, &one, W.data, CUDA_R_16BF, K,
                            xb, CUDA_R_16BF, K, &beta, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (bf16)");
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
  std::unique_ptr<cuda::CachingAllocator> mem_ = std::make_unique<cuda::CachingAllocator>();
  std::unique_ptr<cuda::DeviceWeights> weights_;
  HostUpload ids_, pos_, freq_, rows_;
  std::vector<char> pack_;
  bool split_ = true;
  // Device work since the backend began (ops, host copies): the fp16 matmul's converted
  // activations are reused only when nothing ran after the matmul that converted them.
  struct X16Key {
    const float* x = nullptr;
    int64_t ldx = 0, T = 0, K = 0;
    bool operator==(const X16Key&) const = default;
  };
  uint64_t op_seq_ = 0, x16_seq_ = ~uint64_t(0), max_seq_ = ~uint64_t(0);
  struct {
    const float* p = nullptr;
    size_t n = 0;
  } max_of_;  // the output whose max the fp16 GEMM's max slot holds (after op max_seq_)
  X16Key x16_last_;
  int64_t f16_rows_ = kF16Rows;
  float* f16_consts_ = nullptr;
  int64_t gemv_rows_ = 4;
  bool tf32_attn_ = true;
  bool tf32_scan_ = true;  // the chunked SSD's products in TF32 (set_scan_tf32)
  cuda::KvType kv_ = cuda::KvType::BF16;  // the KV caches' type (kv_cache_dtype)
  LaneScratch lane_[2];
  int32_t* top_dev_ = nullptr;  // top_k_rows and softmax_rows arguments and results on the device
  size_t top_cap_ = 0;
  uint64_t* top_partials_ = nullptr;  // the argmax's per-block results and per-row counters
  size_t top_partials_cap_ = 0;
  unsigned* top_counters_ = nullptr;
  size_t top_counters_cap_ = 0;
  std::unique_ptr<cuda::DecodeStep> step_;
  bool profile_ = false;  // FH1_CUDA_PROFILE=1
  bool lookahead_ = true;  // FH1_CUDA_LOOKAHEAD=0: no decode step held
  cuda::OpProfile prof_;
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
