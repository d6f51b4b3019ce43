// falcon-h1 info: what a model directory holds, and what it costs to run.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace fh1::cli {

namespace {

Runner add_info_command(CLI::App& app) {
  struct Options {
    std::string dir;
    int64_t ctx = 0;
    bool json = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("info", "Describe a model: config, parameters, weight and state bytes");
  cmd->add_option("-m,--model", opt->dir, "Hugging Face model directory")->required();
  cmd->add_option("--ctx", opt->ctx, "context length for the state size (default: max_position_embeddings)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--json", opt->json, "print one JSON object");
  return [cmd, opt]() -> int {
    if (!cmd->parsed()) return -1;
    const ModelConfig c = ModelConfig::from_dir(opt->dir);
    const TensorStore store = TensorStore::open_dir(opt->dir);
    uint64_t params = 0;
    std::map<std::string, uint64_t> by_dtype;
    for (const auto& [name, t] : store.all()) {
      params += static_cast<uint64_t>(t->numel());
      by_dtype[dtype_name(t->dtype)] += static_cast<uint64_t>(t->numel());
    }
    const int64_t ctx = opt->ctx > 0 ? opt->ctx : c.max_position_embeddings;
    const uint64_t state = c.state_bytes(ctx);
    const uint64_t fixed_state = c.state_bytes(0);
    nlohmann::json j = {
        {"model_type", "falcon_h1"},
        {"layers", c.num_hidden_layers},
        {"hidden_size", c.hidden_size},
        {"intermediate_size", c.intermediate_size},
        {"vocab_size", c.vocab_size},
        {"attention", {{"heads", c.num_attention_heads}, {"kv_heads", c.num_key_value_heads}, {"head_dim", c.head_dim},
                       {"rope_theta", c.rope_theta}}},
        {"mamba", {{"d_ssm", c.mamba_d_ssm}, {"heads", c.mamba_n_heads}, {"head_dim", c.mamba_d_head},
                   {"groups", c.mamba_n_groups}, {"d_state", c.mamba_d_state}, {"d_conv", c.mamba_d_conv},
                   {"chunk_size", c.mamba_chunk_size}, {"rms_norm", c.mamba_rms_norm},
                   {"norm_before_gate", c.mamba_norm_before_gate}}},
        {"tie_word_embeddings", c.tie_word_embeddings},
        {"max_position_embeddings", c.max_position_embeddings},
        {"parameters", params},
        {"parameters_by_dtype", by_dtype},
        {"weight_bytes", store.total_bytes()},
        {"state_context", ctx},
        {"state_bytes", state},
        {"state_bytes_fixed", fixed_state},
        {"state_bytes_per_token", c.state_bytes(1) - fixed_state},
    };
    if (opt->json) {
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf("model:        %s (falcon_h1)\n", opt->dir.c_str());
    std::printf("layers:       %d hybrid (attention + Mamba-2 in parallel), hidden %d, MLP %d, vocab %d\n",
                c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.vocab_size);
    std::printf("attention:    %d heads, %d KV heads, head_dim %d, RoPE theta %g\n", c.num_attention_heads,
                c.num_key_value_heads, c.head_dim, c.rope_theta);
    std::printf("mamba-2:      d_ssm %d = %d heads x %d, %d group(s), d_state %d, conv %d, chunk %d, gated norm %s\n",
                c.mamba_d_ssm, c.mamba_n_heads, c.mamba_d_head, c.mamba_n_groups, c.mamba_d_state, c.mamba_d_conv,
                c.mamba_chunk_size,
                c.mamba_rms_norm ? (c.mamba_norm_before_gate ? "on (norm, then gate)" : "on (gate, then norm)") : "off");
    std::printf("parameters:   %.3fM (", static_cast<double>(params) / 1e6);
    bool first = true;
    for (const auto& [dt, n] : by_dtype) {
      std::printf("%s%s %.3fM", first ? "" : ", ", dt.c_str(), static_cast<double>(n) / 1e6);
      first = false;
    }
    std::printf(")%s\n", c.tie_word_embeddings ? ", lm_head tied to embeddings" : "");
    std::printf("weights:      %.2f MB\n", static_cast<double>(store.total_bytes()) / 1e6);
    std::printf("state/seq:    %.2f MB at %lld tokens of context (%.2f MB fixed conv+SSM, %.1f KB per token of KV, f32)\n",
                static_cast<double>(state) / 1e6, static_cast<long long>(ctx), static_cast<double>(fixed_state) / 1e6,
                static_cast<double>(c.state_bytes(1) - fixed_state) / 1e3);
    return 0;
  };
}

const RegisterCommand registered(add_info_command);

}  // namespace
}  // namespace fh1::cli
