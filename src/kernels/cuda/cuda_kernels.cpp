// The CUDA backend's host side (the class: cuda_kernels_impl.h), part one: construction, device
// memory (a caching allocator over cudaMalloc), weight upload, cuBLAS matmuls, and the dispatch
// of every other model op to the device kernels of cuda_ops.cu, cuda_rope.cu, cuda_gemv.cu,
// cuda_attention*.cu and cuda_ssm.cu. All work runs in order on one stream. Sampling, decode
// steps as CUDA graphs (cuda_step.h), settings and shared helpers: cuda_kernels_control.cpp. The
// norms, silu_mul, gate_silu and what they leave lazy for the next op: cuda_kernels_lazy.cpp.
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
#include "kernels/cuda/cuda_kernels_impl.h"
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


CudaKernelsImpl::CudaKernelsImpl(int device) : device_(device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) throw Error("CUDA: no GPU is visible");
  if (device < 0 || device >= n)
    throw Error("CUDA: device " + std::to_string(device) + " does not exist (" + std::to_string(n) + " visible)");
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  main_stream_ = stream_;
  check_blas(cublasCreate(&blas_), "cublasCreate");
  check_blas(cublasSetStream(blas_, stream_), "cublasSetStream");
  check_blas(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");  // no TF32
  // A workspace of our own: cuBLAS calls can then be captured into graphs.
  check(cudaMalloc(&lane_[0].blas_ws, kBlasWorkspace), "cuBLAS workspace");
  check_blas(cublasSetWorkspace(blas_, lane_[0].blas_ws, kBlasWorkspace), "cublasSetWorkspace");
  blas_ws_now_ = lane_[0].blas_ws;
  gemm_algos_ = std::make_unique<cuda::GemmAlgos>();
  check(cudaMalloc(&f16_consts_, 4 * sizeof(float)), "fp16 matmul constants");
  // (The shifts' reductions use the 4th constant: the first three may hold converted
  // activations' max, alpha and beta that the next fp16 matmul reuses.)
  weights_ = std::make_unique<cuda::DeviceWeights>(reinterpret_cast<uint32_t*>(f16_consts_ + 3));
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  if (const char* m = std::getenv("FH1_CUDA_MATMUL")) split_ = std::string(m) != "bf16";
  // From this many rows on, the fp16 GEMM replaces the hi + lo split (0: never).
  if (const char* m = std::getenv("FH1_CUDA_F16_ROWS")) f16_rows_ = std::max<int64_t>(0, std::atoll(m));
  // Up to 8 rows our GEMV (weights read once; from 2 rows on the tensor cores, cuda_gemv.cu),
  // then cuBLAS over the stacked hi/lo rows (at 16 rows faster than the tensor-core GEMV: 7B
  // decode steps 10.0 against 11.5 ms on an H200, while at 8 rows the GEMV's fused epilogues
  // win, 8.1 against 8.8). Without the tensor-core GEMV, only up to 4 rows: the float32 one
  // re-reads the rows of x from L1 for every 16 bytes of weights, and from 5 rows cuBLAS wins.
  // FH1_CUDA_GEMV=0: never; =N: up to N rows (at most 16).
  gemv_rows_ = cuda::gemv_mma_rows() > 0 ? 8 : 4;
  if (const char* g = std::getenv("FH1_CUDA_GEMV"))
    gemv_rows_ = std::min<int64_t>(cuda::kGemvRows, std::max<int64_t>(0, std::atoll(g)));
  // The recorded ops read stream_ when they run: a branch of the step switches it, and cuBLAS's
  // stream and workspace with it (each lane has its own workspace and scratch buffers).
  step_ = std::make_unique<cuda::DecodeStep>(stream_, [this](int lane, cudaStream_t s) { use_stream(lane, s); });
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
  if (const char* a = std::getenv("FH1_CUDA_LAZY")) lazy_on_ = std::string(a) != "0";
  if (const char* a = std::getenv("FH1_CUDA_MLP16")) mlp16_on_ = std::string(a) != "0";
  if (const char* a = std::getenv("FH1_CUDA_PREFILL_BRANCH")) pf_mode_ = std::clamp(std::atoi(a), 0, 2);
  name_ = std::string("cuda:") + std::to_string(device) + " (" + prop.name + ")";
}

