// The fast CPU backend: Highway SIMD kernels (simd_*.cpp, dispatched at run time to the best
// instruction set of the machine) threaded over one ThreadPool. It computes what the reference
// backend computes, in float32, in a different order of operations; tests/kernels checks every op
// against the reference on random shapes. Ops that cost nothing measurable (embed, rope, memory)
// are inherited from the reference.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/reference_kernels.h"
#include "kernels/cpu/simd_kernels.h"
#include "quant/blocks.h"
#include "util/error.h"
#include "util/half.h"
#include "util/parallel_dynamic.h"
#include "util/thread_pool.h"

namespace fh1 {
namespace {

// Per-thread scratch that only grows.
float* scratch(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}
thread_local std::vector<float> tl_weights, tl_a, tl_b, tl_c, tl_d, tl_pack, tl_conv, tl_kw, tl_vw;

// Copies rows of n floats (source row stride ld) into a contiguous [rows, n] block: the scan's
// operands are narrow slices of wide rows, and the GEMMs run much faster on packed copies (a
// stride of several KB defeats the hardware prefetchers).
float* pack_rows(const float* src, int64_t ld, int64_t rows, int64_t n, float* dst) {
  for (int64_t r = 0; r < rows; ++r) std::copy(src + r * ld, src + r * ld + n, dst + r * n);
  return dst;
}

class FastKernels final : public ReferenceKernels {
 public:
  explicit FastKernels(ThreadPool& pool) : ReferenceKernels(pool) {}
  std::string name() const override { return std::string("cpu (") + simd::target_name() + ")"; }

  void matmul(const float* x, int64_t ldx, int64_t T, const WeightView& W, const float* bias, float* y) override {
    const int64_t N = W.rows, K = W.cols;
    const int64_t threads = pool_.size();
    if (T < 4 && is_quantized_dtype(W.dtype)) {  // decode over quantized weights: int8 dot products
      quant_gemv(x, ldx, T, W, bias, y);
      return;
    }
    if (T < 4) {  // decode: a GEMV streaming the weights once, rows split evenly over threads
      const int64_t groups = (N + 15) / 16;
      pool_.parallel_for(static_cast<size_t>(groups), [&](size_t g0, size_t g1) {
        simd::matmul_block(x, ldx, 0, T, W, static_cast<int64_t>(g0) * 16, std::min<int64_t>(N, g1 * 16), bias, y,
                           N, nullptr);
      });
      return;
    }
    // Prefill: blocks of weight rows small enough to stay in L2 once packed as f32 panels, each
    // packed once and used by all the tokens of its item.
    int64_t rows = std::max<int64_t>(48, (kBlockBytes / (4 * std::max<int64_t>(K, 1))) / 48 * 48);
    rows = std::min(rows, (N + threads - 1) / threads);
    rows = std::max<int64_t>(rows, 1);
    const int64_t blocks = (N + rows - 1) / rows;
    const int64_t token_parts = blocks >= 2 * threads ? 1 : std::min<int64_t>((2 * threads + blocks - 1) / blocks, (T + 7) / 8);
    const int64_t part = (T + token_parts - 1) / token_parts;
    parallel_dynamic(pool_, static_cast<size_t>(blocks * token_parts), [&](size_t item) {
      const int64_t b = static_cast<int64_t>(item) / token_parts, tp = static_cast<int64_t>(item) % token_parts;
      const int64_t r0 = b * rows, r1 = std::min(N, r0 + rows);
      const int64_t t0 = tp * part, t1 = std::min(T, t0 + part);
      if (t0 >= t1) return;
      float* s = scratch(tl_weights, static_cast<size_t>((r1 - r0 + 64) * K));
      simd::matmul_block(x, ldx, t0, t1, W, r0, r1, bias, y, N, s);
    });
  }

