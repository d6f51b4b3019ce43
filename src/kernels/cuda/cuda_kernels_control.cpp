// The CUDA backend's host side, part two (the class: cuda_kernels_impl.h): sampling on the
// device, decode steps recorded as graphs (cuda_step.h), the backend's settings and memory
// figures, and the helpers the ops share (host arrays uploaded, scratch, the fp16 GEMM's max
// slot). cuda_kernels.cpp has construction, memory and the model's ops.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_kernels_impl.h"
#include "util/error.h"

namespace fh1::cuda {

void CudaKernelsImpl::top_k_rows(const float* x, int64_t rows, int64_t n, int k, int32_t* ids, float* values) {
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

void CudaKernelsImpl::lower_entries(float* x, int64_t count, const int64_t* index, const float* amount, float* original) {
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

void CudaKernelsImpl::softmax_rows(const float* x, int64_t rows, int64_t n, const double* inv_t, const double* u, double* sums, int32_t* drawn) {
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

void CudaKernelsImpl::begin_decode_step() {
  flush();
  step_->begin();
}

uint64_t CudaKernelsImpl::hold_next_decode_step() {
  if (!step_->graphs() || !lookahead_) return 0;
  return step_->hold_next();
}

bool CudaKernelsImpl::launch_held_step(uint64_t ticket, const int32_t* ids, int64_t T) {
  flush();
  return step_->launch_held(ticket, ids, T);
}

void CudaKernelsImpl::use_stream(int lane, cudaStream_t s) {
  stream_ = s;
  check_blas(cublasSetStream(blas_, s), "cublasSetStream");
  check_blas(cublasSetWorkspace(blas_, lane_[lane].blas_ws, kBlasWorkspace), "cublasSetWorkspace");
  blas_ws_now_ = lane_[lane].blas_ws;
}

void CudaKernelsImpl::branch_begin(int64_t rows) {
  if (step_->recording()) {
    if (!step_->branches()) return;
    if (!lane_[1].blas_ws) check(cudaMalloc(&lane_[1].blas_ws, kBlasWorkspace), "cuBLAS workspace (branch)");
    step_->branch_begin();
    return;
  }
  // A prompt's branch: the attention's chain (rope, KV writes, attention, o_proj) beside the
  // Mamba-2 mixer's (conv, the chunked SSD's latency-bound kernels, out_proj), each filling the
  // SMs the other leaves idle. One-row calls keep one stream (the decode step's graph branches).
  close_prefill_branch();
  if (pf_mode_ == 0 || rows <= gemv_rows_) return;
  if (!lane_[1].blas_ws) check(cudaMalloc(&lane_[1].blas_ws, kBlasWorkspace), "cuBLAS workspace (branch)");
  if (!lane_[1].consts) check(cudaMalloc(&lane_[1].consts, 4 * sizeof(float)), "fp16 matmul constants (branch)");
  if (!pf_side_) {
    int least = 0, greatest = 0;
    check(cudaDeviceGetStreamPriorityRange(&least, &greatest), "stream priorities");
    check(cudaStreamCreateWithPriority(&pf_side_, cudaStreamNonBlocking, pf_mode_ == 2 ? greatest : least),
          "cudaStreamCreate (prompt branch)");
    for (cudaEvent_t* e : {&pf_fork_, &pf_join_, &pf_mark_})
      check(cudaEventCreateWithFlags(e, cudaEventDisableTiming), "cudaEventCreate (prompt branch)");
  }
  check(cudaEventRecord(pf_fork_, main_stream_), "prompt branch fork");
  check(cudaStreamWaitEvent(pf_side_, pf_fork_, 0), "prompt branch fork");
  pf_ = PrefillBranch::Side;
  pf_side_settled_ = false;
  use_stream(1, pf_side_);
  ++op_seq_;  // an fp16 input converted before the fork is not taken as ready in the branch
  ++pf_run_;
}

void CudaKernelsImpl::branch_end() {
  if (step_->recording()) {
    step_->branch_end();
    return;
  }
  if (pf_ != PrefillBranch::Side) return;
  check(cudaEventRecord(pf_join_, pf_side_), "prompt branch end");
  use_stream(0, main_stream_);
  pf_ = PrefillBranch::Beside;
  ++op_seq_;
  // The branch settled a lazy result made before it (written on its stream): the ops after it
  // may read it, so they wait for the branch (the model's branch settles none).
  if (pf_side_settled_) check(cudaStreamWaitEvent(main_stream_, pf_join_, 0), "prompt branch end");
}

void CudaKernelsImpl::branch_join() {
  if (step_->recording()) {
    step_->branch_join();
    return;
  }
  close_prefill_branch();
}

void CudaKernelsImpl::close_prefill_branch() {
  if (pf_ == PrefillBranch::None) return;
  if (pf_ == PrefillBranch::Side) branch_end();
  pf_ = PrefillBranch::None;
  for (LazyRows& r : lazy_rows_) r.side = false;
  ++op_seq_;
  check(cudaStreamWaitEvent(main_stream_, pf_join_, 0), "prompt branch join");
}

void CudaKernelsImpl::sync_lanes() {
  if (pf_side_) check(cudaStreamSynchronize(pf_side_), "synchronize (prompt branch)");
  check(cudaStreamSynchronize(main_stream_), "synchronize");
}

void CudaKernelsImpl::set_prefill_branches(bool on) {
  flush();
  pf_mode_ = on ? std::max(pf_mode_, 1) : 0;
}

void CudaKernelsImpl::set_f16_weight_copies(bool on) {
  flush();
  cudaStreamSynchronize(stream_);
  weights_->set_f16_copies(on);
}

DType CudaKernelsImpl::kv_cache_dtype() const {
  return kv_ == cuda::KvType::BF16 ? DType::BF16 : kv_ == cuda::KvType::Q8 ? DType::I8 : DType::F32;
}

bool CudaKernelsImpl::set_kv_cache_dtype(DType t) {
  if (t != DType::F32 && t != DType::BF16 && t != DType::I8) return false;
  flush();
  kv_ = t == DType::BF16 ? cuda::KvType::BF16 : t == DType::I8 ? cuda::KvType::Q8 : cuda::KvType::F32;
  return true;
}

std::string CudaKernelsImpl::prefill_attention() const {
  if (!tf32_attn_) return "f32";
  if (kv_ == cuda::KvType::F32) return "tf32";
  static const char* const by_precision[] = {"bf16", "bf16 (Q split)", "bf16 (Q and P split)", "fp16 (scaled)"};
  const int prec = cuda::flash_precision();
  if (prec == 3 && cuda::flash_wgmma() > 0) return "fp16 (scaled, wgmma)";
  return by_precision[prec];
}

void CudaKernelsImpl::set_decode_graphs(bool on) {
  flush();
  step_->drop_held();
  step_->set_graphs(on);
}

void CudaKernelsImpl::set_decode_branches(bool on) {
  flush();
  step_->drop_held();
  step_->set_branches(on);
}

void CudaKernelsImpl::set_decode_lookahead(bool on) {
  if (!on) step_->drop_held();
  lookahead_ = on;
}

void CudaKernelsImpl::synchronize() {
  flush();
  check(cudaStreamSynchronize(stream_), "synchronize");
}

CudaMemoryStats CudaKernelsImpl::memory_stats() const {
  return CudaMemoryStats{weights_->bytes(), mem_->live_bytes(), mem_->peak_live_bytes(), mem_->cached_bytes(),
                         weights_->f16_copy_bytes()};
}

void CudaKernelsImpl::trim() {
  flush();
  cudaStreamSynchronize(stream_);
  mem_->trim();
}

void CudaKernelsImpl::fill_random(float* p, size_t n, float amplitude, uint64_t seed) {
  flush();
  if (n) cuda::fill_random_f32(p, n, amplitude, seed, stream_);
}

void CudaKernelsImpl::fill_random_kv(float* cache, int64_t rows, int64_t width, float amplitude, uint64_t seed) {
  flush();
  const auto values = static_cast<size_t>(rows * width);
  if (values == 0) return;
  if (kv_ == cuda::KvType::Q8) cuda::fill_random_kv_q8(cache, rows, width, amplitude, seed, stream_);
  else if (kv_ == cuda::KvType::BF16)
    cuda::fill_random_bf16(reinterpret_cast<uint16_t*>(cache), values, amplitude, seed, stream_);
  else cuda::fill_random_f32(cache, values, amplitude, seed, stream_);
}

void CudaKernelsImpl::randomize_weights(uint64_t seed) {
  flush();
  weights_->randomize(seed, stream_);
  synchronize();
}

const char* CudaKernelsImpl::arrays(std::initializer_list<std::pair<const void*, size_t>> parts, size_t* offs) {
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
  return static_cast<const char*>(upload(uploads().rows, pack_.data(), pack_.size()));
}

void CudaKernelsImpl::flush() {
  close_prefill_branch();
  settle();
  ++op_seq_;
  step_->end();
}

uint32_t* CudaKernelsImpl::output_max_slot() {
  static const bool on = [] {
    const char* e = std::getenv("FH1_CUDA_OUTPUT_MAX");
    return !(e && std::string(e) == "0");
  }();
  return step_->recording() || !on ? nullptr : reinterpret_cast<uint32_t*>(f16_consts());
}

void CudaKernelsImpl::zero_max_slot(uint32_t* mx) {
  if (mx) check(cudaMemsetAsync(mx, 0, 3 * sizeof(float), stream_), "max slot (memset)");
}

void CudaKernelsImpl::took_output_max(uint32_t* mx, const float* out, size_t n) {
  if (!mx) return;
  max_of_ = {out, n};
  max_seq_ = op_seq_;
}

void CudaKernelsImpl::drop_f16_copies() {
  sync_lanes();
  weights_->drop_f16_copies(true);
}

void CudaKernelsImpl::gemm_bf16(const WeightView& W, const uint16_t* xb, int64_t T, float* y, float beta) {
  const float one = 1.0f;
  const int N = static_cast<int>(W.rows), K = static_cast<int>(W.cols);
  check_blas(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, static_cast<int>(T), K, &one, W.data, CUDA_R_16BF, K,
                          xb, CUDA_R_16BF, K, &beta, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx (bf16)");
}

const void* CudaKernelsImpl::upload(HostUpload& u, const void* src, size_t bytes) {
  if (bytes == 0) return u.dev;
  if (u.dev != nullptr && u.last.size() == bytes && std::memcmp(u.last.data(), src, bytes) == 0) return u.dev;
  if (bytes > u.cap) {
    sync_lanes();  // either stream may still read the old buffer
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

}  // namespace fh1::cuda
