#include "model/config.h"

#include <cmath>

#include "io/json_file.h"
#include "util/error.h"

namespace fh1 {
namespace {

class FieldReader {
 public:
  FieldReader(const nlohmann::json& j, std::string where) : j_(j), where_(std::move(where)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  std::string at(const char* key) const { return where_ + ": field '" + key + "'"; }

  int integer(const char* key, int fallback, bool required = false, int min_value = 1) const {
    if (!has(key)) {
      if (required) throw Error(where_ + ": missing required field '" + key + "'");
      return fallback;
    }
    const auto& v = j_[key];
    if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()))
      throw mismatch(at(key), "an integer", v.dump());
    const double d = v.get<double>();
    if (d < min_value || d > 1e9) throw mismatch(at(key), "an integer >= " + std::to_string(min_value), v.dump());
    return static_cast<int>(d);
  }

  double number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const double v = json_number(j_[key], at(key));
    if (std::isnan(v)) throw mismatch(at(key), "a number", "NaN");
    return v;
  }

  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) throw mismatch(at(key), "true or false", j_[key].dump());
    return j_[key].get<bool>();
  }

  template <size_t N>
  std::array<double, N> numbers(const char* key, std::array<double, N> fallback) const {
    if (!has(key)) return fallback;
    const auto& v = j_[key];
    if (!v.is_array() || v.size() != N) throw mismatch(at(key), "a list of " + std::to_string(N) + " numbers", v.dump());
    std::array<double, N> out{};
    for (size_t i = 0; i < N; ++i) out[i] = json_number(v[i], at(key));
    return out;
  }

 private:
  const nlohmann::json& j_;
  std::string where_;
};

}  // namespace

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) throw mismatch(where, "a JSON object", j.type_name());
  if (!j.contains("model_type")) throw Error(where + ": missing 'model_type' (expected \"falcon_h1\")");
  if (j["model_type"] != "falcon_h1")
    throw mismatch(where + ": model_type", "\"falcon_h1\"", j["model_type"].dump());
  FieldReader f(j, where);
  ModelConfig c;
  c.vocab_size = f.integer("vocab_size", 0, true);
  c.hidden_size = f.integer("hidden_size", 0, true);
  c.intermediate_size = f.integer("intermediate_size", 0, true);
  c.num_hidden_layers = f.integer("num_hidden_layers", 0, true);
  c.num_attention_heads = f.integer("num_attention_heads", 0, true);
  c.num_key_value_heads = f.integer("num_key_value_heads", c.num_attention_heads);
  if (c.hidden_size % c.num_attention_heads != 0 && !f.has("head_dim"))
    throw Error(where + ": hidden_size " + std::to_string(c.hidden_size) + " is not a multiple of num_attention_heads " +
                std::to_string(c.num_attention_heads) + " and no head_dim is given");
  c.head_dim = f.integer("head_dim", c.hidden_size / c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw Error(where + ": num_attention_heads " + std::to_string(c.num_attention_heads) +
                " is not a multiple of num_key_value_heads " + std::to_string(c.num_key_value_heads));
  if (c.head_dim % 2 != 0) throw mismatch(f.at("head_dim"), "an even number (RoPE rotates pairs)", std::to_string(c.head_dim));
  c.max_position_embeddings = f.integer("max_position_embeddings", 8192);

  // RoPE: newer files keep theta in rope_parameters; older ones have rope_theta at the top.
  c.rope_theta = f.number("rope_theta", 10000.0);
  if (f.has("rope_parameters")) {
    const auto& rp = j["rope_parameters"];
    if (!rp.is_object()) throw mismatch(f.at("rope_parameters"), "an object", rp.dump());
    if (rp.contains("rope_type") && rp["rope_type"] != "default")
      throw Error(where + ": rope_parameters.rope_type " + rp["rope_type"].dump() +
                  " is not supported (only \"default\" RoPE, as in every Falcon-H1 release)");
    if (rp.contains("rope_theta")) c.rope_theta = json_number(rp["rope_theta"], where + ": rope_parameters.rope_theta");
  }
  if (f.has("rope_scaling")) {
    const auto& rs = j["rope_scaling"];
    const bool plain = rs.is_object() && (!rs.contains("rope_type") || rs["rope_type"] == "default") &&
                       (!rs.contains("type") || rs["type"] == "default");
    if (!plain) throw Error(where + ": rope_scaling " + rs.dump() + " is not supported (only default RoPE)");
  }
  if (!(c.rope_theta > 1.0)) throw mismatch(f.at("rope_theta"), "a number > 1", std::to_string(c.rope_theta));
  c.rms_norm_eps = f.number("rms_norm_eps", 1e-5);
  if (!(c.rms_norm_eps > 0)) throw mismatch(f.at("rms_norm_eps"), "a positive number", std::to_string(c.rms_norm_eps));
  c.attention_bias = f.boolean("attention_bias", false);
  c.mlp_bias = f.boolean("mlp_bias", false);
  if (f.has("hidden_act") && j["hidden_act"] != "silu")
    throw mismatch(f.at("hidden_act"), "\"silu\"", j["hidden_act"].dump());

  // Mamba-2 widths: ds = mamba_d_ssm, or mamba_expand * d when null; P may be "auto".
  c.mamba_n_heads = f.integer("mamba_n_heads", 0, true);
  if (f.has("mamba_d_ssm")) {
    c.mamba_d_ssm = f.integer("mamba_d_ssm", 0);
  } else {
    const double expand = f.number("mamba_expand", 2.0);
    c.mamba_d_ssm = static_cast<int>(expand * c.hidden_size);
    if (c.mamba_d_ssm <= 0) throw mismatch(f.at("mamba_expand"), "a positive number", std::to_string(expand));
  }
  if (c.mamba_d_ssm % c.mamba_n_heads != 0)
    throw Error(where + ": mamba_d_ssm " + std::to_string(c.mamba_d_ssm) + " is not a multiple of mamba_n_heads " +
                std::to_string(c.mamba_n_heads));
  if (f.has("mamba_d_head") && j["mamba_d_head"].is_string()) {
    if (j["mamba_d_head"] != "auto") throw mismatch(f.at("mamba_d_head"), "an integer or \"auto\"", j["mamba_d_head"].dump());
    c.mamba_d_head = c.mamba_d_ssm / c.mamba_n_heads;
  } else {
    c.mamba_d_head = f.integer("mamba_d_head", c.mamba_d_ssm / c.mamba_n_heads);
  }
  if (c.mamba_d_head * c.mamba_n_heads != c.mamba_d_ssm)
    throw Error(where + ": mamba_d_head " + std::to_string(c.mamba_d_head) + " x mamba_n_heads " +
                std::to_string(c.mamba_n_heads) + " != mamba_d_ssm " + std::to_string(c.mamba_d_ssm));
  c.mamba_n_groups = f.integer("mamba_n_groups", 1);
  if (c.mamba_n_heads % c.mamba_n_groups != 0)
    throw Error(where + ": mamba_n_heads " + std::to_string(c.mamba_n_heads) + " is not a multiple of mamba_n_groups " +
                std::to_string(c.mamba_n_groups));
  if (c.mamba_d_ssm % c.mamba_n_groups != 0)
    throw Error(where + ": mamba_d_ssm is not a multiple of mamba_n_groups (gated RMSNorm works per group)");
  c.mamba_d_state = f.integer("mamba_d_state", 256);
  c.mamba_d_conv = f.integer("mamba_d_conv", 4);
  c.mamba_chunk_size = f.integer("mamba_chunk_size", 256);
  c.mamba_conv_bias = f.boolean("mamba_conv_bias", true);
  c.mamba_proj_bias = f.boolean("mamba_proj_bias", false);
  c.projectors_bias = f.boolean("projectors_bias", false);
  c.mamba_rms_norm = f.boolean("mamba_rms_norm", false);
  c.mamba_norm_before_gate = f.boolean("mamba_norm_before_gate", true);
  if (f.has("time_step_limit")) {
    const auto lim = f.numbers<2>("time_step_limit", {0.0, 0.0});
    c.time_step_min = lim[0];
    c.time_step_max = lim[1];
    if (!(c.time_step_min <= c.time_step_max))
      throw mismatch(f.at("time_step_limit"), "[low, high] with low <= high", j["time_step_limit"].dump());
  }

  c.embedding_multiplier = f.number("embedding_multiplier", 1.0);
  c.lm_head_multiplier = f.number("lm_head_multiplier", 1.0);
  c.key_multiplier = f.number("key_multiplier", 1.0);
  c.attention_in_multiplier = f.number("attention_in_multiplier", 1.0);
  c.attention_out_multiplier = f.number("attention_out_multiplier", 1.0);
  c.ssm_in_multiplier = f.number("ssm_in_multiplier", 1.0);
  c.ssm_out_multiplier = f.number("ssm_out_multiplier", 1.0);
  c.mlp_multipliers = f.numbers<2>("mlp_multipliers", {1.0, 1.0});
  c.ssm_multipliers = f.numbers<5>("ssm_multipliers", {1.0, 1.0, 1.0, 1.0, 1.0});
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);

  c.bos_token_id = f.has("bos_token_id") ? f.integer("bos_token_id", -1, false, 0) : -1;
  c.pad_token_id = f.has("pad_token_id") ? f.integer("pad_token_id", -1, false, 0) : -1;
  if (f.has("eos_token_id")) {
    const auto& e = j["eos_token_id"];
    if (e.is_array()) {
      for (const auto& v : e) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0) throw mismatch(f.at("eos_token_id"), "token ids", e.dump());
        c.eos_token_ids.push_back(v.get<int>());
      }
    } else {
      c.eos_token_ids.push_back(f.integer("eos_token_id", 0, false, 0));
    }
  }
  return c;
}

ModelConfig ModelConfig::from_dir(const std::filesystem::path& dir) {
  const auto path = dir / "config.json";
  if (!std::filesystem::exists(path)) throw Error(dir.string() + ": no config.json (is this a Hugging Face model directory?)");
  return from_json(read_json_file(path), path.string());
}

uint64_t ModelConfig::state_bytes(int64_t context_length, uint64_t kv_value_bytes) const {
  const uint64_t kv = 2ull * static_cast<uint64_t>(context_length) * static_cast<uint64_t>(kv_dim());
  const uint64_t conv = static_cast<uint64_t>(mamba_d_conv - 1) * static_cast<uint64_t>(conv_dim());
  const uint64_t ssm = static_cast<uint64_t>(mamba_n_heads) * mamba_d_head * mamba_d_state;
  return (kv * kv_value_bytes + (conv + ssm) * sizeof(float)) * static_cast<uint64_t>(num_hidden_layers);
}

}  // namespace fh1
