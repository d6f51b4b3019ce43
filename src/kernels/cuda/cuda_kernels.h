// The CUDA backend: every Kernels op on one NVIDIA GPU. Float arrays live in device memory
// (cudaMalloc through a caching allocator, never managed memory); integer arrays (token ids,
// positions) stay on the host, as the interface says, and are uploaded through a pinned buffer.
//
// Weights: BF16 tensors are uploaded once and stay BF16; F16 and F32 tensors are uploaded as F32.
// KV caches: bf16 by default (set_kv_cache_dtype(DType::F32) for float32).
// matmul with BF16 weights (cuBLAS, bf16 tensor cores, float32 accumulate and output): by default
// each float32 activation is split into two bf16 parts (hi + lo, about 16 bits kept), so the
// result is within ~1e-5 of float32 activations times the bf16 weights; this costs a second pass
// of tensor-core work (decode: one GEMM over 2T rows, the weights still read once). From 256
// rows on (prefill) one fp16 GEMM replaces the two: the weights exact in fp16 after a power-of-two
// scaling, the activations scaled likewise and rounded to 11 bits.
// set_matmul_split(false), or FH1_CUDA_MATMUL=bf16 in the environment, rounds activations to
// bf16 once instead (faster prefill, ~4e-2 of rms on the tiny fixtures, over the 2e-2 tolerance).
// F32 weights use plain SGEMM (no TF32), so F32 checkpoints compute in float32.
// Decode steps (Kernels::begin_decode_step .. end_decode_step) are recorded and replayed as CUDA
// graphs, one per batch shape and power-of-two context bucket (cuda_kernels.cpp says how).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/kernels.h"

