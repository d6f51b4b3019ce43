// The Falcon-H1 config.json, read and checked. Field meanings: ../shared/design/falcon-h1-model.md.
// Defaults are transformers' FalconH1Config defaults, so a file that omits a field computes what
// the reference computes; the fields that fix the model's shape are required.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fh1 {

struct ModelConfig {
  // sizes
  int vocab_size = 0;
  int hidden_size = 0;        // d
  int intermediate_size = 0;  // MLP width
  int num_hidden_layers = 0;
  int num_attention_heads = 0;  // H
  int num_key_value_heads = 0;  // Hkv
  int head_dim = 0;             // hd
  int max_position_embeddings = 8192;
  // attention
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  bool attention_bias = false;
  bool mlp_bias = false;
  // Mamba-2
  int mamba_d_ssm = 0;    // ds
  int mamba_n_heads = 0;  // Hm
  int mamba_d_head = 0;   // P
  int mamba_n_groups = 1; // G
  int mamba_d_state = 0;  // N
  int mamba_d_conv = 4;   // K
  int mamba_chunk_size = 256;
  bool mamba_conv_bias = true;
  bool mamba_proj_bias = false;
  bool projectors_bias = false;
  bool mamba_rms_norm = false;
  bool mamba_norm_before_gate = true;
  double time_step_min = 0.0, time_step_max = std::numeric_limits<double>::infinity();
  // muP multipliers
  double embedding_multiplier = 1.0, lm_head_multiplier = 1.0, key_multiplier = 1.0;
  double attention_in_multiplier = 1.0, attention_out_multiplier = 1.0;
  double ssm_in_multiplier = 1.0, ssm_out_multiplier = 1.0;
  std::array<double, 2> mlp_multipliers{1.0, 1.0};           // gate, down
  std::array<double, 5> ssm_multipliers{1.0, 1.0, 1.0, 1.0, 1.0};  // z, x, B, C, dt
  bool tie_word_embeddings = false;
  // generation
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  int pad_token_id = -1;

  // derived widths
  int conv_dim() const { return mamba_d_ssm + 2 * mamba_n_groups * mamba_d_state; }
  int in_proj_dim() const { return mamba_d_ssm + conv_dim() + mamba_n_heads; }
  int q_dim() const { return num_attention_heads * head_dim; }
  int kv_dim() const { return num_key_value_heads * head_dim; }

  // Bytes of per-sequence state at a context length (KV of kv_value_bytes a value: 4 for float32,
  // 2 for bf16; float32 conv + SSM).
  uint64_t state_bytes(int64_t context_length, uint64_t kv_value_bytes = 4) const;

  static ModelConfig from_json(const nlohmann::json& j, const std::string& where);
  static ModelConfig from_dir(const std::filesystem::path& dir);  // reads dir/config.json
};

}  // namespace fh1
