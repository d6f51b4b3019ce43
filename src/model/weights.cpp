// Loading: binds every tensor of the checkpoint to the model's typed views, checking shapes.
#include <cmath>
#include <cstring>
#include <string>

#include "model/model.h"
#include "util/error.h"
#include "util/half.h"

namespace fh1 {
namespace {

class Binder {
 public:
  Binder(const TensorStore& store, Kernels& k) : store_(store), k_(k) {}

  // A tensor of the given shape; matrices may also be block-quantized (falcon-h1 quantize).
  const TensorView& tensor(const std::string& name, std::vector<int64_t> shape, bool matrix = false) {
    const TensorView* t = store_.find(name);
    if (t == nullptr) throw Error("missing tensor '" + name + "' (expected shape " + shape_to_string(shape) + ")");
    if (!is_float_dtype(t->dtype) && !(matrix && is_quantized_dtype(t->dtype)))
      throw mismatch("tensor '" + name + "' dtype", matrix ? "BF16, F16, F32, Q8_0, Q4_0 or Q4_K" : "BF16, F16 or F32",
                     dtype_name(t->dtype));
    if (t->shape != shape)
      throw mismatch("tensor '" + name + "' shape", shape_to_string(shape) + " (from config.json)", t->shape_string());
    return *t;
  }

  WeightView matrix(const std::string& name, int64_t rows, int64_t cols) {
    return k_.bind_weight(tensor(name, {rows, cols}, true));
  }

  // Small tensors are converted to float32 once and kept in backend memory.
  Buffer vector(const std::string& name, std::vector<int64_t> shape) { return upload(to_f32(tensor(name, shape))); }

  Buffer optional_vector(bool present, const std::string& name, int64_t n) {
    if (!present) {
      if (store_.find(name) != nullptr)
        throw Error("tensor '" + name + "' is in the checkpoint but config.json says that bias is off");
      return {};
    }
    return vector(name, {n});
  }

  Buffer upload(const std::vector<float>& v) {
    Buffer b(k_, v.size());
    k_.from_host(b.data(), v.data(), v.size());
    return b;
  }

  static std::vector<float> to_f32(const TensorView& t) {
    std::vector<float> out(static_cast<size_t>(t.numel()));
    for (size_t i = 0; i < out.size(); ++i) {
      uint16_t h;
      switch (t.dtype) {
        case DType::F32: std::memcpy(&out[i], t.data + 4 * i, 4); break;
        case DType::BF16: std::memcpy(&h, t.data + 2 * i, 2); out[i] = bf16_to_f32(h); break;
        case DType::F16: std::memcpy(&h, t.data + 2 * i, 2); out[i] = f16_to_f32(h); break;
        default: throw Error("tensor '" + t.name + "': unsupported dtype");
      }
    }
    return out;
  }

