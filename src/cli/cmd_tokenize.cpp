// falcon-h1 tokenize / detokenize: the model's tokenizer on its own.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "tokenizer/tokenizer.h"

namespace fh1::cli {
namespace {

Runner add_tokenize_command(CLI::App& app) {
  struct Options {
    std::string dir, text;
    bool no_special = false, pieces = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Print the token ids of a text (a JSON list, on the last line)");
  cmd->add_option("-m,--model", opt->dir, "model directory with tokenizer.json")->required();
  cmd->add_option("--text", opt->text, "the text")->required();
  cmd->add_flag("--no-special", opt->no_special, "do not add special tokens (e.g. BOS)");
  cmd->add_flag("--pieces", opt->pieces, "also print each token's string, one per line");
  return [cmd, opt]() -> int {
    if (!cmd->parsed()) return -1;
    const Tokenizer tok = Tokenizer::from_dir(opt->dir);
    const std::vector<int32_t> ids = tok.encode(opt->text, !opt->no_special);
    if (opt->pieces)
      for (int32_t id : ids) std::printf("%d\t%s\n", id, nlohmann::json(tok.id_to_token(id)).dump().c_str());
    std::printf("%s\n", nlohmann::json(ids).dump().c_str());
    return 0;
  };
}

Runner add_detokenize_command(CLI::App& app) {
  struct Options {
    std::string dir, ids;
    bool skip_special = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("detokenize", "Print the text of token ids");
  cmd->add_option("-m,--model", opt->dir, "model directory with tokenizer.json")->required();
  cmd->add_option("--ids", opt->ids, "token ids: 1,2,3 or [1,2,3]")->required();
  cmd->add_flag("--skip-special", opt->skip_special, "leave special tokens out");
  return [cmd, opt]() -> int {
    if (!cmd->parsed()) return -1;
    const Tokenizer tok = Tokenizer::from_dir(opt->dir);
    const std::vector<int32_t> ids = parse_id_list(opt->ids);
    std::printf("%s\n", tok.decode(ids, opt->skip_special).c_str());
    return 0;
  };
}

const RegisterCommand tokenize_registered(add_tokenize_command);
const RegisterCommand detokenize_registered(add_detokenize_command);

}  // namespace
}  // namespace fh1::cli
