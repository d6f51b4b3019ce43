// The CUDA backend's host side, part three: the ops whose results may be left lazy for the next op
// (cuda_kernels_impl.h says which and why): the norms, silu_mul_matmul and gate_silu_matmul, and
// the settling of what is left.
//
// H200, a 1.5B-Deep layer at 8K tokens: the norm's float32 output (42 MB written, never read by
// the fp16 matmuls), and for the MLP's and the mixer's products a float32 write, a read and an
// fp16 write, a pass for the max and an alpha kernel, become one pass writing fp16.
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <utility>

#include "kernels/cuda/cuda_kernels_impl.h"

namespace fh1::cuda {

namespace {
bool overlap(const float* p, size_t n, const float* q, size_t m) { return p < q + m && q < p + n; }
}  // namespace

void CudaKernelsImpl::set_lazy_results(bool on) {
  settle();
  lazy_on_ = on;
}

void CudaKernelsImpl::free(float* p) {
  // A lazy result may read or become p: settled while p is still ours. free runs in destructors,
  // during unwinding too: what cannot be settled is dropped (its op's error was thrown already).
  // An open prompt branch is joined first: the memory's next user is ordered after it.
  try {
    close_prefill_branch();
  } catch (const Error&) {
  }
  if (lazy_kinds()) try {
      settle();
    } catch (const Error&) {
      lazy_norm_ = {};
      for (LazyRows& r : lazy_rows_) r = {};
    }
  mem_->free(p);
}

unsigned CudaKernelsImpl::lazy_apart(Ranges ranges) const {
  const auto apart = [&](const float* q, size_t m) {
    for (const auto& [p, n] : ranges)
      if (overlap(p, n, q, m)) return false;
    return true;
  };
  unsigned k = 0;
  const LazyNorm& l = lazy_norm_;
  const size_t n = static_cast<size_t>(l.T * l.d);
  if (l.x && apart(l.x, n) && apart(l.out, n)) k |= kLazyNorm;
  for (int i = 0; i < kRowSlots; ++i) {
    const LazyRows& r = lazy_rows_[i];
    if (r.y && apart(r.y, static_cast<size_t>(r.T * r.N))) k |= kLazyRows << i;
  }
  return k;
}

void CudaKernelsImpl::settle(unsigned keep) {
  const unsigned todo = lazy_kinds() & ~keep;
  if (!todo) return;
  // Beside a prompt's branch, a result the branch made waits for the branch's work so far; in the
  // branch, a result made before it is settled on the branch's stream, so the ops after the
  // branch wait for it (branch_end()).
  if (pf_ == PrefillBranch::Side) pf_side_settled_ = true;
  bool waits = false;
  for (int i = 0; i < kRowSlots; ++i) waits = waits || ((todo & (kLazyRows << i)) && lazy_rows_[i].side);
  if (pf_ == PrefillBranch::Beside && waits) {
    check(cudaEventRecord(pf_mark_, pf_side_), "prompt branch (settle)");
    check(cudaStreamWaitEvent(main_stream_, pf_mark_, 0), "prompt branch (settle)");
  }
  // Every result to settle is taken off before any of their ops runs, so that op() settles
  // nothing more (keep_lazy_: the ones left). None reads what another writes (checked where each
  // was made), so the order does not matter.
  LazyRows r[kRowSlots];
  for (int i = 0; i < kRowSlots; ++i)
    if (todo & (kLazyRows << i)) std::swap(r[i], lazy_rows_[i]);
  const LazyNorm l = todo & kLazyNorm ? lazy_norm_ : LazyNorm{};
  if (todo & kLazyNorm) lazy_norm_ = {};
  const KeepLazy guard(this, lazy_kinds());
  for (const LazyRows& x : r)
    if (x.y)
      op("scale_rows", [=, this] { cuda::scale_rows(x.y, x.T, x.N, x.rows, nullptr, stream_); }, x.y, x.T, x.N,
         x.rows);
  // The norm again, on h as the residual add left it: the warp kernel's float32 output as the
  // eager op wrote it (the same kernel reads the same values in the same order).
  if (l.x)
    op("rmsnorm (settled)", [=, this] { cuda::rmsnorm(l.x, l.T, l.d, l.w, l.eps, l.out, stream_); }, l.x, l.T, l.d,
       l.w, l.eps, l.out);
}

void CudaKernelsImpl::rmsnorm(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out) {
  if (step_->rmsnorm(x, T, d, w, eps, out)) return;
  // A lazy norm whose output this one writes over is dropped (nothing read it in float32).
  const size_t n = static_cast<size_t>(T * d);
  if (lazy_norm_.x && lazy_norm_.out == out && static_cast<size_t>(lazy_norm_.T * lazy_norm_.d) == n &&
      !overlap(x, n, out, n)) {
    lazy_norm_ = {};
    ++lazy_counts_.norms_unread;
  }
  rmsnorm_op(x, T, d, w, eps, out, nullptr);
}

void CudaKernelsImpl::residual_rmsnorm(float* h, const float* a, float sa, const float* b, float sb, int64_t T,
                                       int64_t d, const float* w, float eps, float* out) {
  // A prompt's rows: the add in the norm's pass (h read once). A decode step keeps its own
  // fusions (the add into the GEMV before it, or into this norm: cuda_step.h), so it gets the
  // two ops; so do buffers that overlap other than exactly (the warp kernel's rows would race).
  cuda::NormResidual res{h, a, sa, b, sb};
  const size_t n = static_cast<size_t>(T * d);
  const auto apart_or_same = [n](const float* p, const float* q) { return p == q || p + n <= q || q + n <= p; };
  if (step_->recording() || T == 0 || !cuda::rmsnorm_takes_residual(T, d, w, out, res) || !apart_or_same(out, h) ||
      !apart_or_same(out, a) || !apart_or_same(h, a) || (b && (!apart_or_same(out, b) || !apart_or_same(h, b)))) {
    Kernels::residual_rmsnorm(h, a, sa, b, sb, T, d, w, eps, out);
    return;
  }
  // GEMM outputs whose rows are still to be scaled: taken in the add. A lazy norm whose output
  // this one writes over (the previous norm's, which only fp16 matmuls read): dropped.
  unsigned takes = 0;
  for (int i = 0; i < kRowSlots; ++i) {
    const LazyRows& r = lazy_rows_[i];
    if (r.y && r.T == T && r.N == d && (r.y == a || r.y == b) && !overlap(r.y, n, h, n) && !overlap(r.y, n, out, n))
      takes |= kLazyRows << i;
  }
  const LazyNorm& l = lazy_norm_;
  if (l.x && l.out == out && static_cast<size_t>(l.T * l.d) == n && out != h && out != a && out != b) {
    lazy_norm_ = {};
    ++lazy_counts_.norms_unread;
  }
  settle(takes);
  for (int i = 0; i < kRowSlots; ++i) {
    if (!(takes & (kLazyRows << i))) continue;
    LazyRows& r = lazy_rows_[i];
    (r.y == a ? res.a_rows : res.b_rows) = r.rows;
    r = {};
    ++lazy_counts_.rows_taken;
  }
  rmsnorm_op(h, T, d, w, eps, out, &res);
}

void CudaKernelsImpl::rmsnorm_op(const float* x, int64_t T, int64_t d, const float* w, float eps, float* out,
                                 const cuda::NormResidual* res) {
  uint32_t* mx = output_max_slot();
  // A prompt's norm feeds fp16 matmuls (in_proj and q/k/v, gate and up): it writes their fp16
  // input too, as matmul_f16 would have converted it, and they take it as ready.
  uint16_t* x16 = nullptr;
  if (mx && split_ && f16_rows_ > 0 && T >= f16_rows_ && T > gemv_rows_) {
    x16 = bf16_scratch(static_cast<size_t>(T * d));
    if (!cuda::rmsnorm_takes_f16(x, T, d, w, out, x16)) x16 = nullptr;
  }
  // Lazy: only the fp16 copy written; the float32 output when an op asks for it (settle).
  const bool lazy = x16 && lazy_on_;
  float* o = lazy ? nullptr : out;
  const cuda::NormResidual r = res ? *res : cuda::NormResidual{};
  const bool with_res = res != nullptr;
  op(with_res ? "residual_rmsnorm" : "rmsnorm", [=, this] {
    zero_max_slot(mx);
    cuda::rmsnorm(x, T, d, w, eps, o, stream_, mx, x16, with_res ? &r : nullptr);
  }, x, T, d, w, eps, o, r.a_rows, r.b_rows);
  if (x16) {
    x16_last_ = X16Key{out, d, T, d};
    x16_seq_ = op_seq_;
    if (lazy) lazy_norm_ = LazyNorm{x, T, d, w, eps, out};
    return;
  }
  took_output_max(mx, out, static_cast<size_t>(T * d));
}

void CudaKernelsImpl::silu_mul(const float* gate, const float* up, float gs, size_t n, float* out) {
  if (step_->silu_mul(gate, up, gs, n, out)) return;
  const KeepLazy keep = keep_apart({{gate, n}, {up, n}, {out, n}});
  uint32_t* mx = output_max_slot();
  op("silu_mul", [=, this] {
    zero_max_slot(mx);
    cuda::silu_mul(gate, up, gs, n, out, stream_, mx);
  }, gate, up, gs, n, out);
  took_output_max(mx, out, n);
}

void CudaKernelsImpl::gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d) {
  if (step_->gate_silu(y, z, ldz, T, d)) return;
  const KeepLazy keep = keep_apart({{y, static_cast<size_t>(T * d)}, {z, static_cast<size_t>(T * ldz)}});
  uint32_t* mx = output_max_slot();
  op("gate_silu", [=, this] {
    zero_max_slot(mx);
    cuda::gate_silu(y, z, ldz, T, d, stream_, mx);
  }, y, z, ldz, T, d);
  took_output_max(mx, y, static_cast<size_t>(T * d));
}