  // The activations quantized once (blocks of 32 int8 and a scale), then the rows of W split
  // evenly over the threads.
  void quant_gemv(const float* x, int64_t ldx, int64_t T, const WeightView& W, const float* bias, float* y) {
    const int64_t N = W.rows, K = W.cols, nb = K / 32;
    if (K % 32 != 0) throw Error("quantized matmul: " + std::to_string(K) + " columns is not a multiple of 32");
    act_q_.resize(static_cast<size_t>(T * K));
    act_d_.resize(static_cast<size_t>(2 * T * nb));
    for (int64_t t = 0; t < T; ++t)
      quant::quantize_activations(x + t * ldx, K, act_q_.data() + t * K, act_d_.data() + t * nb,
                                  act_d_.data() + (T + t) * nb);
    const int64_t groups = (N + 15) / 16;
    pool_.parallel_for(static_cast<size_t>(groups), [&](size_t g0, size_t g1) {
      simd::quant_gemv(act_q_.data(), act_d_.data(), act_d_.data() + T * nb, T, W, static_cast<int64_t>(g0) * 16,
                       std::min<int64_t>(N, static_cast<int64_t>(g1) * 16), bias, y, N);
    });
  }

  void rmsnorm(const float* x, int64_t T, int64_t d, const float* weight, float eps, float* out) override {
    rows(T, d, [&](int64_t t) { simd::rmsnorm_row(x + t * d, d, weight, eps, out + t * d); });
  }

  void gated_rmsnorm(float* y, const float* z, int64_t ldz, int64_t T, int64_t d, int groups, const float* weight,
                     float eps, bool norm_before_gate) override {
    rows(T, d, [&](int64_t t) {
      simd::gated_rmsnorm_row(y + t * d, z + t * ldz, d, groups, weight, eps, norm_before_gate);
    });
  }

  void gate_silu(float* y, const float* z, int64_t ldz, int64_t T, int64_t d) override {
    rows(T, d, [&](int64_t t) { simd::gate_silu(y + t * d, z + t * ldz, static_cast<size_t>(d)); });
  }

  void mul_columns(float* x, int64_t T, int64_t d, const float* v) override {
    rows(T, d, [&](int64_t t) { simd::mul(x + t * d, v, static_cast<size_t>(d)); });
  }

  void scale(const float* x, size_t n, float s, float* out) override {
    elementwise(n, [&](size_t i, size_t m) { simd::scale(x + i, m, s, out + i); });
  }
  void residual_add2(float* h, const float* a, float sa, const float* b, float sb, size_t n) override {
    elementwise(n, [&](size_t i, size_t m) { simd::residual_add2(h + i, a + i, sa, b + i, sb, m); });
  }
  void residual_add(float* h, const float* a, float s, size_t n) override {
    elementwise(n, [&](size_t i, size_t m) { simd::residual_add(h + i, a + i, s, m); });
  }
  void silu_mul(const float* gate, const float* up, float gate_scale, size_t n, float* out) override {
    elementwise(n, [&](size_t i, size_t m) { simd::silu_mul(gate + i, up + i, gate_scale, m, out + i); });
  }

  void attention(const float* q, int64_t ldq, int64_t T, const float* k_cache, const float* v_cache, int64_t n_past,
                 int H, int Hkv, int hd, float scale, float* out) override;

  // KV caches in float32 (default), bf16 (half the memory and half the bytes a long-context
  // decode step reads; the values are rounded when written and widened exactly when read), or 8
  // bits with block scales (quant/kv_q8.h; values dequantized to float32 when read).
  DType kv_cache_dtype() const override { return kv_dtype_; }
  bool set_kv_cache_dtype(DType t) override {
    if (t != DType::F32 && t != DType::BF16 && t != DType::I8) return false;
    kv_dtype_ = t;
    return true;
  }
  void kv_write(float* cache, int64_t row, const float* src, int64_t rows, int64_t width) override {
    if (kv_dtype_ == DType::I8) {
      const int64_t rb = kv_q8_row_bytes(width);
      auto* dst = reinterpret_cast<uint8_t*>(cache) + row * rb;
      const auto run = [&](size_t r0, size_t r1) {
        for (size_t r = r0; r < r1; ++r) kv_q8_quantize_row(src + r * width, width, dst + r * rb);
      };
      if (rows * width < kParallelMin) run(0, static_cast<size_t>(rows));
      else pool_.parallel_for(static_cast<size_t>(rows), run);
      return;
    }
    if (kv_dtype_ != DType::BF16) return Kernels::kv_write(cache, row, src, rows, width);
    uint16_t* dst = reinterpret_cast<uint16_t*>(cache) + row * width;
    elementwise(static_cast<size_t>(rows * width), [&](size_t i, size_t m) {
      for (size_t j = i; j < i + m; ++j) dst[j] = f32_to_bf16(src[j]);
    });
  }

