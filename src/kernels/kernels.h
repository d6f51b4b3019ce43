// The kernel interface: every piece of arithmetic the model does, behind one abstract class, so
// that SIMD, threaded and GPU backends replace the arithmetic without touching model code.
//
// Conventions: float arrays live in the backend's memory (host memory for the CPU backend, device
// memory for a GPU backend) and are allocated through alloc(); integer arrays (token ids,
// positions) are host memory. Matrices are row-major; `ld` is a row stride in elements, so a
// kernel can read one slice of a wider projection without a copy. All reductions are float32.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "util/dtype.h"
#include "quant/kv_q8.h"

namespace fh1 {

struct TensorView;

// A weight matrix as stored ([rows, cols], row-major), in backend memory.
struct WeightView {
  DType dtype = DType::F32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Parameters of one Mamba-2 mixer's scan, in backend memory where they are arrays.
struct SsmParams {
  int heads = 0;      // Hm
  int head_dim = 0;   // P
  int groups = 0;     // G
  int d_state = 0;    // N
  int chunk_size = 0; // cs
  const float* A = nullptr;        // [Hm], -exp(A_log)
  const float* D = nullptr;        // [Hm]
  const float* dt_bias = nullptr;  // [Hm]
  float dt_min = 0.0f, dt_max = 0.0f;  // time_step_limit
};

// The time step of head h from its raw in_proj column: softplus(raw + dt_bias) (torch's softplus,
// threshold 20), clamped to time_step_limit. One definition for every CPU kernel.
inline float ssm_time_step(const SsmParams& p, int h, float raw) {
  const float x = raw + p.dt_bias[h];
  const float dt = x > 20.0f ? x : std::log1p(std::exp(x));
  return std::clamp(dt, p.dt_min, p.dt_max);
}

// The softmax of one row of n logits at inverse temperature inv_t, and a draw from it in index
// order: sum = sum_i exp(x_i inv_t - top) in double, in index order (top = max_i x_i inv_t); with
// u in [0, 1), id = the first i at which u * sum, less the terms 0..i in order, drops below 0
// (the last index when rounding leaves none), else id = -1. One definition: the sampler draws
// with it, the default Kernels::softmax_rows computes it, and a GPU backend is tested against it.
struct SoftmaxDraw {
  double sum = 0.0;
  int32_t id = -1;
};
inline SoftmaxDraw softmax_draw(const float* x, int64_t n, double inv_t, double u) {
  SoftmaxDraw d;
  if (n <= 0) return d;
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  const double top = static_cast<double>(mx) * inv_t;
  for (int64_t i = 0; i < n; ++i) d.sum += std::exp(static_cast<double>(x[i]) * inv_t - top);
  if (!(u >= 0.0)) return d;
  double r = u * d.sum;
  for (int64_t i = 0; i < n; ++i) {
    r -= std::exp(static_cast<double>(x[i]) * inv_t - top);
    if (r < 0.0) {
      d.id = static_cast<int32_t>(i);
      return d;
    }
  }
  d.id = static_cast<int32_t>(n - 1);
  return d;
}

class Kernels {
 public:
  virtual ~Kernels() = default;
  virtual std::string name() const = 0;

  // ---- memory ----
  virtual float* alloc(size_t n) = 0;  // n floats, zeroed
  // n floats that the caller writes before it reads them: a backend may skip the zeroing (the
  // CUDA backend's memset was 14 API calls of host time in every decode step).
  virtual float* alloc_uninit(size_t n) { return alloc(n); }
  virtual void free(float* p) = 0;
  virtual void to_host(float* host_dst, const float* src, size_t n) = 0;
  virtual void from_host(float* dst, const float* host_src, size_t n) = 0;
  virtual void copy(float* dst, const float* src, size_t n) = 0;
  virtual void zero(float* dst, size_t n) = 0;
  // A stored tensor as the backend reads it: a view of the mapped file, or an uploaded copy.
  virtual WeightView bind_weight(const TensorView& t) = 0;