void CudaKernelsImpl::silu_mul_matmul(float* gate, const float* up, float gs, int64_t T, const WeightView& W,
                                      const float* bias, float* y) {
  if (!rows_matmul(cuda::RowsOp::SiluMul, gate, W.cols, up, W.cols, gs, T, W, bias, y))
    Kernels::silu_mul_matmul(gate, up, gs, T, W, bias, y);
}

void CudaKernelsImpl::gate_silu_matmul(float* x, const float* z, int64_t ldz, int64_t T, const WeightView& W,
                                       const float* bias, float* y) {
  if (!rows_matmul(cuda::RowsOp::GateSilu, x, W.cols, z, ldz, 0.0f, T, W, bias, y))
    Kernels::gate_silu_matmul(x, z, ldz, T, W, bias, y);
}

bool CudaKernelsImpl::rows_matmul(cuda::RowsOp rop, const float* a, int64_t lda, const float* b, int64_t ldb,
                                  float gs, int64_t T, const WeightView& W, const float* bias, float* y) {
  const int64_t K = W.cols;
  if (!lazy_on_ || T <= 0 || !takes_f16(W, T) || !cuda::rows_to_f16_fits(rop, a, lda, b, ldb, K)) return false;
  rows_gemm("matmul f16 (rows)",
            {{a, static_cast<size_t>(T * lda)}, {b, b ? static_cast<size_t>(T * ldb) : 0},
             {y, static_cast<size_t>(T * W.rows)}},
            T, W, bias, y, nullptr, [=, this](uint16_t* x16, float* rows) {
              cuda::rows_to_f16(rop, a, lda, b, ldb, gs, T, K, x16, rows, stream_);
            });
  return true;
}

