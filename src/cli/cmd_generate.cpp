// falcon-h1 generate: continue a token sequence (--ids) or a text prompt (-p, streamed as text;
// --chat wraps it in the model's chat template first).
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/model_options.h"
#include "cli/sampling_options.h"
#include "runtime/text_model.h"
#include "util/error.h"

namespace fh1::cli {
namespace {

Runner add_generate_command(CLI::App& app) {
  struct Options {
    ModelOptions model;
    SamplingOptions sampling;
    std::string ids, prompt, system;
    bool chat = false, json = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("generate", "Continue a text prompt (-p) or token ids (--ids)");
  opt->model.add_to(*cmd);
  auto* ids = cmd->add_option("--ids", opt->ids, "prompt token ids, e.g. 1,2,3 (prints ids)");
  auto* prompt = cmd->add_option("-p,--prompt", opt->prompt, "prompt text (prints text as it is generated)");
  ids->excludes(prompt);
  cmd->add_flag("--chat", opt->chat, "apply the model's chat template to -p (a user message)");
  cmd->add_option("--system", opt->system, "system message for --chat");
  opt->sampling.add_to(*cmd, 64);
  cmd->add_flag("--json", opt->json, "end with one JSON line: ids, text, finish_reason, timings");
  return [cmd, opt]() -> int {
    if (!cmd->parsed()) return -1;
    const bool text_mode = cmd->count("--prompt") > 0;
    if (!text_mode && cmd->count("--ids") == 0) throw Error("give a prompt: -p TEXT or --ids 1,2,3");
    if (opt->chat && !text_mode) throw Error("--chat needs a text prompt (-p)");
    std::vector<int32_t> prompt_ids;
    if (!text_mode) {
      prompt_ids = parse_id_list(opt->ids);
      if (prompt_ids.empty()) throw Error("--ids: no token ids given");
    }
    LoadedModel lm = LoadedModel::load(opt->model);
    const Model& model = *lm.model;
    GenerateOptions g = opt->sampling.to_generate_options();
    g.eos_ids = model.config().eos_token_ids;
    std::optional<TextModel> text;
    if (text_mode) {
      text.emplace(TextModel::load(opt->model.dir, model.config()));
      g.eos_ids = text->eos_ids();
      if (opt->chat) {
        nlohmann::ordered_json messages = nlohmann::ordered_json::array();
        if (!opt->system.empty()) messages.push_back({{"role", "system"}, {"content", opt->system}});
        messages.push_back({{"role", "user"}, {"content", opt->prompt}});
        prompt_ids = text->encode_chat(messages, true);
      } else {
        prompt_ids = text->tokenizer().encode(opt->prompt, /*add_special_tokens=*/true);
      }
      if (prompt_ids.empty()) throw Error("the prompt is empty after tokenization");
    }
    SequenceState state = model.new_state(static_cast<int64_t>(prompt_ids.size()) + g.max_new_tokens);
    std::optional<StreamDecoder> decoder;
    if (text) {
      decoder.emplace(text->tokenizer(), /*skip_special=*/true);
      if (!opt->chat && !opt->json) {
        std::printf("%s", opt->prompt.c_str());  // the continuation follows the prompt
        std::fflush(stdout);
      }
    }
    std::string generated_text;
    bool first = true;
    const GenerateResult r = generate(model, state, prompt_ids, g, [&](int32_t id) {
      if (decoder) {
        const std::string piece = decoder->push(id);
        generated_text += piece;
        std::fputs(piece.c_str(), stdout);
      } else {
        std::printf(first ? "%d" : " %d", id);
      }
      first = false;
      std::fflush(stdout);
      return true;
    });
    if (decoder) {
      const std::string rest = decoder->flush();
      generated_text += rest;
      std::fputs(rest.c_str(), stdout);
    }
    std::printf("\n");
    std::fflush(stdout);  // the text before the statistics on stderr
    const double pf = r.prefill_seconds > 0 ? static_cast<double>(prompt_ids.size()) / r.prefill_seconds : 0.0;
    const double dc =
        r.decode_seconds > 0 && r.ids.size() > 1 ? static_cast<double>(r.ids.size() - 1) / r.decode_seconds : 0.0;
    std::fprintf(stderr, "prompt %zu tokens, %.1f tok/s; generated %zu tokens, %.1f tok/s; finish: %s\n",
                 prompt_ids.size(), pf, r.ids.size(), dc, r.finish_reason.c_str());
    if (opt->json) {
      nlohmann::json j = {{"ids", r.ids},
                          {"prompt_tokens", prompt_ids.size()},
                          {"finish_reason", r.finish_reason},
                          {"prefill_tokens_per_s", pf},
                          {"decode_tokens_per_s", dc}};
      if (text) j["text"] = generated_text;
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
    return 0;
  };
}

const RegisterCommand registered(add_generate_command);

}  // namespace
}  // namespace fh1::cli