CudaKernelsImpl::~CudaKernelsImpl() {
  try {
    close_prefill_branch();
  } catch (const Error&) {
  }
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
  for (float* p : row_scales_) cudaFree(p);
  for (LaneScratch& l : lane_) {
    cudaFree(l.blas_ws);
    cudaFree(l.xb);
    cudaFree(l.y2);
    cudaFree(l.att);
    cudaFree(l.w16);
    cudaFree(l.consts);
  }
  for (cudaEvent_t e : {pf_fork_, pf_join_, pf_mark_})
    if (e) cudaEventDestroy(e);
  if (pf_side_) cudaStreamDestroy(pf_side_);
  weights_.reset();
  mem_.reset();
  for (HostUploads& l : up_)
    for (auto* u : {&l.ids, &l.pos, &l.freq, &l.rows}) cudaFree(u->dev);
  gemm_algos_.reset();
  cublasDestroy(blas_);
  cudaStreamDestroy(stream_);
}

float* CudaKernelsImpl::alloc(size_t n) {
  float* p = alloc_uninit(n);
  op("alloc", [=, this] { check(cudaMemsetAsync(p, 0, n * sizeof(float), stream_), "cudaMemsetAsync"); }, p, n);
  return p;
}

float* CudaKernelsImpl::alloc_uninit(size_t n) {
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

void CudaKernelsImpl::to_host(float* dst, const float* src, size_t n) {
  flush();
  check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_), "to_host");
  check(cudaStreamSynchronize(stream_), "to_host (synchronize)");
}

void CudaKernelsImpl::from_host(float* dst, const float* src, size_t n) {
  // From pageable memory the driver stages the data before returning: src may be reused at once.
  flush();
  check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, stream_), "from_host");
}

void CudaKernelsImpl::copy(float* dst, const float* src, size_t n) {
  if (n)
    op("copy", [=, this] { check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_), "copy"); },
       dst, src, n);
}

void CudaKernelsImpl::zero(float* dst, size_t n) {
  if (n) op("zero", [=, this] { check(cudaMemsetAsync(dst, 0, n * sizeof(float), stream_), "zero"); }, dst, n);
}

WeightView CudaKernelsImpl::bind_weight(const TensorView& t) {
  flush();
  return weights_->bind(t, stream_);
}