template <class MakeRows>
void CudaKernelsImpl::rows_gemm(const char* name, Ranges ranges, int64_t T, const WeightView& W, const float* bias,
                                float* y, uint16_t* x16, const MakeRows& make) {
  const int64_t N = W.rows, K = W.cols;
  // What is lazy and apart from this op's ranges stays so; a slot for y's rows (the older of two
  // taken ones settles).
  unsigned keep = lazy_apart(ranges);
  int slot = 0;
  while (slot < kRowSlots && (keep & (kLazyRows << slot))) ++slot;
  if (slot == kRowSlots) {
    slot = row_slot_next_;
    keep &= ~(kLazyRows << slot);
  }
  settle(keep);
  const WeightView w = W;
  const F16Weights f = f16_weights(w, bias, nullptr);
  if (!x16) x16 = bf16_scratch(static_cast<size_t>(T * K));
  float* rows = grown(row_scales_[slot], row_scales_cap_[slot], static_cast<size_t>(T), "row scales");
  const KeepLazy guard(this, lazy_kinds());
  op(name, [=, this] {
    fill(f, w);
    make(x16, rows);
    cuda::gemm_f16_rows(gemm_run(), f.w16, N, K, f.shift, x16, T, y, stream_);
    // With a bias the rows are scaled now (the bias is not theirs to scale).
    if (bias) cuda::scale_rows(y, T, N, rows, bias, stream_);
  }, w.data, N, K, T, x16, rows, bias, y);
  if (!bias) {
    lazy_rows_[slot] = LazyRows{y, T, N, rows, pf_ == PrefillBranch::Side};
    row_slot_next_ = (slot + 1) % kRowSlots;
  }
  ++lazy_counts_.rows_matmuls;
  x16_last_ = X16Key{};  // x16 holds rows with their own scales: no other matmul takes it
}