namespace fh1 {

// Number of CUDA devices visible (0 when there is no GPU or no driver; never throws).
int cuda_device_count();

// Memory the backend holds on the device.
struct CudaMemoryStats {
  size_t weight_bytes = 0;   // uploaded weights
  size_t live_bytes = 0;     // buffers handed out by alloc() and not freed
  size_t peak_live_bytes = 0;
  size_t cached_bytes = 0;   // freed buffers kept for reuse
  size_t f16_copy_bytes = 0; // the weights' fp16 copies (set_f16_weight_copies)
};

// What the lazy results (CudaKernels::set_lazy_results) saved so far: products taken by their
// matmul as row-scaled fp16, GEMM outputs whose row scales a residual norm took, and norm outputs
// overwritten without ever being written in float32.
struct CudaLazyCounts {
  size_t rows_matmuls = 0, rows_taken = 0, norms_unread = 0;
  size_t mlps_f16 = 0;  // MLPs whose gate and up stayed in fp16 (mlp)
};

class CudaKernels : public Kernels {
 public:
  // Activations as hi + lo bf16 parts in bf16 matmuls (default), or rounded to bf16 once.
  virtual void set_matmul_split(bool on) = 0;
  virtual bool matmul_split() const = 0;
  // With the split on, matmuls of at least this many rows (default 256; 0: never;
  // FH1_CUDA_F16_ROWS) run as one fp16 GEMM instead: weights exact, activations scaled by a power
  // of two and rounded to 11 bits (cuda_gemm_f16.cu).
  virtual void set_matmul_f16_rows(int64_t rows) = 0;
  virtual int64_t matmul_f16_rows() const = 0;
  // The fp16 GEMM's weights: an fp16 copy of each bf16 matrix, made at its first such matmul
  // while memory allows (at least max(2 GiB, 10 %) of the device left free) and freed as soon as
  // any other allocation needs the room (default; FH1_CUDA_F16_COPIES=0: none, each call converts
  // its matrix). The results are the same either way.
  virtual void set_f16_weight_copies(bool on) = 0;
  virtual bool f16_weight_copies() const = 0;
  // Prefill attention on the tensor cores (default: over bf16 caches in fp16, Q and K/V scaled by
  // powers of two, ~4e-3 of rms from float32; over float32 caches in TF32, ~1e-2), or in float32
  // (FH1_CUDA_ATTN=f32).
  virtual void set_attention_tf32(bool on) = 0;
  virtual bool attention_tf32() const = 0;
  // The prefill attention kernel these settings pick ("fp16 (scaled)", "tf32", "f32", ...).
  virtual std::string prefill_attention() const = 0;
  // A long prompt's scan (the chunked SSD's batched products) on the tensor cores in TF32
  // (default; inputs rounded to 10-bit mantissas, sums, state and the chunks' recurrence float32;
  // ~1e-3 of rms), or in float32 (FH1_CUDA_SSD_TF32=0).
  virtual void set_scan_tf32(bool on) = 0;
  virtual bool scan_tf32() const = 0;
  // A prompt's results left in the form the next op takes (default; FH1_CUDA_LAZY=0: off): a
  // norm's float32 output unwritten when only fp16 matmuls read it, silu_mul and gate_silu run
  // as the fp16 input of the matmul after them with a power-of-two scale per row (not one per
  // tensor), and that matmul's rows scaled in the residual add after it. Any other op that reads
  // them gets the values the eager ops would have written (cuda_kernels_impl.h).
  virtual void set_lazy_results(bool on) = 0;
  virtual bool lazy_results() const = 0;
  virtual CudaLazyCounts lazy_counts() const = 0;
  // With lazy results on, a prompt's MLP keeps gate and up in fp16 (default; FH1_CUDA_MLP16=0:
  // off): their outputs rounded to 11 bits, scaled by a bound so that none can overflow
  // (Kernels::mlp, cuda_kernels_lazy.cpp). Off: float32, as the eager ops.
  virtual void set_mlp_f16(bool on) = 0;
  virtual bool mlp_f16() const = 0;
  // The prefill's fp16 GEMMs through cublasLt, each shape's algorithm (per N, K, output type and
  // T rounded up to a power of two) picked once by timing cuBLAS's candidates, among those whose
  // output is bit for bit that of cublasGemmEx's default choice: speed only, the same results
  // (off by default, cublasGemmEx's own choice; FH1_CUDA_GEMM_TUNE=1: on; cuda_gemm_lt.h).
  // Shapes tuned so far, and how many of them took another algorithm than the default.
  virtual void set_gemm_tuning(bool on) = 0;
  virtual bool gemm_tuning() const = 0;
  virtual int gemm_shapes_tuned() const = 0;
  virtual int gemm_shapes_replaced() const = 0;
  // Decode steps recorded and replayed as CUDA graphs (default; FH1_CUDA_GRAPHS=0 turns it off).
  virtual void set_decode_graphs(bool on) = 0;
  virtual bool decode_graphs() const = 0;
  virtual size_t graphs_captured() const = 0;  // graphs captured so far (a new one per batch shape and length bucket)
  // Decode steps recorded ahead of their tokens (Kernels::hold_next_decode_step: the model records
  // step n+1 while the GPU runs step n; default; FH1_CUDA_LOOKAHEAD=0 turns it off), and how many
  // held steps were launched so far.
  virtual void set_decode_lookahead(bool on) = 0;
  virtual size_t held_steps_launched() const = 0;
  // A recorded decode step runs the attention as a branch beside the Mamba-2 mixer (the model's
  // branch_begin/end/join hints; default; FH1_CUDA_BRANCHES=0 turns it off).
  virtual void set_decode_branches(bool on) = 0;
  // A prompt's forward call (more rows than the decode GEMV takes) runs the attention's ops on a
  // second stream beside the Mamba-2 mixer's, joined before the residual norm that reads both
  // (default; FH1_CUDA_PREFILL_BRANCH=0 turns it off, =2 gives the branch's stream the greatest
  // priority). The results are the same either way. prefill_branches_run(): how many ran so far.
  virtual void set_prefill_branches(bool on) = 0;
  virtual bool prefill_branches() const = 0;
  virtual size_t prefill_branches_run() const = 0;
  // Waits for all queued device work.
  virtual void synchronize() = 0;
  virtual CudaMemoryStats memory_stats() const = 0;
  virtual void reset_peak() = 0;
  // Returns cached (freed) buffers to the driver.
  virtual void trim() = 0;
  // Benchmarks only: overwrites every uploaded weight matrix with reproducible random values
  // (uniform in +-1/sqrt(cols)), so that a model bound from an all-zero file computes on real data.
  virtual void randomize_weights(uint64_t seed) = 0;
  // Benchmarks only: n floats at p (device memory from alloc) uniform in +-amplitude.
  virtual void fill_random(float* p, size_t n, float amplitude, uint64_t seed) = 0;
  // Benchmarks only: `rows` KV cache rows of `width` values at `cache` (kv_cache_dtype()), uniform
  // in +-amplitude.
  virtual void fill_random_kv(float* cache, int64_t rows, int64_t width, float amplitude, uint64_t seed) = 0;
};

// Throws fh1::Error when the device cannot be used.
std::unique_ptr<CudaKernels> make_cuda_kernels(int device = 0);

}  // namespace fh1
