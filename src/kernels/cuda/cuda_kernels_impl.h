// The CUDA backend's one implementation of the kernel interface (CudaKernels, cuda_kernels.h),
// declared here for the three files that define it: cuda_kernels.cpp (construction, memory, the
// model's ops), cuda_kernels_control.cpp (sampling, decode steps as graphs, settings, and the
// helpers the ops share) and cuda_kernels_lazy.cpp (the ops whose results may stay lazy). Nothing
// outside src/kernels/cuda includes it.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_allocator.h"
#include "kernels/cuda/cuda_gemm_lt.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_profile.h"
#include "kernels/cuda/cuda_step.h"
#include "kernels/cuda/cuda_weights.h"
#include "util/error.h"

namespace fh1::cuda {

// A device copy of a small host array (ids, positions, inverse frequencies), re-uploaded only
// when its content changes: rope runs twice per layer on the same positions.
struct HostUpload {
  std::vector<char> last;
  void* dev = nullptr;
  size_t cap = 0;
};

class CudaKernelsImpl final : public CudaKernels {
 public:
  explicit CudaKernelsImpl(int device);

  ~CudaKernelsImpl() override;

  std::string name() const override { return name_; }

  // ---- memory ----
  float* alloc(size_t n) override;
  float* alloc_uninit(size_t n) override;

  void free(float* p) override;  // reuse is ordered after earlier work: one stream

  void to_host(float* dst, const float* src, size_t n) override;
  void from_host(float* dst, const float* src, size_t n) override;
  void copy(float* dst, const float* src, size_t n) override;
  void zero(float* dst, size_t n) override;

  WeightView bind_weight(const TensorView& t) override;

  // ---- dense ops ----
  void matmul(const float* x, int64_t ldx, int64_t T, const WeightView& W, const float* bias, float* y) override;
  void matmul_scaled(const float* x, int64_t ldx, int64_t T, float s, float* x_scaled,
                     const Projection* to, size_t n) override;

  void embed(const int32_t* ids, int64_t T, const WeightView& table, float scale, float* out) override;