 private:
  const TensorStore& store_;
  Kernels& k_;
};

}  // namespace

Model Model::load(const std::filesystem::path& dir, Kernels& kernels) {
  if (!std::filesystem::is_directory(dir)) throw Error(dir.string() + ": not a directory");
  ModelConfig config = ModelConfig::from_dir(dir);
  return from_store(config, TensorStore::open_dir(dir), kernels);
}

Model Model::from_store(const ModelConfig& config, TensorStore store, Kernels& kernels) {
  Model m;
  m.config_ = config;
  m.store_ = std::move(store);
  m.kernels_ = &kernels;
  m.bind();
  return m;
}

void Model::bind() {
  const ModelConfig& c = config_;
  Binder b(store_, *kernels_);
  const int64_t d = c.hidden_size, V = c.vocab_size;
  embed_tokens_ = b.matrix("model.embed_tokens.weight", V, d);
  if (c.tie_word_embeddings) {
    lm_head_ = embed_tokens_;
  } else {
    if (store_.find("lm_head.weight") == nullptr)
      throw Error("missing tensor 'lm_head.weight' (config.json has tie_word_embeddings false)");
    lm_head_ = b.matrix("lm_head.weight", V, d);
  }
  final_norm_ = b.vector("model.final_layernorm.weight", {d});

  const int64_t ds = c.mamba_d_ssm, GN = static_cast<int64_t>(c.mamba_n_groups) * c.mamba_d_state;
  const int64_t Hm = c.mamba_n_heads, conv_dim = c.conv_dim(), K = c.mamba_d_conv;
  layers_.clear();
  layers_.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& L = layers_[static_cast<size_t>(i)];
    L.input_norm = b.vector(p + "input_layernorm.weight", {d});
    L.pre_ff_norm = b.vector(p + "pre_ff_layernorm.weight", {d});

    L.q_proj = b.matrix(p + "self_attn.q_proj.weight", c.q_dim(), d);
    L.k_proj = b.matrix(p + "self_attn.k_proj.weight", c.kv_dim(), d);
    L.v_proj = b.matrix(p + "self_attn.v_proj.weight", c.kv_dim(), d);
    L.o_proj = b.matrix(p + "self_attn.o_proj.weight", d, c.q_dim());
    L.q_bias = b.optional_vector(c.attention_bias, p + "self_attn.q_proj.bias", c.q_dim());
    L.k_bias = b.optional_vector(c.attention_bias, p + "self_attn.k_proj.bias", c.kv_dim());
    L.v_bias = b.optional_vector(c.attention_bias, p + "self_attn.v_proj.bias", c.kv_dim());
    L.o_bias = b.optional_vector(c.attention_bias, p + "self_attn.o_proj.bias", d);

    L.gate_proj = b.matrix(p + "feed_forward.gate_proj.weight", c.intermediate_size, d);
    L.up_proj = b.matrix(p + "feed_forward.up_proj.weight", c.intermediate_size, d);
    L.down_proj = b.matrix(p + "feed_forward.down_proj.weight", d, c.intermediate_size);
    L.gate_bias = b.optional_vector(c.mlp_bias, p + "feed_forward.gate_proj.bias", c.intermediate_size);
    L.up_bias = b.optional_vector(c.mlp_bias, p + "feed_forward.up_proj.bias", c.intermediate_size);
    L.down_bias = b.optional_vector(c.mlp_bias, p + "feed_forward.down_proj.bias", d);

    L.in_proj = b.matrix(p + "mamba.in_proj.weight", c.in_proj_dim(), d);
    L.in_proj_bias = b.optional_vector(c.mamba_proj_bias, p + "mamba.in_proj.bias", c.in_proj_dim());
    L.conv_weight = b.vector(p + "mamba.conv1d.weight", {conv_dim, 1, K});
    L.conv_bias = b.optional_vector(c.mamba_conv_bias, p + "mamba.conv1d.bias", conv_dim);
    L.dt_bias = b.vector(p + "mamba.dt_bias", {Hm});
    std::vector<float> A = Binder::to_f32(b.tensor(p + "mamba.A_log", {Hm}));
    for (float& a : A) a = -std::exp(a);  // float32, as the reference
    L.A = b.upload(A);
    L.D = b.vector(p + "mamba.D", {Hm});
    if (c.mamba_rms_norm) {
      L.norm = b.vector(p + "mamba.norm.weight", {ds});
    } else if (store_.find(p + "mamba.norm.weight") != nullptr) {
      throw Error("tensor '" + p + "mamba.norm.weight' is in the checkpoint but config.json has mamba_rms_norm false");
    }
    L.out_proj = b.matrix(p + "mamba.out_proj.weight", d, ds);
    L.out_proj_bias = b.optional_vector(c.projectors_bias, p + "mamba.out_proj.bias", d);
  }

  // in_proj output columns: [z: ds][x: ds][B: GN][C: GN][dt: Hm], each with its multiplier.
  std::vector<float> mup(static_cast<size_t>(c.in_proj_dim()));
  const int64_t bounds[6] = {0, ds, 2 * ds, 2 * ds + GN, 2 * ds + 2 * GN, 2 * ds + 2 * GN + Hm};
  for (int s = 0; s < 5; ++s)
    for (int64_t j = bounds[s]; j < bounds[s + 1]; ++j) mup[static_cast<size_t>(j)] = static_cast<float>(c.ssm_multipliers[s]);
  mup_vector_ = b.upload(mup);

  // RoPE inverse frequencies in float32, as the reference: 1 / base^(arange(0, hd, 2) / hd), the
  // power of float32 operands rounded to float32 (this agrees with torch to the last bit but for
  // rare 1-ulp cases; with theta = 1e11 simplifying this would change the small frequencies).
  const int hd = c.head_dim;
  inv_freq_.resize(static_cast<size_t>(hd / 2));
  const float base = static_cast<float>(c.rope_theta);
  for (int i = 0; i < hd / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(hd);
    const float power = static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(exponent)));
    inv_freq_[static_cast<size_t>(i)] = 1.0f / power;
  }
}

uint64_t Model::parameter_count() const {
  uint64_t n = 0;
  for (const auto& [name, t] : store_.all()) n += static_cast<uint64_t>(t->numel());
  return n;
}

}  // namespace fh1