  void conv1d_silu(const float* in, int64_t ld_in, int64_t T, int64_t C, int K, const float* w, const float* bias,
                   float* conv_state, float* out) override {
    float* wt = scratch(tl_conv, static_cast<size_t>(K * C));  // weights as [K, C]: channels contiguous
    for (int64_t c = 0; c < C; ++c)
      for (int k = 0; k < K; ++k) wt[k * C + c] = w[c * K + k];
    const int64_t groups = (C + 15) / 16;
    const auto run = [&](size_t g0, size_t g1) {
      simd::conv1d_silu_channels(in, ld_in, T, C, K, wt, bias, conv_state, out, static_cast<int64_t>(g0) * 16,
                                 std::min<int64_t>(C, static_cast<int64_t>(g1) * 16));
    };
    if (T * C < kParallelMin) run(0, static_cast<size_t>(groups));
    else pool_.parallel_for(static_cast<size_t>(groups), run);
  }

  void ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw, int64_t ld_dt,
                int64_t T, const SsmParams& p, float* state, float* y) override;

 private:
  static constexpr int64_t kBlockBytes = 384 << 10;  // widened weight rows per prefill item
  static constexpr int64_t kParallelMin = 1 << 14;   // below this many floats, one thread
  DType kv_dtype_ = DType::F32;
  std::vector<int8_t> act_q_;  // quantized activations of quant_gemv
  std::vector<float> act_d_;   // their scales, then scale x sum per block

  template <class Fn>
  void rows(int64_t T, int64_t d, Fn&& fn) {
    if (T * d < kParallelMin) {
      for (int64_t t = 0; t < T; ++t) fn(t);
      return;
    }
    pool_.parallel_for(static_cast<size_t>(T), [&](size_t t0, size_t t1) {
      for (size_t t = t0; t < t1; ++t) fn(static_cast<int64_t>(t));
    });
  }

  template <class Fn>
  void elementwise(size_t n, Fn&& fn) {
    if (n < static_cast<size_t>(kParallelMin)) return fn(0, n);
    const size_t pieces = (n + 1023) / 1024;
    pool_.parallel_for(pieces, [&](size_t p0, size_t p1) { fn(p0 * 1024, std::min(n, p1 * 1024) - p0 * 1024); });
  }

