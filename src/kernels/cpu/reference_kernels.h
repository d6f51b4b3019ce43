// The reference CPU backend: plain C++ loops, threaded over one ThreadPool, written to be read
// and checked (per-op tests against float64). The fast backend (fast_kernels.cpp) is tested
// against it and inherits the few ops that are not worth a SIMD version (embed, rope, memory).
#pragma once

#include "kernels/kernels.h"

namespace fh1 {

class ReferenceKernels : public Kernels {
 public:
  explicit ReferenceKernels(ThreadPool& pool) : pool_(pool) {}
  std::string name() const override;
  float* alloc(size_t n) override;
  void free(float* p) override;
  void to_host(float* dst, const float* src, size_t n) override;
  void from_host(float* dst, const float* src, size_t n) override;
  void copy(float* dst, const float* src, size_t n) override;
  void zero(float* dst, size_t n) override;
  WeightView bind_weight(const TensorView& t) override;
  void matmul(const float* x, int64_t ldx, int64_t T, const WeightView& W, const float* bias, float* y) override;
  void embed(const int32_t* ids, int64_t T, const WeightView& table, float scale, float* out) override;
  void rmsnorm(const float* x, int64_t T, int64_t d, const float* weight, float eps, float* out) override;
  void scale(const float* x, size_t n, float s, float* out) override;
  void mul_columns(float* x, int64_t T, int64_t d, const float* v) override;
  void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n) override;
  void residual_add(float* h, const float* a, float s, size_t n) override;
  void silu_mul(const float* gate, const float* up, float gate_scale, size_t n, float* out) override;
  void gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d) override;
  void gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups, const float* weight,
                     float eps, bool norm_before_gate) override;
  void rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* positions,
            const float* inv_freq) override;
  void attention(const float* q, int64_t ldq, int64_t T, const float* k_cache, const float* v_cache, int64_t n_past,
                 int H, int Hkv, int hd, float scale, float* out) override;
  void conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w, const float* bias,
                   float* conv_state, float* out) override;
  void ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
                int64_t T, const SsmParams& p, float* state, float* y) override;
 protected:
  ThreadPool& pool_;
};

}  // namespace fh1
