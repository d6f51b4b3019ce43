#include "model/benchmark_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/blocks.h"
#include "util/error.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace fh1 {
namespace {

struct ShapeRow {
  const char* name;
  int layers, hidden, heads, kv_heads, mamba_heads, head_dim, mamba_head_dim, d_state;
  int intermediate, vocab, groups;       // 0.5B: from its published config.json; others: guessed
};

// The release table; intermediate, vocab and groups are known for 0.5B only.
constexpr ShapeRow kShapes[] = {
    {"0.5B", 36, 1024, 8, 2, 24, 64, 64, 128, 2048, 32784, 1},
    {"1.5B", 24, 2048, 8, 2, 48, 128, 64, 256, 4096, 65536, 1},
    {"1.5B-deep", 66, 1280, 6, 2, 24, 128, 64, 256, 3072, 65536, 1},
    {"3B", 32, 2560, 10, 2, 32, 128, 128, 256, 5120, 65536, 1},
    {"7B", 44, 3072, 12, 2, 24, 128, 128, 256, 12288, 65536, 1},
    {"34B", 72, 5120, 20, 4, 32, 128, 128, 256, 24576, 65536, 2},
};

// splitmix64: a fast, well-mixed generator, one independent stream per tensor and block.
inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in [-a, a).
inline float uniform(uint64_t bits, float a) {
  return (static_cast<float>(bits >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * a;
}

}  // namespace

std::vector<std::string> benchmark_shape_names() {
  std::vector<std::string> v;
  for (const auto& s : kShapes) v.push_back(s.name);
  return v;
}

BenchmarkShape benchmark_shape(const std::string& name) {
  for (const ShapeRow& s : kShapes) {
    if (name != s.name) continue;
    BenchmarkShape b;
    ModelConfig& c = b.config;
    c.num_hidden_layers = s.layers;
    c.hidden_size = s.hidden;
    c.num_attention_heads = s.heads;
    c.num_key_value_heads = s.kv_heads;
    c.head_dim = s.head_dim;
    c.mamba_n_heads = s.mamba_heads;
    c.mamba_d_head = s.mamba_head_dim;
    c.mamba_d_ssm = s.mamba_heads * s.mamba_head_dim;
    c.mamba_d_state = s.d_state;
    c.mamba_n_groups = s.groups;
    c.intermediate_size = s.intermediate;
    c.vocab_size = s.vocab;
    // From the published 0.5B config.json (the design note); the other sizes are assumed alike.
    c.mamba_chunk_size = 128;
    c.mamba_d_conv = 4;
    c.mamba_rms_norm = false;
    c.mamba_norm_before_gate = false;
    c.rope_theta = 1e11;
    c.max_position_embeddings = 16384;
    c.embedding_multiplier = 5.657;
    c.lm_head_multiplier = 0.0391;
    c.key_multiplier = 0.3906;
    c.attention_out_multiplier = 0.9375;
    c.mlp_multipliers = {0.884, 0.586};
    c.tie_word_embeddings = false;
    c.eos_token_ids = {11};
    b.guessed.push_back("tie_word_embeddings=false");
    if (name != "0.5B") {
      b.guessed.push_back("intermediate_size=" + std::to_string(s.intermediate));
      b.guessed.push_back("vocab_size=" + std::to_string(s.vocab));
      b.guessed.push_back("mamba_chunk_size=128");
      if (name == "34B") b.guessed.push_back("mamba_n_groups=" + std::to_string(s.groups));
      else b.guessed.push_back("mamba_n_groups=1");
    }
    return b;
  }
  std::string names;
  for (const auto& n : benchmark_shape_names()) names += (names.empty() ? "" : ", ") + n;
  throw Error("unknown shape '" + name + "' (known: " + names + ")");
}

namespace {

struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  bool matrix;
  float scale;   // uniform in [-scale, scale), or the constant below when scale == 0
  float value;
};

std::vector<Spec> specs(const ModelConfig& c) {
  const int64_t d = c.hidden_size, V = c.vocab_size, ff = c.intermediate_size, q = c.q_dim(), kv = c.kv_dim();
  const int64_t ds = c.mamba_d_ssm, Hm = c.mamba_n_heads, conv = c.conv_dim(), in = c.in_proj_dim();
  const auto fan = [](int64_t k) { return static_cast<float>(std::sqrt(3.0 / static_cast<double>(k))); };
  std::vector<Spec> v;
  v.push_back({"model.embed_tokens.weight", {V, d}, true, 1.0f, 0});
  if (!c.tie_word_embeddings) v.push_back({"lm_head.weight", {V, d}, true, fan(d), 0});
  v.push_back({"model.final_layernorm.weight", {d}, false, 0, 1.0f});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    v.push_back({p + "input_layernorm.weight", {d}, false, 0, 1.0f});
    v.push_back({p + "pre_ff_layernorm.weight", {d}, false, 0, 1.0f});
    v.push_back({p + "self_attn.q_proj.weight", {q, d}, true, fan(d), 0});
    v.push_back({p + "self_attn.k_proj.weight", {kv, d}, true, fan(d), 0});
    v.push_back({p + "self_attn.v_proj.weight", {kv, d}, true, fan(d), 0});
    v.push_back({p + "self_attn.o_proj.weight", {d, q}, true, fan(q), 0});
    v.push_back({p + "feed_forward.gate_proj.weight", {ff, d}, true, fan(d), 0});
    v.push_back({p + "feed_forward.up_proj.weight", {ff, d}, true, fan(d), 0});
    v.push_back({p + "feed_forward.down_proj.weight", {d, ff}, true, fan(ff), 0});
    v.push_back({p + "mamba.in_proj.weight", {in, d}, true, fan(d), 0});
    v.push_back({p + "mamba.conv1d.weight", {conv, 1, c.mamba_d_conv}, false, 0.5f, 0});
    if (c.mamba_conv_bias) v.push_back({p + "mamba.conv1d.bias", {conv}, false, 0.1f, 0});
    v.push_back({p + "mamba.dt_bias", {Hm}, false, 0.5f, 0});
    v.push_back({p + "mamba.A_log", {Hm}, false, 1.0f, 0});
    v.push_back({p + "mamba.D", {Hm}, false, 0, 1.0f});
    if (c.mamba_rms_norm) v.push_back({p + "mamba.norm.weight", {ds}, false, 0, 1.0f});
    v.push_back({p + "mamba.out_proj.weight", {d, ds}, true, fan(ds), 0});
  }
  return v;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t x : shape) n *= x;
  return n;
}

}  // namespace