  void ssm_chunk(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt, int64_t L,
                 const float* CB, int h, const SsmParams& p, float* S, float* y, int64_t ldy);
};

// Flash-style attention: blocks of query rows against blocks of keys with an online softmax, so
// scores never take more than one block. Prefill: the rows of an item are up to kBq queries of one
// head. Decode (T == 1): the rows are the query heads sharing one KV head, so each key and value
// row is loaded once for all of them, and the context is split into key ranges handled by
// different threads (all KV heads per range), whose partial results are merged.
namespace {

constexpr int64_t kBq = 64, kBk = 128;

struct AttentionRows {
  const float* q;        // first row
  int64_t q_stride;      // between rows
  int64_t rows;          // <= kBq
  int64_t visible0;      // keys row 0 sees (positions 0 .. visible0 - 1)
  int64_t visible_step;  // row r sees visible0 + r * visible_step keys
};

// K or V of one KV head in a cache of float32 (f), bf16 (h) or 8-bit (q8) values: row j at j * ld values.
struct KvRows {
  const float* f = nullptr;
  const uint16_t* h = nullptr;
  const uint8_t* q8 = nullptr;  // 8-bit rows of `ld` values (row_bytes each), from value `first`
  int64_t ld = 0, row_bytes = 0, first = 0;
  // Rows [kb, kb + nk) as float32: in place, or widened into buf ([nk, hd]); *ld_out their stride.
  const float* rows(int64_t kb, int64_t nk, int hd, std::vector<float>& buf, int64_t* ld_out) const {
    if (f != nullptr) {
      *ld_out = ld;
      return f + kb * ld;
    }
    float* w = scratch(buf, static_cast<size_t>(nk * hd));
    if (q8 != nullptr) {
      for (int64_t j = 0; j < nk; ++j) {  // kv_q8_dequantize's values, in SIMD
        float* out = w + j * hd;
        kv_q8_for_blocks(q8 + (kb + j) * row_bytes, ld, first, hd,
                         [out](const int8_t* q, int64_t count, float d, int64_t at) {
                           simd::widen_q8(q, static_cast<size_t>(count), d, out + at);
                         });
      }
    } else {
      for (int64_t j = 0; j < nk; ++j) simd::widen_bf16(h + (kb + j) * ld, static_cast<size_t>(hd), w + j * hd);
    }
    *ld_out = hd;
    return w;
  }
};

// The cache's K or V of KV head g (hd values at g * hd of each row of ld values).
KvRows kv_rows(const float* cache, DType type, int64_t ld, int g, int hd) {
  KvRows r;
  r.ld = ld;
  if (type == DType::I8) {
    r.q8 = reinterpret_cast<const uint8_t*>(cache);
    r.row_bytes = kv_q8_row_bytes(ld);
    r.first = static_cast<int64_t>(g) * hd;
  } else if (type == DType::BF16) {
    r.h = reinterpret_cast<const uint16_t*>(cache) + static_cast<int64_t>(g) * hd;
  } else {
    r.f = cache + static_cast<int64_t>(g) * hd;
  }
  return r;
}

// Accumulates rows x keys [kb, kb + nk) of one KV head into O (unnormalized), m (running max) and
// l (running sum), which start at 0, -inf, 0. S is scratch of kBq x kBk. With kt (the head's keys
// transposed: key kb + j, dim d at kt[kb + d * ldkt + j]) the scores are a broadcast-form GEMM,
// else dot products of rows.
void attend_keys(const AttentionRows& a, const KvRows& k, const float* kt, int64_t ldkt, const KvRows& v, int hd,
                 float scale, int64_t kb, int64_t nk, float* S, float* O, float* m, float* l) {
  if (kt != nullptr) {
    simd::gemm(a.rows, nk, hd, a.q, a.q_stride, 1, kt + kb, ldkt, S, kBk, false, false);
  } else {
    int64_t ldk = 0;
    const float* kr = k.rows(kb, nk, hd, tl_kw, &ldk);
    simd::dot_rows(a.q, a.q_stride, a.rows, kr, ldk, nk, hd, S, kBk);
  }
  for (int64_t r = 0; r < a.rows; ++r) {
    float* row = S + r * kBk;
    const int64_t vis = std::clamp<int64_t>(a.visible0 + r * a.visible_step - kb, 0, nk);
    if (vis > 0) {
      simd::scale(row, static_cast<size_t>(vis), scale, row);
      const float m_new = std::max(m[r], simd::max_of(row, static_cast<size_t>(vis)));
      const float corr = std::exp(m[r] - m_new);
      const float sum = simd::exp_shifted_sum(row, static_cast<size_t>(vis), m_new);
      l[r] = l[r] * corr + sum;
      if (corr != 1.0f) simd::scale(O + r * hd, static_cast<size_t>(hd), corr, O + r * hd);
      m[r] = m_new;
    }
    std::fill(row + vis, row + nk, 0.0f);
  }
  int64_t ldv = 0;
  const float* vr = v.rows(kb, nk, hd, tl_vw, &ldv);
  simd::gemm(a.rows, hd, nk, S, kBk, 1, vr, ldv, O, hd, true, false);
}

}  // namespace

void FastKernels::attention(const float* q, int64_t ldq, int64_t T, const float* k_cache, const float* v_cache,
                            int64_t n_past, int H, int Hkv, int hd, float scale, float* out) {
  const int rep = H / Hkv;
  const int64_t ldkv = static_cast<int64_t>(Hkv) * hd, ldo = static_cast<int64_t>(H) * hd;
  const DType kvt = kv_dtype_;
  const auto start = [&](int64_t rows, float** S, float** O, float** m, float** l) {
    *S = scratch(tl_a, static_cast<size_t>(kBq * kBk));
    *O = scratch(tl_b, static_cast<size_t>(kBq * hd));
    *m = scratch(tl_c, kBq);
    *l = scratch(tl_d, kBq);
    std::fill(*O, *O + rows * hd, 0.0f);
    std::fill(*m, *m + rows, -INFINITY);
    std::fill(*l, *l + rows, 0.0f);
  };
  if (T > 1 || rep > kBq) {  // prefill: items of (query block, head), the latest blocks (most keys) first
    const int64_t nqb = (T + kBq - 1) / kBq;
    // Keys transposed once per call, block by block of kBk keys ([Hkv, blocks, hd, kBk], each
    // block contiguous): every query block reads them.
    const int64_t n_keys = n_past + T, n_blocks = (n_keys + kBk - 1) / kBk;
    std::vector<float> kt;
    if (T >= 16) {
      kt.assign(static_cast<size_t>(Hkv * n_blocks * hd * kBk), 0.0f);
      pool_.parallel_for(static_cast<size_t>(Hkv * n_blocks), [&](size_t i0, size_t i1) {
        for (size_t i = i0; i < i1; ++i) {
          const int64_t g = static_cast<int64_t>(i) / n_blocks, b = static_cast<int64_t>(i) % n_blocks;
          const int64_t nk = std::min(kBk, n_keys - b * kBk);
          float* dst = kt.data() + i * hd * kBk;
          int64_t ld = 0;  // the block's keys as float32 rows, then transposed
          const float* src = kv_rows(k_cache, kvt, ldkv, static_cast<int>(g), hd).rows(b * kBk, nk, hd, tl_kw, &ld);
          for (int64_t j = 0; j < nk; ++j)
            for (int d = 0; d < hd; ++d) dst[d * kBk + j] = src[j * ld + d];
        }
      });
    }
    parallel_dynamic(pool_, static_cast<size_t>(nqb * H), [&](size_t item) {
      const int64_t qb = nqb - 1 - static_cast<int64_t>(item) / H;
      const int h = static_cast<int>(item % static_cast<size_t>(H));
      const int64_t i0 = qb * kBq, bq = std::min(T, i0 + kBq) - i0;
      float *S, *O, *m, *l;
      start(bq, &S, &O, &m, &l);
      const AttentionRows a{q + i0 * ldq + static_cast<int64_t>(h) * hd, ldq, bq, n_past + i0 + 1, 1};
      const KvRows kr = kv_rows(k_cache, kvt, ldkv, h / rep, hd), vr = kv_rows(v_cache, kvt, ldkv, h / rep, hd);
      for (int64_t kb = 0, end = n_past + i0 + bq; kb < end; kb += kBk)
        attend_keys(a, kr, kt.empty() ? nullptr : kt.data() + ((h / rep) * n_blocks + kb / kBk) * hd * kBk - kb, kBk,
                    vr, hd, scale, kb, std::min(kBk, end - kb), S, O, m, l);
      for (int64_t r = 0; r < bq; ++r)
        simd::scale(O + r * hd, static_cast<size_t>(hd), 1.0f / l[r], out + (i0 + r) * ldo + static_cast<int64_t>(h) * hd);
    });
    return;
  }
  // Decode: items of key ranges; each block of keys serves every KV head while it is in cache
  // (rows of the cache interleave the heads).
  const int64_t n_keys = n_past + 1;
  const int64_t splits = std::clamp<int64_t>(2 * pool_.size(), 1, std::max<int64_t>(1, n_keys / 256));
  std::vector<float> part_m(static_cast<size_t>(splits * H)), part_l(part_m.size()),
      part_o(static_cast<size_t>(splits * H * hd));
  parallel_dynamic(pool_, static_cast<size_t>(splits), [&](size_t split) {
    float* S = scratch(tl_a, static_cast<size_t>(kBq * kBk));
    float* m = part_m.data() + split * H;  // rows of this split: heads 0 .. H-1
    float* l = part_l.data() + split * H;
    float* O = part_o.data() + split * H * hd;
    std::fill(m, m + H, -INFINITY);
    const int64_t k0 = n_keys * static_cast<int64_t>(split) / splits, k1 = n_keys * (static_cast<int64_t>(split) + 1) / splits;
    for (int64_t kb = k0; kb < k1; kb += kBk)
      for (int g = 0; g < Hkv; ++g) {
        const AttentionRows a{q + static_cast<int64_t>(g) * rep * hd, hd, rep, n_keys, 0};
        const int64_t r0 = static_cast<int64_t>(g) * rep;
        attend_keys(a, kv_rows(k_cache, kvt, ldkv, g, hd), nullptr, 0, kv_rows(v_cache, kvt, ldkv, g, hd), hd, scale,
                    kb, std::min(kBk, k1 - kb), S, O + r0 * hd, m + r0, l + r0);
      }
  });
  // Merge the splits: out = sum_s exp(m_s - M) O_s / sum_s exp(m_s - M) l_s.
  for (int h = 0; h < H; ++h) {
      const auto at = [&](int64_t s) { return static_cast<size_t>(s * H + h); };
      float M = -INFINITY;
      for (int64_t s = 0; s < splits; ++s) M = std::max(M, part_m[at(s)]);
      float* o = out + static_cast<int64_t>(h) * hd;
      std::fill(o, o + hd, 0.0f);
      float denom = 0.0f;
      for (int64_t s = 0; s < splits; ++s) {
        const float w = std::exp(part_m[at(s)] - M);
        if (w == 0.0f) continue;
        denom += w * part_l[at(s)];
        simd::scale_add(o, w, part_o.data() + at(s) * hd, static_cast<size_t>(hd));
      }
      simd::scale(o, static_cast<size_t>(hd), 1.0f / denom, o);
  }
}

// The chunked SSD scan with its pieces as small GEMMs. Per group and chunk, CB = C B^T (shared by
// the group's heads); per head and chunk:
//   Y  = exp(cum) * (C S^T)  +  (CB * exp(segsum) * dt) X  +  D X        (carried state, intra-chunk)
//   S <- exp(cum_last) S  +  (exp(cum_last - cum) * dt * X)^T B          (state passing)
void FastKernels::ssm_scan(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt_raw,
                           int64_t ld_dt, int64_t T, const SsmParams& p, float* state, float* y) {
  const int H = p.heads, P = p.head_dim, N = p.d_state, G = p.groups;
  const int heads_per_group = H / G;
  const int64_t ldy = static_cast<int64_t>(H) * P;
  if (T == 1) {
    const auto step = [&](size_t h0, size_t h1) {
      for (size_t hs = h0; hs < h1; ++hs) {
        const int h = static_cast<int>(hs);
        const int64_t g_off = static_cast<int64_t>(h / heads_per_group) * N;
        const float dt = ssm_time_step(p, h, dt_raw[h]);
        simd::ssm_step_head(state + static_cast<int64_t>(h) * P * N, P, N, x + static_cast<int64_t>(h) * P, B + g_off,
                            C + g_off, dt, std::exp(dt * p.A[h]), p.D[h], y + static_cast<int64_t>(h) * P);
      }
    };
    if (static_cast<int64_t>(H) * P * N < kParallelMin) step(0, static_cast<size_t>(H));
    else pool_.parallel_for(static_cast<size_t>(H), step);
    return;
  }
  const int64_t cs = p.chunk_size, n_chunks = (T + cs - 1) / cs;
  // CB for every (group, chunk), lower-left triangle used.
  std::vector<float> cb(static_cast<size_t>(G * n_chunks * cs * cs));
  parallel_dynamic(pool_, static_cast<size_t>(G * n_chunks), [&](size_t item) {
    const int64_t g = static_cast<int64_t>(item) / n_chunks, c = static_cast<int64_t>(item) % n_chunks;
    const int64_t c0 = c * cs, L = std::min(cs, T - c0);
    float* bt = scratch(tl_a, static_cast<size_t>(N * L));  // B^T of the chunk, [N, L]
    for (int64_t j = 0; j < L; ++j)
      for (int n = 0; n < N; ++n) bt[n * L + j] = B[(c0 + j) * ld_xbc + g * N + n];
    const float* cp = pack_rows(C + c0 * ld_xbc + g * N, ld_xbc, L, N, scratch(tl_pack, static_cast<size_t>(L * N)));
    simd::gemm(L, L, N, cp, N, 1, bt, L, cb.data() + item * cs * cs, cs, false, false);
  });
  parallel_dynamic(pool_, static_cast<size_t>(H), [&](size_t hs) {
    const int h = static_cast<int>(hs);
    const int64_t g = h / heads_per_group;
    std::vector<float> dt(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) dt[t] = ssm_time_step(p, h, dt_raw[t * ld_dt + h]);
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t c0 = c * cs;
      ssm_chunk(x + c0 * ld_xbc + static_cast<int64_t>(h) * P, B + c0 * ld_xbc + g * N, C + c0 * ld_xbc + g * N, ld_xbc,
                dt.data() + c0, std::min(cs, T - c0), cb.data() + (g * n_chunks + c) * cs * cs, h, p,
                state + static_cast<int64_t>(h) * P * N, y + c0 * ldy + static_cast<int64_t>(h) * P, ldy);
    }
  });
}

