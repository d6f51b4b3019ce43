// falcon-h1 perplexity: how well a model predicts a text file (exp of the mean next-token NLL).
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/model_options.h"
#include "io/json_file.h"
#include "runtime/perplexity.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace fh1::cli {
namespace {

Runner add_perplexity_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string file;
    int64_t window = 0, chunk = 512;
    bool no_special = false, json = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a text file under the model");
  opt->model.add_to(*cmd);
  cmd->add_option("file", opt->file, "text file, read byte for byte")->required();
  cmd->add_option("--window", opt->window, "tokens per window, each from an empty state (default: the context length)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 30));
  cmd->add_option("--chunk", opt->chunk, "tokens per forward call")->check(CLI::PositiveNumber);
  cmd->add_flag("--no-special", opt->no_special, "do not add special tokens (e.g. BOS) when tokenizing");
  cmd->add_flag("--json", opt->json, "print one JSON object");
  return [cmd, opt]() -> int {
    if (!cmd->parsed()) return -1;
    const std::string text = read_text_file(opt->file);
    opt->model.quiet = opt->json;
    LoadedModel lm = LoadedModel::load(opt->model);
    const Tokenizer tok = Tokenizer::from_dir(opt->model.dir);
    const std::vector<int32_t> ids = tok.encode(text, !opt->no_special);
    const int64_t window = opt->window > 0 ? opt->window : lm.model->config().max_position_embeddings;
    const bool tty = isatty(fileno(stderr));
    const PerplexityResult r = perplexity(*lm.model, ids, window, opt->chunk, [&](int64_t done, int64_t total) {
      if (tty && !opt->json) std::fprintf(stderr, "\r%lld / %lld tokens", static_cast<long long>(done), static_cast<long long>(total));
    });
    if (tty && !opt->json) std::fprintf(stderr, "\n");
    if (opt->json) {
      std::printf("%s\n", nlohmann::json({{"tokens", ids.size()},
                                          {"predicted", r.predicted},
                                          {"mean_nll", r.mean_nll},
                                          {"perplexity", r.perplexity},
                                          {"window", window}})
                              .dump()
                              .c_str());
    } else {
      std::printf("%zu tokens, %lld predicted (windows of %lld): mean NLL %.6f, perplexity %.6f\n", ids.size(),
                  static_cast<long long>(r.predicted), static_cast<long long>(window), r.mean_nll, r.perplexity);
    }
    return 0;
  };
}

const RegisterCommand registered(add_perplexity_command);

}  // namespace
}  // namespace fh1::cli