size_t random_weight_bytes(const ModelConfig& c, DType dtype) {
  size_t n = 0;
  for (const Spec& s : specs(c)) {
    if (!s.matrix) n += static_cast<size_t>(numel(s.shape)) * 4;
    else if (is_quantized_dtype(dtype)) n += static_cast<size_t>(s.shape[0] * dtype_row_bytes(dtype, s.shape[1]));
    else n += static_cast<size_t>(numel(s.shape)) * dtype_size(dtype);
  }
  return n;
}

TensorStore random_weights(const ModelConfig& c, DType dtype, ThreadPool& pool, uint64_t seed) {
  if (dtype != DType::BF16 && dtype != DType::F32 && !is_quantized_dtype(dtype))
    throw Error("random weights are BF16, F32, Q8_0, Q4_0 or Q4_K");
  std::vector<OwnedTensor> tensors;
  uint64_t stream = seed * 0x100000001b3ull;
  for (const Spec& s : specs(c)) {
    OwnedTensor t;
    t.name = s.name;
    t.shape = s.shape;
    t.dtype = s.matrix ? dtype : DType::F32;
    const size_t n = static_cast<size_t>(numel(s.shape));
    if (is_quantized_dtype(t.dtype)) {  // random rows, quantized one at a time
      const int64_t rows = s.shape[0], cols = s.shape[1], rb = dtype_row_bytes(t.dtype, cols);
      if (cols % dtype_block_elems(t.dtype) != 0)
        throw Error(s.name + ": rows of " + std::to_string(cols) + " are not whole " + dtype_name(t.dtype) + " blocks");
      t.bytes.resize(static_cast<size_t>(rows * rb));
      const uint64_t base = mix(++stream);
      pool.parallel_for(static_cast<size_t>(rows), [&](size_t r0, size_t r1) {
        std::vector<float> row(static_cast<size_t>(cols));
        for (size_t r = r0; r < r1; ++r) {
          uint64_t state = mix(base ^ (r * 0x9e3779b97f4a7c15ull));
          for (float& v : row) v = uniform(state = mix(state), s.scale);
          quant::quantize_row(t.dtype, row.data(), cols, t.bytes.data() + static_cast<int64_t>(r) * rb);
        }
      });
      tensors.push_back(std::move(t));
      continue;
    }
    t.bytes.resize(n * dtype_size(t.dtype));
    uint8_t* out = t.bytes.data();
    const bool bf16 = t.dtype == DType::BF16;
    const uint64_t base = mix(++stream);
    constexpr size_t kBlock = 1 << 16;
    pool.parallel_for((n + kBlock - 1) / kBlock, [&](size_t b0, size_t b1) {
      for (size_t b = b0; b < b1; ++b) {
        uint64_t state = mix(base ^ (b * 0x9e3779b97f4a7c15ull));
        for (size_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) {
          const float v = s.scale == 0.0f ? s.value : uniform(state = mix(state), s.scale);
          if (bf16) {
            const uint16_t h = f32_to_bf16(v);
            std::memcpy(out + 2 * i, &h, 2);
          } else {
            std::memcpy(out + 4 * i, &v, 4);
          }
        }
      }
    });
    tensors.push_back(std::move(t));
  }
  return TensorStore::from_memory(std::move(tensors));
}

}  // namespace fh1