void CudaKernelsImpl::matmul(const float* x, int64_t ldx, int64_t T, const WeightView& W, const float* bias, float* y) {
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
  if (takes_f16(W, T)) {
    matmul_f16(x, ldx, T, 1.0f, W, bias, y, nullptr);
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

bool CudaKernelsImpl::takes_f16(const WeightView& W, int64_t T) const {
  return W.dtype == DType::BF16 && T > gemv_rows_ && split_ && f16_rows_ > 0 && T >= f16_rows_ &&
         !step_->recording();
}

void CudaKernelsImpl::matmul_scaled(const float* x, int64_t ldx, int64_t T, float s, float* x_scaled,
                                    const Projection* to, size_t n) {
  bool f16 = T > 0;
  for (size_t i = 0; i < n; ++i) f16 = f16 && takes_f16(*to[i].W, T) && to[i].W->cols == to[0].W->cols;
  if (!f16) return Kernels::matmul_scaled(x, ldx, T, s, x_scaled, to, n);
  // The scale goes into each GEMM's alpha: x is converted to fp16 once, as it is (its max taken
  // by the norm that wrote it), and no scaled copy is written.
  for (size_t i = 0; i < n; ++i)
    if (to[i].W->rows > 0) matmul_f16(x, ldx, T, s, *to[i].W, to[i].bias, to[i].y, to[i].col_scale);
}

CudaKernelsImpl::F16Weights CudaKernelsImpl::f16_weights(const WeightView& w, const float* bias,
                                                          const float* col_scale) {
  F16Weights f;
  // The output columns' scale (Mamba-2's mup vector) folded into a kept copy of W whose rows it
  // scales, where there is no bias (which it would scale too); else a pass after the GEMM.
  cuda::DeviceWeights::ScaledCopy folded;
  if (col_scale && !bias) folded = weights_->f16_row_scaled_copy(w, col_scale, stream_);
  f.cols_after = col_scale && !folded.w16;
  // Prefill: one fp16 GEMM (activations to 11 bits, weights exact) instead of hi + lo. The
  // weights' fp16 copy costs a pass over them: even at 256 rows it is paid back (H200: 7B 512
  // tokens 35.9 -> 32.0 ms, 768 tokens 50.8 -> 41.9 ms).
  f.shift = folded.w16 ? folded.shift : weights_->f16_shift(w, stream_);
  // The weights in fp16: the kept copy (made now, by the first matmul that needs it, when
  // memory allows), else converted into scratch for this call.
  if (!folded.w16) f.copy = weights_->f16_copy(w, f.shift);
  if (!folded.w16 && !f.copy.w16)
    f.converted = grown(scratch().w16, scratch().w16_cap, static_cast<size_t>(w.rows * w.cols), "f16 weights");
  f.w16 = folded.w16 ? folded.w16 : f.copy.w16 ? f.copy.w16 : f.converted;
  return f;
}

void CudaKernelsImpl::fill(const F16Weights& f, const WeightView& w) {
  if (f.copy.fill) cuda::bf16_to_f16_scaled(f.copy.fill_src, f.copy.fill_n, f.shift, f.copy.fill_dst, stream_);
  else if (f.converted)
    cuda::bf16_to_f16_scaled(static_cast<const uint16_t*>(w.data), static_cast<size_t>(w.rows * w.cols), f.shift,
                             f.converted, stream_);
}

void CudaKernelsImpl::matmul_f16(const float* x, int64_t ldx, int64_t T, float x_scale, const WeightView& W,
                                 const float* bias, float* y, const float* col_scale) {
  const int64_t N = W.rows, K = W.cols;
  const WeightView w = W;
  // Lazy results apart from x and y stay lazy; a lazy norm's output x is not read when its fp16
  // copy is ready (below).
  const X16Key key{x, ldx, T, K};
  const auto x16_valid = [&] { return x16_last_ == key && x16_seq_ == op_seq_; };
  const std::pair<const float*, size_t> xr{x, static_cast<size_t>(T * ldx)}, yr{y, static_cast<size_t>(T * N)};
  settle(x16_valid() ? lazy_apart({yr}) : lazy_apart({xr, yr}));
  // The same activations into several matrices (q, k, v; gate, up): converted once, when no
  // op has run since the last fp16 matmul read them (and it did not write over them).
  const bool ready = x16_valid();
  if (!ready) settle(lazy_apart({xr, yr}));  // (settling ran ops: x is read in float32)
  // x's max already taken by the op that wrote it, just before (scale, silu_mul).
  const bool max_ready = !ready && max_seq_ == op_seq_ && max_of_.p == x && ldx == K &&
                         max_of_.n == static_cast<size_t>(T * K);
  // Else (the attention's output, say) a shift per row instead of a pass for the max; y's rows
  // are then left lazy (rows_matmul).
  if (!ready && !max_ready && x_scale == 1.0f && !col_scale &&
      rows_matmul(cuda::RowsOp::Copy, x, ldx, nullptr, 0, 0.0f, T, W, bias, y))
    return;
  const F16Weights f = f16_weights(w, bias, col_scale);
  const cuda::F16Scratch sc{bf16_scratch(static_cast<size_t>(T * K)), f16_consts()};
  const KeepLazy keep(this, lazy_kinds());
  op("matmul f16", [=, this] {
    fill(f, w);
    cuda::gemm_f16(gemm_run(), f.w16, N, K, f.shift, x, ldx, T, x_scale, y, sc, ready, max_ready, stream_);
    if (bias) cuda::add_bias(y, T, N, bias, stream_);
    if (f.cols_after) cuda::mul_columns(y, T, N, col_scale, stream_);
  }, w.data, N, K, x, ldx, T, x_scale, bias, y, col_scale);
  const auto at = [](const float* p) { return reinterpret_cast<uintptr_t>(p); };
  const bool overwrote = at(y) < at(x + (T - 1) * ldx + K) && at(x) < at(y + T * N);
  x16_last_ = overwrote ? X16Key{} : key;
  x16_seq_ = op_seq_;
}

void CudaKernelsImpl::embed(const int32_t* ids, int64_t T, const WeightView& table, float scale, float* out) {
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
  const auto* d_ids = static_cast<const int32_t*>(upload(uploads().ids, ids, static_cast<size_t>(T) * sizeof(int32_t)));
  op("embed", [=, this] { cuda::embed(d_ids, T, dt, data, cols, scale, out, stream_); });
}

void CudaKernelsImpl::scale(const float* x, size_t n, float s, float* out) {
  const KeepLazy keep = keep_apart({{x, n}, {out, n}});
  if (step_->scale(x, n, s, out)) return;
  uint32_t* mx = output_max_slot();
  op("scale", [=, this] {
    zero_max_slot(mx);
    cuda::scale(x, n, s, out, stream_, mx);
  }, x, n, s, out);
  took_output_max(mx, out, n);
}

void CudaKernelsImpl::mul_columns(float* x, int64_t T, int64_t d, const float* v) {
  const KeepLazy keep_lazy = keep_apart({{x, static_cast<size_t>(T * d)}});
  if (step_->mul_columns(x, T, d, v)) return;
  // The in_proj's columns, between it and the attention's projections of the same input: the
  // fp16 copy of that input stays valid when this op writes elsewhere.
  const X16Key& k = x16_last_;
  const auto at = [](const float* p) { return reinterpret_cast<uintptr_t>(p); };
  const bool keep = k.x && x16_seq_ == op_seq_ &&
                    (at(x + T * d) <= at(k.x) || at(k.x + (k.T - 1) * k.ldx + k.K) <= at(x));
  op("mul_columns", [=, this] { cuda::mul_columns(x, T, d, v, stream_); }, x, T, d, v);
  if (keep) x16_seq_ = op_seq_;
}

void CudaKernelsImpl::residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n) {
  if (step_->residual(h, a, sa, b, sb, n)) return;
  op("residual_add2", [=, this] { cuda::residual_add2(h, a, sa, b, sb, n, stream_); }, h, a, sa, b, sb, n);
}

void CudaKernelsImpl::residual_add(float* h, const float* a, float s, size_t n) {
  if (step_->residual(h, a, s, nullptr, 0.0f, n)) return;
  op("residual_add", [=, this] { cuda::residual_add2(h, a, s, nullptr, 0.0f, n, stream_); }, h, a, s, n);
}

void CudaKernelsImpl::gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups, const float* w, float eps, bool norm_before_gate) {
  const KeepLazy keep = keep_apart({{y, static_cast<size_t>(T * d)}, {z, static_cast<size_t>(T * ldz)}});
  op("gated_rmsnorm", [=, this] { cuda::gated_rmsnorm(y, z, ldz, T, d, groups, w, eps, norm_before_gate, stream_); }, y, z,
     ldz, T, d, groups, w, eps, norm_before_gate);
}