  // ---- row-wise dense ops over T rows ----
  // y[t, :] = x[t, :] (row stride ldx) @ W^T + bias; W is [N, K]; y is [T, N] contiguous.
  virtual void matmul(const float* x, int64_t ldx, int64_t T, const WeightView& W, const float* bias, float* y) = 0;
  // One input into several matrices, scaled first (a mixer's input multiplier):
  //   to[i].y[t, :] = ((x[t, :] * s) @ to[i].W^T + to[i].bias) * to[i].col_scale
  // for i < n, all W with K columns; col_scale (optional, W.rows values) per output column, a
  // constant of the model (Mamba-2's mup vector): a backend may fold it into its copy of W.
  // x_scaled: room for T contiguous rows of K floats, where a backend may put x * s (what it
  // holds afterwards is unspecified: nothing should read it). The default scales into it once and
  // multiplies (then mul_columns); a backend that rounds x for its GEMMs anyway scales the
  // products instead.
  struct Projection {
    const WeightView* W;
    const float* bias;
    float* y;
    const float* col_scale = nullptr;
  };
  virtual void matmul_scaled(const float* x, int64_t ldx, int64_t T, float s, float* x_scaled,
                             const Projection* to, size_t n) {
    if (n == 0) return;
    const int64_t K = to[0].W->cols;
    if (ldx == K) {
      scale(x, static_cast<size_t>(T * K), s, x_scaled);
    } else {
      for (int64_t t = 0; t < T; ++t) scale(x + t * ldx, static_cast<size_t>(K), s, x_scaled + t * K);
    }
    for (size_t i = 0; i < n; ++i) {
      matmul(x_scaled, K, T, *to[i].W, to[i].bias, to[i].y);
      if (to[i].col_scale) mul_columns(to[i].y, T, to[i].W->rows, to[i].col_scale);
    }
  }
  // out[t, :] = float(table[ids[t], :]) * scale
  virtual void embed(const int32_t* ids, int64_t T, const WeightView& table, float scale, float* out) = 0;
  // out[t] = weight * x[t] / sqrt(mean(x[t]^2) + eps), rows of width d
  virtual void rmsnorm(const float* x, int64_t T, int64_t d, const float* weight, float eps, float* out) = 0;
  // out = x * s (n elements)
  virtual void scale(const float* x, size_t n, float s, float* out) = 0;
  // x[t, j] *= v[j] for rows of width d
  virtual void mul_columns(float* x, int64_t T, int64_t d, const float* v) = 0;
  // h += a * sa + b * sb   (the two parallel mixers joining the residual stream)
  virtual void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n) = 0;
  // h += a * s
  virtual void residual_add(float* h, const float* a, float s, size_t n) = 0;
  // h += a * sa (+ b * sb when b), then out = rmsnorm(h) (rows of width d): a residual add and the
  // norm that reads its result, which a backend may run as one pass over h. The default is the
  // two ops one after the other (and a fused backend computes the same values).
  virtual void residual_rmsnorm(float* h, const float* a, float sa, const float* b, float sb, int64_t T, int64_t d,
                                const float* weight, float eps, float* out) {
    const auto n = static_cast<size_t>(T * d);
    if (b) residual_add2(h, a, sa, b, sb, n);
    else residual_add(h, a, sa, n);
    rmsnorm(h, T, d, weight, eps, out);
  }
  // out = up * silu(gate * gate_scale)
  virtual void silu_mul(const float* gate, const float* up, float gate_scale, size_t n, float* out) = 0;
  // y[t, :] *= silu(z[t, :]), z with row stride ldz, rows of width d
  virtual void gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d) = 0;
  // An element-wise product and the matmul that reads it, as one op (a backend may form the
  // product's rows as its GEMM's input without writing them out in float32), K = W.cols:
  //   silu_mul_matmul:  y = (up * silu(gate * gate_scale)) @ W^T + bias, gate and up [T, K];
  //   gate_silu_matmul: y = (x * silu(z)) @ W^T + bias, x [T, K], z with row stride ldz.
  // gate (x) is room the backend may use: what it holds afterwards is unspecified. The defaults
  // write the product into it, then multiply.
  virtual void silu_mul_matmul(float* gate, const float* up, float gate_scale, int64_t T, const WeightView& W,
                               const float* bias, float* y) {
    silu_mul(gate, up, gate_scale, static_cast<size_t>(T * W.cols), gate);
    matmul(gate, W.cols, T, W, bias, y);
  }
  virtual void gate_silu_matmul(float* x, const float* z, int64_t ldz, int64_t T, const WeightView& W,
                                const float* bias, float* y) {
    gate_silu(x, z, ldz, T, W.cols);
    matmul(x, W.cols, T, W, bias, y);
  }
  // The MLP as one op: y = silu_mul_matmul of gate = x @ gate^T + gate_bias and up = x @ up^T +
  // up_bias (x rows of stride ldx). Nothing but the op reads gate and up, so a backend may keep
  // them in a narrower type than float32. gate_room and up_room: room for T rows of gate->rows
  // floats each, what they hold afterwards unspecified. The default: the three ops above.
  struct Mlp {
    const WeightView* gate;
    const float* gate_bias;
    const WeightView* up;
    const float* up_bias;
    float gate_scale;
    const WeightView* down;
    const float* down_bias;
  };
  virtual void mlp(const float* x, int64_t ldx, int64_t T, const Mlp& m, float* gate_room, float* up_room, float* y) {
    matmul(x, ldx, T, *m.gate, m.gate_bias, gate_room);
    matmul(x, ldx, T, *m.up, m.up_bias, up_room);
    silu_mul_matmul(gate_room, up_room, m.gate_scale, T, *m.down, m.down_bias, y);
  }
  // Mamba's gated RMSNorm over `groups` groups of each row:
  //   norm_before_gate: y = norm(y) * silu(z);  else: y = norm(y * silu(z))
  virtual void gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups,
                             const float* weight, float eps, bool norm_before_gate) = 0;

  // ---- attention ----
  // Rotate-half RoPE in place on `heads` heads of hd dims per row (row stride ld); row t is at
  // position positions[t]; inv_freq has hd/2 entries (host memory).
  virtual void rope(float* x, int64_t ld, int64_t T, int heads, int hd, const int64_t* positions,
                    const float* inv_freq) = 0;
  // Causal attention of one sequence: T queries at positions n_past .. n_past+T-1 over the cache
  // rows 0 .. n_past+T-1. q is [T, H*hd] (row stride ldq); caches are [rows, Hkv*hd]; out [T, H*hd].
  virtual void attention(const float* q, int64_t ldq, int64_t T, const float* k_cache, const float* v_cache,
                         int64_t n_past, int H, int Hkv, int hd, float scale, float* out) = 0;

  // ---- Mamba-2 ----
  // Causal depthwise conv of T new rows of C channels (row stride ld_in), continuing from
  // conv_state [K-1, C] (oldest row first), which is updated; then SiLU. w is [C, K]; out [T, C].
  virtual void conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w,
                           const float* bias, float* conv_state, float* out) = 0;
  // SSM over T tokens of one sequence, continuing from state [Hm, P, N] (updated). x [T, Hm*P],
  // B and C [T, G*N], all with row stride ld_xbc (they are slices of the conv output); dt_raw
  // [T, Hm] with row stride ld_dt (before dt_bias and softplus). y [T, Hm*P] includes the D skip.
  // T > 1 runs the chunked SSD algorithm; T == 1 the recurrence. Both compute the same thing.
  virtual void ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw,
                        int64_t ld_dt, int64_t T, const SsmParams& p, float* state, float* y) = 0;

  // ---- optional (defaults suit every CPU backend) ----
  // The prompt tokens one forward call should take where the caller has no reason to choose:
  // enough rows to keep the backend's matrix units busy, few enough to bound the activations.
  virtual int64_t preferred_prompt_chunk() const { return 512; }
  // The element type of the KV caches that kv_write* write and attention* read: F32 (default),
  // BF16, or I8 (8-bit values with a float32 scale per block, quant/kv_q8.h). The caches are
  // still passed as float* (memory from alloc()); a cache of R rows of `width` values takes
  // kv_cache_floats(R, width) floats, and its first r rows are its first kv_cache_floats(r, width)
  // floats. Nothing else reads or writes them except copy(), by whole floats.
  virtual DType kv_cache_dtype() const { return DType::F32; }
  // Chooses that type, before any SequenceState of this backend exists; false when the backend
  // cannot keep it (every backend keeps F32; the default CPU backend and CUDA also BF16 and I8).
  virtual bool set_kv_cache_dtype(DType t) { return t == DType::F32; }
  size_t kv_cache_floats(int64_t rows, int64_t width) const {
    const auto values = static_cast<size_t>(rows * width);
    switch (kv_cache_dtype()) {
      case DType::BF16: return (values + 1) / 2;
      case DType::I8: return static_cast<size_t>(rows * kv_q8_row_bytes(width) / 4);
      default: return values;
    }
  }
  // cache[row + i, :] = src[i, :] for i < rows, rows of `width` floats: appends K or V rows.
  virtual void kv_write(float* cache, int64_t row, const float* src, int64_t rows, int64_t width) {
    copy(cache + row * width, src, static_cast<size_t>(rows * width));
  }
  // A decode step of n sequences, one token each: row i of the inputs and outputs belongs to
  // sequence i, whose state arrays are conv_states[i], ssm_states[i], k_caches[i], v_caches[i]
  // (host arrays of backend pointers), with n_past[i] tokens before this one. The defaults run
  // the per-sequence ops above row by row; a GPU backend does all rows in one launch.
  virtual void conv1d_silu_rows(const float* in, int64_t ld_in, int64_t n, int64_t C, int K, const float* w,
                                const float* bias, float* const* conv_states, float* out) {
    for (int64_t i = 0; i < n; ++i) conv1d_silu(in + i * ld_in, ld_in, 1, C, K, w, bias, conv_states[i], out + i * C);
  }
  virtual void ssm_scan_rows(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw,
                             int64_t ld_dt, int64_t n, const SsmParams& p, float* const* ssm_states, float* y) {
    const int64_t ds = static_cast<int64_t>(p.heads) * p.head_dim;
    for (int64_t i = 0; i < n; ++i)
      ssm_scan(x + i * ld_xbc, B + i * ld_xbc, C + i * ld_xbc, ld_xbc, dt_raw + i * ld_dt, ld_dt, 1, p, ssm_states[i],
               y + i * ds);
  }
  // caches[i][n_past[i], :] = src[i, :] (width floats).
  virtual void kv_write_rows(float* const* caches, const int64_t* n_past, const float* src, int64_t n, int64_t width) {
    for (int64_t i = 0; i < n; ++i) kv_write(caches[i], n_past[i], src + i * width, 1, width);
  }
  // out[i] = attention of query row i (row stride ldq) over rows 0 .. n_past[i] of sequence i's caches.
  virtual void attention_rows(const float* q, int64_t ldq, int64_t n, const float* const* k_caches,
                              const float* const* v_caches, const int64_t* n_past, int H, int Hkv, int hd, float scale,
                              float* out) {
    for (int64_t i = 0; i < n; ++i)
      attention(q + i * ldq, ldq, 1, k_caches[i], v_caches[i], n_past[i], H, Hkv, hd, scale,
                out + i * static_cast<int64_t>(H) * hd);
  }

  // The model brackets a forward call in which every sequence appends exactly one token (a decode
  // step) with these two, end_decode_step() before the logits are read back. A backend may record
  // the ops in between and replay them as one unit (the CUDA backend: a CUDA graph per batch
  // shape); it must then take host arrays (ids, positions, inverse frequencies) by value when the
  // op is called. Any other call (to_host, synchronize, ...) in between ends the recording early.
  virtual void begin_decode_step() {}
  virtual void end_decode_step() {}
  // Recording ahead (a backend that records decode steps): after hold_next_decode_step() returns
  // a ticket (not 0), the step recorded next is held at end_decode_step() instead of run, its
  // embed() given placeholder ids; launch_held_step(ticket, ...) gives it its ids (as many as
  // embed() had) and runs it, and returns false when that step is no longer held (a later
  // recording, a scratch buffer freed or a setting changed dropped it: the caller runs the step
  // itself). drop_held_step(ticket) forgets it. The model records step n+1 while the device still
  // runs step n. Defaults: nothing is ever held.
  virtual uint64_t hold_next_decode_step() { return 0; }
  virtual bool launch_held_step(uint64_t ticket, const int32_t* ids, int64_t T) {
    (void)ticket;
    (void)ids;
    (void)T;
    return false;
  }
  virtual void drop_held_step(uint64_t ticket) { (void)ticket; }

  // The k largest values of each of `rows` rows of n floats at x (backend memory) into host arrays
  // ids and values (rows x k, row-major), best first, the lower index first on ties; 1 <= k <= n.
  // What greedy decoding and top-k sampling need. Default: the rows copied to the host and
  // partially sorted there; a GPU backend selects them where they are.
  virtual void top_k_rows(const float* x, int64_t rows, int64_t n, int k, int32_t* ids, float* values) {
    std::vector<float> host(static_cast<size_t>(rows * n));
    to_host(host.data(), x, host.size());
    std::vector<int32_t> idx(static_cast<size_t>(n));
    for (int64_t r = 0; r < rows; ++r) {
      const float* v = host.data() + r * n;
      for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = static_cast<int32_t>(i);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [v](int32_t a, int32_t b) {
        return v[a] > v[b] || (v[a] == v[b] && a < b);
      });
      for (int j = 0; j < k; ++j) {
        ids[r * k + j] = idx[static_cast<size_t>(j)];
        values[r * k + j] = v[idx[static_cast<size_t>(j)]];
      }
    }
  }

  // Penalties where the logits are: x[index[i]] -= amount[i] for i < count (host arrays; the
  // indices distinct), each value first read into original[i] (a host array). Default: one value
  // at a time through to_host / from_host; a GPU backend does them all in one launch.
  virtual void lower_entries(float* x, int64_t count, const int64_t* index, const float* amount, float* original) {
    for (int64_t i = 0; i < count; ++i) {
      float v = 0.0f;
      to_host(&v, x + index[i], 1);
      original[i] = v;
      v -= amount[i];
      from_host(x + index[i], &v, 1);
    }
  }

  // softmax_draw() of each of `rows` rows of n floats at x (backend memory), row r at inverse
  // temperature inv_t[r] (host arrays; 0: the row is skipped, sums[r] = 0) with uniform u[r]
  // (< 0: no draw, drawn[r] = -1): sums[r] and drawn[r] into host arrays. What sampling without
  // top-k needs of all the logits. Default: the rows copied to the host; a GPU backend computes
  // them where they are (the same terms, summed in another order).
  virtual void softmax_rows(const float* x, int64_t rows, int64_t n, const double* inv_t, const double* u,
                            double* sums, int32_t* drawn) {
    std::vector<float> host(static_cast<size_t>(n));
    for (int64_t r = 0; r < rows; ++r) {
      sums[r] = 0.0;
      drawn[r] = -1;
      if (!(inv_t[r] > 0.0)) continue;
      to_host(host.data(), x + r * n, host.size());
      const SoftmaxDraw d = softmax_draw(host.data(), n, inv_t[r], u[r]);
      sums[r] = d.sum;
      drawn[r] = d.id;
    }
  }

  // Hints for independent work in a forward call of `rows` rows: the ops between
  // branch_begin() and branch_end() (the branch) and those between branch_end() and
  // branch_join() share no data that either writes; both may read what was written before
  // branch_begin(). After branch_join() everything may be used again. A backend may run the
  // branch beside the ops after it (the CUDA backend: a second stream, in a decode step's graph
  // or, for a prompt, as the ops are launched); ignoring the hints (the default) runs the same
  // ops in order. Branches do not nest.
  virtual void branch_begin(int64_t rows) { (void)rows; }
  virtual void branch_end() {}
  virtual void branch_join() {}
};

