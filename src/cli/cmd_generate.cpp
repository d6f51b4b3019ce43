// falcon-h1 generate: continue a token sequence (--ids) or a text prompt (-p).
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/model_options.h"
#include "runtime/generator.h"
#include "util/error.h"

namespace fh1::cli {

namespace {

Runner add_generate_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string ids;
    int n = 64;
    float temperature = 0.0f, top_p = 1.0f, min_p = 0.0f;
    int top_k = 0;
    uint64_t seed = 0;
    bool json = false, ignore_eos = false;
    int64_t ctx = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate a continuation of --ids");
  opt->model.add_to(*cmd);
  cmd->add_option("--ids", opt->ids, "prompt token ids, e.g. 1,2,3")->required();
  cmd->add_option("-n,--n-predict", opt->n, "tokens to generate")->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", opt->temperature, "0 = greedy (default)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", opt->top_k, "keep the k most likely tokens (0 = off)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", opt->top_p, "nucleus sampling mass (1 = off)")->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--min-p", opt->min_p, "drop tokens below min-p x the top probability")->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--seed", opt->seed, "random seed for sampling");
  cmd->add_option("--ctx", opt->ctx, "context length limit (default: max_position_embeddings)")->check(CLI::PositiveNumber);
  cmd->add_flag("--ignore-eos", opt->ignore_eos, "do not stop at end-of-sequence tokens");
  cmd->add_flag("--json", opt->json, "end with one JSON line: ids, finish_reason, timings");
  return [cmd, opt]() -> int {
    if (!cmd->parsed()) return -1;
    const std::vector<int32_t> prompt = parse_id_list(opt->ids);
    if (prompt.empty()) throw Error("--ids: no token ids given");
    LoadedModel lm = LoadedModel::load(opt->model);
    const ModelConfig& c = lm.model->config();
    GenerateOptions g;
    g.max_new_tokens = opt->n;
    g.sampling = {opt->temperature, opt->top_k, opt->top_p, opt->min_p, opt->seed};
    g.eos_ids = c.eos_token_ids;
    g.ignore_eos = opt->ignore_eos;
    g.context_length = opt->ctx;
    SequenceState state = lm.model->new_state(static_cast<int64_t>(prompt.size()) + opt->n);
    bool first = true;
    const GenerateResult r = generate(*lm.model, state, prompt, g, [&](int32_t id) {
      std::printf(first ? "%d" : " %d", id);
      first = false;
      std::fflush(stdout);
      return true;
    });
    std::printf("\n");
    const double pf = r.prefill_seconds > 0 ? static_cast<double>(prompt.size()) / r.prefill_seconds : 0.0;
    const double dc = r.decode_seconds > 0 && r.ids.size() > 1 ? static_cast<double>(r.ids.size() - 1) / r.decode_seconds : 0.0;
    std::fprintf(stderr, "prompt %zu tokens, %.1f tok/s; generated %zu tokens, %.1f tok/s; finish: %s\n", prompt.size(), pf,
                 r.ids.size(), dc, r.finish_reason.c_str());
    if (opt->json) {
      const nlohmann::json j = {{"ids", r.ids},
                                {"prompt_tokens", prompt.size()},
                                {"finish_reason", r.finish_reason},
                                {"prefill_tokens_per_s", pf},
                                {"decode_tokens_per_s", dc}};
      std::printf("%s\n", j.dump().c_str());
    }
    return 0;
  };
}

const RegisterCommand registered(add_generate_command);

}  // namespace
}  // namespace fh1::cli