void CudaKernelsImpl::rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* positions, const float* inv_freq) {
  const KeepLazy keep = keep_apart({{x, static_cast<size_t>(T * ld)}});
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
  const auto* d_pos = static_cast<const int64_t*>(upload(uploads().pos, positions, static_cast<size_t>(T) * sizeof(int64_t)));
  const auto* d_freq = static_cast<const float*>(upload(uploads().freq, inv_freq, static_cast<size_t>(hd / 2) * sizeof(float)));
  op("rope", [=, this] { cuda::rope(x, ld, T, heads, hd, d_pos, d_freq, stream_); });
}

void CudaKernelsImpl::attention(const float* q, int64_t ldq, int64_t T, const float* k_cache, const float* v_cache, int64_t n_past, int H, int Hkv, int hd, float scale, float* out) {
  const size_t kv_floats = kv_cache_floats(n_past + T, Hkv * hd);
  const KeepLazy keep = keep_apart({{q, static_cast<size_t>(T * ldq)}, {k_cache, kv_floats}, {v_cache, kv_floats},
                                         {out, static_cast<size_t>(T * H * hd)}});
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

void CudaKernelsImpl::kv_write(float* cache, int64_t row, const float* src, int64_t rows, int64_t width) {
  const KeepLazy keep =
      keep_apart({{cache, kv_cache_floats(row + rows, width)}, {src, static_cast<size_t>(rows * width)}});
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

void CudaKernelsImpl::conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w, const float* bias, float* conv_state, float* out) {
  const KeepLazy keep = keep_apart({{in, strided_rows_floats(T, ld_in, C)},
                                    {conv_state, static_cast<size_t>((K - 1) * C)},
                                    {out, static_cast<size_t>(T * C)}});
  op("conv1d_silu", [=, this] { cuda::conv1d_silu(in, ld_in, T, C, K, w, bias, conv_state, out, stream_); }, in, ld_in, T,
     C, K, w, bias, conv_state, out);
}

void CudaKernelsImpl::ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt, int64_t T, const SsmParams& p, float* state, float* y) {
  // x, B, C and dt are columns of wider rows (the in_proj's and the conv's outputs): their ranges
  // end at their own last row's end, not a row stride further (the buffer after them may be lazy).
  const int64_t xw = p.heads * p.head_dim, bw = p.groups * p.d_state;
  const KeepLazy keep = keep_apart({{x, strided_rows_floats(T, ld_xbc, xw)},
                                    {B, strided_rows_floats(T, ld_xbc, bw)},
                                    {C, strided_rows_floats(T, ld_xbc, bw)},
                                    {dt_raw, strided_rows_floats(T, ld_dt, p.heads)},
                                    {state, static_cast<size_t>(xw * p.d_state)},
                                    {y, static_cast<size_t>(T * xw)}});
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

void CudaKernelsImpl::conv1d_silu_rows(const float* in, int64_t ld_in, int64_t n, int64_t C, int K, const float* w, const float* bias, float* const* conv_states, float* out) {
  if (n == 0) return;
  size_t off[1];
  const char* base = arrays({{conv_states, n * sizeof(float*)}}, off);
  op("conv1d_silu_rows", [=, this] {
    const char* b = base ? base : step_->device_arrays();
    cuda::conv1d_silu_rows(in, ld_in, n, C, K, w, bias, reinterpret_cast<float* const*>(b + off[0]), out, stream_);
  }, in, ld_in, n, C, K, w, bias, off[0], out);
}

void CudaKernelsImpl::ssm_scan_rows(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt, int64_t n, const SsmParams& p, float* const* ssm_states, float* y) {
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

void CudaKernelsImpl::kv_write_rows(float* const* caches, const int64_t* n_past, const float* src, int64_t n, int64_t width) {
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

void CudaKernelsImpl::attention_rows(const float* q, int64_t ldq, int64_t n, const float* const* k_caches, const float* const* v_caches, const int64_t* n_past, int H, int Hkv, int hd, float scale, float* out) {
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

}  // namespace cuda

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::unique_ptr<CudaKernels> make_cuda_kernels(int device) { return std::make_unique<cuda::CudaKernelsImpl>(device); }

}  // namespace fh1