void CudaKernelsImpl::mlp(const float* x, int64_t ldx, int64_t T, const Mlp& m, float* gate_room, float* up_room,
                          float* y) {
  if (!mlp_as_f16(x, ldx, T, m, gate_room, up_room, y)) Kernels::mlp(x, ldx, T, m, gate_room, up_room, y);
}

// A prompt's MLP: gate and up from the norm's fp16 copy of x, each GEMM writing fp16 (half the
// bytes of the largest outputs of a layer, written and read once), their product made as the
// down projection's row-scaled fp16 input by one pass, and the down GEMM's rows left lazy as
// silu_mul_matmul leaves them. gate_room holds gate in fp16, then the product; up_room up.
// The outputs' scale 2^-(shift_x + shift_w - e) comes from a bound (gemm_f16_out16), not from
// their values, so nothing waits for a max.
bool CudaKernelsImpl::mlp_as_f16(const float* x, int64_t ldx, int64_t T, const Mlp& m, float* gate_room,
                              float* up_room, float* y) {
  const WeightView &G = *m.gate, &U = *m.up, &D = *m.down;
  const int64_t K = G.cols, I = G.rows;
  if (!mlp16_on_ || !lazy_on_ || T <= 0 || m.gate_bias || m.up_bias || U.cols != K || U.rows != I || D.cols != I ||
      !takes_f16(G, T) || !takes_f16(U, T) || !takes_f16(D, T))
    return false;
  // x's fp16 copy and its max (in the max slot), as the norm before left them.
  if (!(x16_last_ == X16Key{x, ldx, T, K} && x16_seq_ == op_seq_)) return false;
  auto* g16 = reinterpret_cast<uint16_t*>(gate_room);
  auto* u16 = reinterpret_cast<uint16_t*>(up_room);
  uint16_t* p16 = g16 + T * I;  // the product: gate_room's second half
  if (!cuda::silu_mul_f16_rows_fits(g16, u16, I) || reinterpret_cast<uintptr_t>(p16) % 8 != 0) return false;
  const int eg = weights_->l1_exponent(G, stream_), eu = weights_->l1_exponent(U, stream_);
  if (std::abs(eg) > 60 || std::abs(eu) > 60) return false;
  const F16Weights fg = f16_weights(G, nullptr, nullptr), fu = f16_weights(U, nullptr, nullptr);
  const WeightView gw = G, uw = U;
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(f16_consts());
  const uint16_t* x16 = bf16_scratch(static_cast<size_t>(T * K));  // holds it (the norm made it this size)
  const float gs = m.gate_scale;
  const size_t room = static_cast<size_t>(T * I);
  rows_gemm("mlp f16", {{gate_room, room}, {up_room, room}, {y, static_cast<size_t>(T * D.rows)}}, T, D, m.down_bias,
            y, p16, [=, this](uint16_t* x16_down, float* rows) {
              fill(fg, gw);
              fill(fu, uw);
              cuda::gemm_f16_out16(gemm_run(), fg.w16, I, K, fg.shift + eg, x16, T, g16, stream_);
              cuda::gemm_f16_out16(gemm_run(), fu.w16, I, K, fu.shift + eu, x16, T, u16, stream_);
              cuda::silu_mul_f16_rows(g16, u16, T, I, bits, eg, eu, gs, x16_down, rows, stream_);
            });
  ++lazy_counts_.mlps_f16;
  return true;
}

}  // namespace fh1::cuda