// One chunk of one head; x, B, C, dt, y already point at the chunk's first row.
void FastKernels::ssm_chunk(const float* x, const float* B, const float* C, int64_t ld_xbc, const float* dt,
                            int64_t L, const float* CB, int h, const SsmParams& p, float* S, float* y, int64_t ldy) {
  const int P = p.head_dim, N = p.d_state;
  const int64_t cs = p.chunk_size;
  const float A = p.A[h];
  float* M = scratch(tl_a, static_cast<size_t>(L * L));      // CB * exp(segsum) * dt, lower triangle
  float* seg = scratch(tl_b, static_cast<size_t>(L));        // segsum row i (cumulative sums from j+1 to i)
  float* cum = scratch(tl_c, static_cast<size_t>(2 * L));    // cumulative A dt, then exp of it
  float* work = scratch(tl_d, static_cast<size_t>(std::max<int64_t>(static_cast<int64_t>(N) * P, L * P)));
  float* packed = scratch(tl_pack, static_cast<size_t>(L * (P + 2 * N)));
  x = pack_rows(x, ld_xbc, L, P, packed);
  B = pack_rows(B, ld_xbc, L, N, packed + L * P);
  C = pack_rows(C, ld_xbc, L, N, packed + L * (P + N));
  float run = 0.0f;
  for (int64_t i = 0; i < L; ++i) cum[i] = (run += A * dt[i]);
  for (int64_t i = 0; i < L; ++i) {
    const float a = A * dt[i];
    for (int64_t j = 0; j < i; ++j) seg[j] += a;  // the same additions, in the same order, as the reference
    seg[i] = 0.0f;
    float* mi = M + i * L;
    std::copy(seg, seg + i + 1, mi);
    simd::exp_shifted_sum(mi, static_cast<size_t>(i + 1), 0.0f);
    simd::mul(mi, CB + i * cs, static_cast<size_t>(i + 1));
    simd::mul(mi, dt, static_cast<size_t>(i + 1));
    std::fill(mi + i + 1, mi + L, 0.0f);
  }
  // Carried state: Y = exp(cum_i) * C_i S^T, with S^T as [N, P].
  float* st = work;
  for (int pp = 0; pp < P; ++pp)
    for (int n = 0; n < N; ++n) st[static_cast<int64_t>(n) * P + pp] = S[static_cast<int64_t>(pp) * N + n];
  simd::gemm(L, P, N, C, N, 1, st, P, y, ldy, false, false);
  for (int64_t i = 0; i < L; ++i) simd::scale(y + i * ldy, static_cast<size_t>(P), std::exp(cum[i]), y + i * ldy);
  // Intra-chunk, then the D skip.
  simd::gemm(L, P, L, M, L, 1, x, P, y, ldy, true, true);
  for (int64_t i = 0; i < L; ++i) simd::scale_add(y + i * ldy, p.D[h], x + i * P, static_cast<size_t>(P));
  // State passing: S = exp(last) S + Xw^T B, Xw[j, :] = exp(last - cum_j) dt_j x_j.
  const float last = cum[L - 1];
  float* xw = work;
  for (int64_t j = 0; j < L; ++j)
    simd::scale(x + j * P, static_cast<size_t>(P), std::exp(last - cum[j]) * dt[j], xw + j * P);
  simd::scale(S, static_cast<size_t>(P) * N, std::exp(last), S);
  simd::gemm(P, N, L, xw, 1, P, B, N, S, N, true, false);
}

}  // namespace

std::unique_ptr<Kernels> make_cpu_kernels(ThreadPool& pool) { return std::make_unique<FastKernels>(pool); }

}  // namespace fh1