  void rmsnorm(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out) override;
  void residual_rmsnorm(float* h, const float* a, float sa, const float* b, float sb, int64_t T, int64_t d,
                        const float* w, float eps, float* out) override;
  void scale(const float* x, size_t n, float s, float* out) override;
  void mul_columns(float* x, int64_t T, int64_t d, const float* v) override;
  void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n) override;
  void residual_add(float* h, const float* a, float s, size_t n) override;
  void silu_mul(const float* gate, const float* up, float gs, size_t n, float* out) override;
  void gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d) override;
  void silu_mul_matmul(float* gate, const float* up, float gs, int64_t T, const WeightView& W, const float* bias,
                       float* y) override;
  void gate_silu_matmul(float* x, const float* z, int64_t ldz, int64_t T, const WeightView& W, const float* bias,
                        float* y) override;
  void mlp(const float* x, int64_t ldx, int64_t T, const Mlp& m, float* gate_room, float* up_room,
           float* y) override;
  void gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups, const float* w,
                     float eps, bool norm_before_gate) override;

  // ---- attention ----
  void rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* positions,
            const float* inv_freq) override;

  void attention(const float* q, int64_t ldq, int64_t T, const float* k_cache, const float* v_cache, int64_t n_past,
                 int H, int Hkv, int hd, float scale, float* out) override;

  void kv_write(float* cache, int64_t row, const float* src, int64_t rows, int64_t width) override;

  // ---- Mamba-2 ----
  void conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w, const float* bias,
                   float* conv_state, float* out) override;
  void ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
                int64_t T, const SsmParams& p, float* state, float* y) override;

  // ---- decode steps: every sequence's row in one launch ----
  // The pointer arrays and lengths are step data (the device array while recording): a graph
  // does not depend on which sequences, or which KV buffers, it runs on.
  void conv1d_silu_rows(const float* in, int64_t ld_in, int64_t n, int64_t C, int K, const float* w,
                        const float* bias, float* const* conv_states, float* out) override;
  void ssm_scan_rows(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw,
                     int64_t ld_dt, int64_t n, const SsmParams& p, float* const* ssm_states, float* y) override;
  void kv_write_rows(float* const* caches, const int64_t* n_past, const float* src, int64_t n,
                     int64_t width) override;
  void attention_rows(const float* q, int64_t ldq, int64_t n, const float* const* k_caches,
                      const float* const* v_caches, const int64_t* n_past, int H, int Hkv, int hd, float scale,
                      float* out) override;

  // ---- sampling ----
  // The k best logits of each row selected on the device: k (id, value) pairs a row come back
  // instead of the vocabulary. k above cuda::kTopKMax: the default (the rows copied and sorted).
  void top_k_rows(const float* x, int64_t rows, int64_t n, int k, int32_t* ids, float* values) override;

  void lower_entries(float* x, int64_t count, const int64_t* index, const float* amount, float* original) override;

  void softmax_rows(const float* x, int64_t rows, int64_t n, const double* inv_t, const double* u, double* sums,
                    int32_t* drawn) override;

  // ---- decode steps as graphs ----
  void begin_decode_step() override;
  void end_decode_step() override { flush(); }
  uint64_t hold_next_decode_step() override;
  bool launch_held_step(uint64_t ticket, const int32_t* ids, int64_t T) override;
  void drop_held_step(uint64_t ticket) override { step_->drop_ticket(ticket); }
  void branch_begin(int64_t rows) override;
  void branch_end() override;
  void branch_join() override;

  // ---- CudaKernels ----
  void set_matmul_split(bool on) override { split_ = on; }
  void set_matmul_f16_rows(int64_t rows) override { f16_rows_ = std::max<int64_t>(0, rows); }
  int64_t matmul_f16_rows() const override { return f16_rows_; }
  bool matmul_split() const override { return split_; }
  void set_attention_tf32(bool on) override { tf32_attn_ = on; }
  void set_scan_tf32(bool on) override { tf32_scan_ = on; }
  void set_lazy_results(bool on) override;
  bool lazy_results() const override { return lazy_on_; }
  CudaLazyCounts lazy_counts() const override { return lazy_counts_; }
  void set_mlp_f16(bool on) override { mlp16_on_ = on; }
  bool mlp_f16() const override { return mlp16_on_; }
  void set_gemm_tuning(bool on) override { gemm_algos_->set_enabled(on); }
  bool gemm_tuning() const override { return gemm_algos_->enabled(); }
  int gemm_shapes_tuned() const override { return gemm_algos_->tuned(); }
  int gemm_shapes_replaced() const override { return gemm_algos_->replaced(); }
  void set_f16_weight_copies(bool on) override;
  bool f16_weight_copies() const override { return weights_->f16_copies(); }
  bool scan_tf32() const override { return tf32_scan_; }
  DType kv_cache_dtype() const override;
  // Short calls leave the GPU idle: a prompt's attention launches (queries / 192) x heads blocks
  // for 132 SMs, and each call copies the caches' rows so far to fp16. 7B, 32K tokens on an H200:
  // 4,158 ms in calls of 256 tokens, 2,500 in 512, 1,435 in 2048, 1,404 in 8192, 1,372 in 32K
  // (activations 1.9, 2.3, 3.7 and 9.3 GB); 0.5B: 2,311, 430, 342 and 314 ms.
  int64_t preferred_prompt_chunk() const override { return 8192; }
  // KV caches in bf16 (default: half the bytes a long-context decode step reads; keys and values
  // rounded to bf16 when written, every product and sum still float32), float32 (FH1_CUDA_KV=f32),
  // or 8 bits with block scales (I8, FH1_CUDA_KV=q8: a little over half of bf16's bytes; not
  // exact). Set before any SequenceState exists.
  bool set_kv_cache_dtype(DType t) override;
  bool attention_tf32() const override { return tf32_attn_; }
  std::string prefill_attention() const override;
  void set_decode_graphs(bool on) override;
  bool decode_graphs() const override { return step_->graphs(); }
  void set_decode_branches(bool on) override;
  void set_prefill_branches(bool on) override;
  bool prefill_branches() const override { return pf_mode_ != 0; }
  size_t prefill_branches_run() const override { return pf_run_; }
  size_t graphs_captured() const override { return step_->graphs_captured(); }
  void set_decode_lookahead(bool on) override;
  size_t held_steps_launched() const override { return step_->held_launched(); }
  void synchronize() override;

  CudaMemoryStats memory_stats() const override;
  void reset_peak() override { mem_->reset_peak(); }

  void trim() override;

  void fill_random(float* p, size_t n, float amplitude, uint64_t seed) override;
  void fill_random_kv(float* cache, int64_t rows, int64_t width, float amplitude, uint64_t seed) override;

  void randomize_weights(uint64_t seed) override;

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
    float* consts = nullptr;  // the fp16 GEMM's max, alpha and beta (lane 0: f16_consts_)
  };
  static constexpr int64_t kStackedRows = 64;
  static constexpr int64_t kF16Rows = 256;
  static constexpr size_t kBlasWorkspace = size_t(32) << 20;

  // Runs f now, or (recording a decode step) keeps it with its signature: the op's tag and its
  // arguments.
  template <class F, class... A>
  void op(const char* name, F&& f, A... args) {
    if (lazy_kinds() & ~keep_lazy_) settle(keep_lazy_);
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
  const char* arrays(std::initializer_list<std::pair<const void*, size_t>> parts, size_t* offs);

  // Ends a decode step's recording (cuda_step.h), if one is in progress, after settling what
  // was left lazy (below). Every host-side read or write (to_host, from_host, fill_random, ...)
  // flushes first: it counts as device work.
  void flush();

  // ---- results left for the next op to take (a prompt's; cuda_kernels_lazy.cpp) ----
  // A prompt's fp16 matmuls want their input in fp16 and the ops after them want their output
  // whole; a result in the form the next op takes saves passes over the activations. Two kinds
  // are left lazy, each settled (its float32 values written as the eager op would have written
  // them, bit for bit) by any op that does not take it in its lazy form: op() settles every one
  // not in keep_lazy_, ops that name the ranges they touch keep those apart from them, and
  // flush() and free() settle all.
  //   kLazyNorm: a norm's float32 output not written; its fp16 copy (the next matmuls' input) was.
  //     Settled by running the norm again on its input (the residual already added).
  //   kLazyRows << i (two slots: the attention's o_proj output waits beside the mixer's): the
  //     output of an fp16 GEMM whose input was made with a shift per row (rows_to_f16: the
  //     products of silu_mul_matmul and gate_silu_matmul, and any input whose max is not known,
  //     such as the attention's output); its rows still need their scale (scale_rows). A
  //     residual norm takes the scales in its add.
  // (The MLP's gate and up, kept in fp16 by mlp(), are not lazy results: nothing but the op that
  // made them reads them.)
  // FH1_CUDA_LAZY=0 / set_lazy_results(false): every op eager, as before.
  static constexpr int kRowSlots = 2;
  enum LazyKind : unsigned { kLazyNorm = 1, kLazyRows = 2 };
  struct LazyNorm {
    const float* x = nullptr;  // the norm's input (its h, the residual added); null: none
    int64_t T = 0, d = 0;
    const float* w = nullptr;
    float eps = 0.0f;
    float* out = nullptr;
  };
  struct LazyRows {
    float* y = nullptr;  // null: none
    int64_t T = 0, N = 0;
    const float* rows = nullptr;
    bool side = false;  // made in a prompt's branch not yet joined
  };
  unsigned lazy_kinds() const {
    unsigned k = lazy_norm_.x ? kLazyNorm : 0u;
    for (int i = 0; i < kRowSlots; ++i)
      if (lazy_rows_[i].y) k |= kLazyRows << i;
    return k;
  }
  // Settles every lazy result not in keep.
  void settle(unsigned keep = 0);
  using Ranges = std::initializer_list<std::pair<const float*, size_t>>;
  // The floats from a view's first element to its last: T rows of `width` columns, `ld` apart.
  static size_t strided_rows_floats(int64_t T, int64_t ld, int64_t width) {
    return T > 0 ? static_cast<size_t>((T - 1) * ld + width) : 0;
  }
  // The lazy results none of whose ranges meets one of these [p, p + n).
  unsigned lazy_apart(Ranges ranges) const;
  // Ops run while keep_lazy_ holds `keep` (op() settles the others).
  struct KeepLazy {
    CudaKernelsImpl* k;
    unsigned saved;
    KeepLazy(CudaKernelsImpl* k_, unsigned keep) : k(k_), saved(k_->keep_lazy_) { k->keep_lazy_ = keep; }
    KeepLazy(const KeepLazy&) = delete;
    KeepLazy& operator=(const KeepLazy&) = delete;
    ~KeepLazy() { k->keep_lazy_ = saved; }
  };
  // The guard of an op that touches only these ranges: lazy results apart from them stay lazy
  // (the ops between a norm and the next one that overwrites its output, which only fp16 matmuls
  // read; those between the o_proj and the residual norm). Ranges may be larger than what the op
  // touches, never smaller.
  KeepLazy keep_apart(Ranges ranges) { return KeepLazy(this, lazy_apart(ranges)); }
  // y = rop(a, b) W^T (+ bias) as rows_to_f16 and one fp16 GEMM, y's rows left lazy (false: it
  // does not fit).
  bool rows_matmul(cuda::RowsOp rop, const float* a, int64_t lda, const float* b, int64_t ldb, float gs, int64_t T,
                   const WeightView& W, const float* bias, float* y);
  // The rest of rows_matmul and mlp: the GEMM of x16 (made by make(x16, rows) in the op, after W's
  // fp16 copy is filled; null: into scratch) into y, whose rows are left lazy. `ranges`: what the
  // op touches, y included (lazy results apart from them stay lazy).
  template <class MakeRows>
  void rows_gemm(const char* name, Ranges ranges, int64_t T, const WeightView& W, const float* bias, float* y,
                 uint16_t* x16, const MakeRows& make);
  // mlp with gate and up in fp16 (false: it does not fit; nothing was done).
  bool mlp_as_f16(const float* x, int64_t ldx, int64_t T, const Mlp& m, float* gate_room, float* up_room, float* y);

  // The lane (stream) the op being recorded or launched runs on: 1 in a decode step's branch or
  // a prompt's (which run beside the ops after them), else 0.
  int lane() const { return step_->recording() ? step_->lane() : pf_ == PrefillBranch::Side ? 1 : 0; }
  // Scratch of that lane: a branch runs beside the ops after it, so the two must not share.
  LaneScratch& scratch() { return lane_[lane()]; }
  float* f16_consts() { return lane() ? lane_[1].consts : f16_consts_; }
  // stream_, cuBLAS's stream and workspace to those of a lane.
  void use_stream(int lane, cudaStream_t s);

  // ---- a prompt's branch (branch_begin/end/join outside a recorded decode step) ----
  // The branch's ops run on pf_side_ from the fork on; the ops after branch_end() on the main
  // stream, which waits for the branch at branch_join(). Hidden shared state: each lane has its
  // own scratch, host uploads, cuBLAS workspace and fp16 GEMM constants; a lazy result made in
  // the branch and settled beside it waits for the branch first (settle()); memory is freed or
  // regrown only with both streams idle (sync_lanes()).
  enum class PrefillBranch { None, Side, Beside };
  // Ends an open branch as branch_end() and branch_join() would (before host copies, frees,
  // decode steps; after an op threw inside it).
  void close_prefill_branch();
  // Waits for both streams (the branch's too) from the host.
  void sync_lanes();

  // A scratch buffer of at least n elements: a smaller one is retired (closures recorded earlier
  // in the step may still use it) and replaced by one at least twice as large.
  template <class T>
  T* grown(T*& p, size_t& cap, size_t n, const char* what) {
    if (n > cap) {
      if (pf_ != PrefillBranch::None && p) sync_lanes();  // the branch's stream may still use p
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
  uint32_t* output_max_slot();
  // rmsnorm outside a decode step's fusions; res (not null): the residual add it takes first.
  void rmsnorm_op(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out,
                  const cuda::NormResidual* res);
  // Zeroes the max, alpha and beta (in stream order, inside the op's closure).
  void zero_max_slot(uint32_t* mx);
  void took_output_max(uint32_t* mx, const float* out, size_t n);

  // Frees the weights' fp16 copies for good: an allocation needs the room. No recorded closure
  // uses them (a recorded decode step never takes the fp16 GEMM): waiting for the stream is enough.
  void drop_f16_copies();

  // The prefill matmul (T >= f16_rows_ rows, bf16 weights, not recording): one fp16 GEMM,
  // y = ((x * x_scale) W^T + bias) * col_scale, x_scale taken into the GEMM's alpha and
  // col_scale (optional, per output column) into a kept copy of W where it can.
  bool takes_f16(const WeightView& W, int64_t T) const;
  void matmul_f16(const float* x, int64_t ldx, int64_t T, float x_scale, const WeightView& W, const float* bias,
                  float* y, const float* col_scale);

  // W in fp16 for the fp16 GEMM (the kept copy, or converted into scratch by fill()); the
  // output columns' scale folded into the copy where there is no bias (cols_after otherwise).
  struct F16Weights {
    const uint16_t* w16 = nullptr;
    int shift = 0;
    cuda::DeviceWeights::F16Copy copy;  // copy.fill: to be filled first
    uint16_t* converted = nullptr;      // scratch to convert W into first
    bool cols_after = false;
  };
  F16Weights f16_weights(const WeightView& W, const float* bias, const float* col_scale);
  void fill(const F16Weights& f, const WeightView& W);  // in the op's closure

  // y[T, N] = xb[T, K] @ W^T (+ beta * y), float32 accumulate and output.
  void gemm_bf16(const WeightView& W, const uint16_t* xb, int64_t T, float* y, float beta);

  const void* upload(HostUpload& u, const void* src, size_t bytes);

  int device_ = 0;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  void* blas_ws_now_ = nullptr;  // the workspace blas_ has now (use_stream)
  std::unique_ptr<cuda::GemmAlgos> gemm_algos_;
  // The prefill's fp16 GEMMs' handles, on the stream and workspace of now.
  cuda::GemmRun gemm_run() const { return {blas_, gemm_algos_.get(), blas_ws_now_, kBlasWorkspace}; }
  std::unique_ptr<cuda::CachingAllocator> mem_ = std::make_unique<cuda::CachingAllocator>();
  std::unique_ptr<cuda::DeviceWeights> weights_;
  struct HostUploads {  // one set a lane: the two streams never write the same buffer
    HostUpload ids, pos, freq, rows;
  } up_[2];
  HostUploads& uploads() { return up_[lane()]; }
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
  LazyNorm lazy_norm_;
  LazyRows lazy_rows_[kRowSlots];
  unsigned keep_lazy_ = 0;
  bool lazy_on_ = true;  // FH1_CUDA_LAZY
  bool mlp16_on_ = true;  // FH1_CUDA_MLP16
  CudaLazyCounts lazy_counts_;
  float* row_scales_[kRowSlots] = {};  // each slot's scales (T floats)
  size_t row_scales_cap_[kRowSlots] = {};
  int row_slot_next_ = 0;  // the slot a GEMM's rows take when both are in use (the older one)
  cudaStream_t main_stream_ = nullptr;  // stream_ outside branches
  cudaStream_t pf_side_ = nullptr;      // a prompt's branch: its stream and fork/join events
  cudaEvent_t pf_fork_ = nullptr, pf_join_ = nullptr, pf_mark_ = nullptr;
  PrefillBranch pf_ = PrefillBranch::None;
  int pf_mode_ = 1;  // FH1_CUDA_PREFILL_BRANCH: 0 off, 1 on, 2 on at the greatest stream priority
  bool pf_side_settled_ = false;  // the branch settled a lazy result made before it
  size_t pf_run_ = 0;
};

}  // namespace fh1::cuda