// RAII for a backend allocation.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Kernels& k, size_t n) : k_(&k), p_(n ? k.alloc(n) : nullptr), n_(n) {}
  struct Uninit {};  // the caller writes every value before reading it (Kernels::alloc_uninit)
  Buffer(Kernels& k, size_t n, Uninit) : k_(&k), p_(n ? k.alloc_uninit(n) : nullptr), n_(n) {}
  ~Buffer() { reset(); }
  Buffer(Buffer&& o) noexcept : k_(o.k_), p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) { reset(); k_ = o.k_; p_ = o.p_; n_ = o.n_; o.p_ = nullptr; o.n_ = 0; }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  float* data() { return p_; }
  const float* data() const { return p_; }
  size_t size() const { return n_; }
  Kernels* kernels() const { return k_; }
  void reset() { if (p_) k_->free(p_); p_ = nullptr; n_ = 0; }

 private:
  Kernels* k_ = nullptr;
  float* p_ = nullptr;
  size_t n_ = 0;
};

class ThreadPool;
// The CPU backend: SIMD kernels (Highway, dispatched at run time to the best instruction set of
// the machine), threaded over the given pool.
std::unique_ptr<Kernels> make_cpu_kernels(ThreadPool& pool);
// The reference CPU backend: portable C++ loops, threaded over the given pool; slower, kept as the
// implementation every faster kernel is tested against.
std::unique_ptr<Kernels> make_reference_kernels(ThreadPool& pool);

}  // namespace fh1
